"""``vltool eval``: MME, POPE, SEED-Bench, ScienceQA-IMG, TextVQA, GQA, RefCOCO and your own data."""

from pathlib import Path

import typer
from rich.console import Console

from vltool.cli.model_options import ModelOptions, benchmark_model, refuse_model_with_predictions, with_model_options
from vltool.cli.processes import start_processes


@with_model_options
def eval_command(
    model: str | None = typer.Argument(
        None, help="A model directory from `vltool convert pth_to_hf`, or an LLM path used with --llava."
    ),
    benchmark: str = typer.Option(
        ..., "--benchmark", help="mme, pope, seed, scienceqa, textvqa, gqa, refcoco or custom (see docs/evaluation.md)."
    ),
    data_path: Path = typer.Option(..., "--data-path", help="The benchmark's question/annotation file or folder."),
    image_folder: Path | None = typer.Option(None, "--image-folder", help="Where the benchmark's images are."),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Score this saved predictions JSONL (key, prediction) instead; no model."
    ),
    work_dir: Path | None = typer.Option(
        None, "--work-dir", help="Where results go (default: work_dirs/eval/MODEL_NAME; with --predictions, its folder)"
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts per generation batch."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Longest answer in tokens (default: the benchmark's)."
    ),
    rules: str | None = typer.Option(
        None,
        "--rules",
        help="Scoring rules: official (default: the benchmark's official script) or vlmevalkit (scienceqa, seed).",
    ),
    model_options: ModelOptions = ModelOptions(),  # --prompt-template, --visual-encoder, ..., --device
) -> None:
    """Answer a benchmark greedily and score it with its official rules.

    Writes the predictions (JSONL), a results CSV and a bar chart, and prints the table. Answers
    are cached per question: run the same command again to resume. [bold]NPROC_PER_NODE=N[/]
    shares the questions among N processes.
    """
    from vltool.eval.evaluate import check_rules, get_benchmark, rescore_eval, run_eval

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    chosen = get_benchmark(benchmark)
    if predictions is not None:
        refuse_model_with_predictions(model)
        rescore_eval(chosen, predictions, data_path, image_folder, work_dir, console, rules)
        return
    check_rules(chosen, rules)
    choice = benchmark_model(model, batch_size, model_options)
    rank = start_processes()
    run_eval(
        choice.load,
        chosen,
        data_path,
        image_folder,
        work_dir or Path("work_dirs") / "eval" / choice.name,
        choice.name,
        choice.identity(),
        batch_size,
        max_new_tokens,
        rules,
        console=console if rank == 0 else Console(stderr=True, quiet=True),
    )
