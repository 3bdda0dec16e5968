"""``vltool eval``: MME, POPE, SEED-Bench, ScienceQA-IMG, TextVQA, GQA, RefCOCO and your own data."""

from pathlib import Path

import typer
from rich.console import Console

from vltool.cli.model_options import (
    API_BASE_OPTION,
    API_CONCURRENCY_OPTION,
    API_KEY_OPTION,
    API_MODEL_OPTION,
    ModelOptions,
    benchmark_model,
    refuse_model_with_predictions,
    served_model,
    with_model_options,
)
from vltool.cli.processes import start_processes
from vltool.errors import ConfigError


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
    batch_size: int | None = typer.Option(None, "--batch-size", help="Prompts per generation batch (default 8)."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Longest answer in tokens (default: the benchmark's)."
    ),
    rules: str | None = typer.Option(
        None,
        "--rules",
        help="Scoring rules: official (default: the official script), vlmevalkit (scienceqa, seed), llava (refcoco).",
    ),
    api_base: str | None = API_BASE_OPTION,
    api_key: str | None = API_KEY_OPTION,
    api_model: str | None = API_MODEL_OPTION,
    api_concurrency: int = API_CONCURRENCY_OPTION,
    model_options: ModelOptions = ModelOptions(),  # --prompt-template, --visual-encoder, ..., --device
) -> None:
    """Answer a benchmark greedily and score it with its official rules.

    Writes the predictions (JSONL), a results CSV and a bar chart, and prints the table. Answers
    are cached per question: run the same command again to resume. [bold]NPROC_PER_NODE=N[/]
    shares the questions among N processes. [bold]--api-base[/] answers through a server instead.
    """
    from vltool.eval.evaluate import check_rules, get_benchmark, rescore_eval, run_eval

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    chosen = get_benchmark(benchmark)
    if api_model is not None and api_base is None:
        raise ConfigError("--model names a served model; give the server with --api-base URL.")
    if predictions is not None:
        refuse_model_with_predictions(model)
        if api_base is not None:
            raise ConfigError("--predictions scores saved answers; --api-base would answer again. Give one of them.")
        rescore_eval(chosen, predictions, data_path, image_folder, work_dir, console, rules)
        return
    check_rules(chosen, rules)
    if api_base is not None:
        choice = served_model(api_base, api_key, api_model, api_concurrency, model, batch_size, model_options)
        rank, rows_per_call = 0, choice.batch_size
    else:
        rows_per_call = 8 if batch_size is None else batch_size
        choice = benchmark_model(model, rows_per_call, model_options)
        rank = start_processes()
    run_eval(
        choice.load,
        chosen,
        data_path,
        image_folder,
        work_dir or Path("work_dirs") / "eval" / choice.name,
        choice.name,
        choice.identity(),
        rows_per_call,
        max_new_tokens,
        rules,
        console=console if rank == 0 else Console(stderr=True, quiet=True),
    )
