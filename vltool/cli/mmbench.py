"""``vltool mmbench``: MMBench / CCBench scores as VLMEvalKit computes them, and the leaderboard files."""

from pathlib import Path

import typer
from rich.console import Console

from vltool.cli.model_options import ModelOptions, benchmark_model, refuse_model_with_predictions, with_model_options
from vltool.cli.processes import start_processes


@with_model_options
def mmbench(
    model: str | None = typer.Argument(
        None, help="A model directory from `vltool convert pth_to_hf`, or an LLM path used with --llava."
    ),
    data_path: Path = typer.Option(..., "--data-path", help="The MMBench-layout TSV (MMBench dev/test EN/CN, CCBench)"),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Score this saved predictions file (xlsx/csv/tsv with index, prediction); no model."
    ),
    work_dir: Path | None = typer.Option(
        None, "--work-dir", help="Where results go (default: work_dirs/eval/MODEL_NAME; with --predictions, its folder)"
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts per generation batch."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Longest answer in tokens."),
    no_circular: bool = typer.Option(
        False, "--no-circular", help="Vanilla accuracy on pass 0 only, instead of CircularEval."
    ),
    model_options: ModelOptions = ModelOptions(),  # --prompt-template, --visual-encoder, ..., --device
) -> None:
    """Answer an MMBench TSV greedily and score it with VLMEvalKit's rules (CircularEval by default).

    Dev splits print accuracy per l2-category and category and write [bold]_acc.csv[/] and a chart;
    test splits write the [bold]_submission.xlsx[/] for the leaderboard. Answers are cached per row: run
    the same command again to resume. [bold]NPROC_PER_NODE=N[/] shares the rows among N processes.
    """
    from vltool.eval.mmbench import rescore_mmbench, run_mmbench

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if predictions is not None:
        refuse_model_with_predictions(model)
        rescore_mmbench(predictions, data_path, work_dir, not no_circular, console)
        return
    choice = benchmark_model(model, batch_size, model_options)
    rank = start_processes()
    run_mmbench(
        choice.load,
        data_path,
        work_dir or Path("work_dirs") / "eval" / choice.name,
        choice.name,
        choice.identity(),
        batch_size,
        max_new_tokens,
        circular=not no_circular,
        console=console if rank == 0 else Console(stderr=True, quiet=True),
    )
