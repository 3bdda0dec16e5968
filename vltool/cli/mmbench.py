"""``vltool mmbench``: MMBench / CCBench scores as VLMEvalKit computes them, and the leaderboard files."""

from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from vltool.eval.judge import Judge

JUDGE_KEY_ENV = "VLTOOL_JUDGE_API_KEY"


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
    batch_size: int | None = typer.Option(None, "--batch-size", help="Prompts per generation batch (default 8)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Longest answer in tokens."),
    no_circular: bool = typer.Option(
        False, "--no-circular", help="Vanilla accuracy on pass 0 only, instead of CircularEval."
    ),
    api_base: str | None = API_BASE_OPTION,
    api_key: str | None = API_KEY_OPTION,
    api_model: str | None = API_MODEL_OPTION,
    api_concurrency: int = API_CONCURRENCY_OPTION,
    judge_api_base: str | None = typer.Option(
        None, "--judge-api-base", help="An OpenAI-compatible server whose LLM reads the answers exact matching cannot."
    ),
    judge_model: str | None = typer.Option(
        None, "--judge-model", help="With --judge-api-base: the judge model's id (default: the first it lists)."
    ),
    judge_api_key: str | None = typer.Option(
        None, "--judge-api-key", envvar=JUDGE_KEY_ENV, show_envvar=True, help="The judge server's Bearer token."
    ),
    model_options: ModelOptions = ModelOptions(),  # --prompt-template, --visual-encoder, ..., --device
) -> None:
    """Answer an MMBench TSV greedily and score it with VLMEvalKit's rules (CircularEval by default).

    Dev splits print accuracy per l2-category and category and write [bold]_acc.csv[/] and a chart;
    test splits write the [bold]_submission.xlsx[/] for the leaderboard. Answers are cached per row: run
    the same command again to resume. [bold]NPROC_PER_NODE=N[/] shares the rows among N processes.
    [bold]--api-base[/] answers through a server instead; [bold]--judge-api-base[/] adds VLMEvalKit's LLM judge.
    """
    from vltool.eval.mmbench import rescore_mmbench, run_mmbench

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if api_model is not None and api_base is None:
        raise ConfigError("--model names a served model; give the server with --api-base URL.")
    if predictions is not None:
        refuse_model_with_predictions(model)
        if api_base is not None:
            raise ConfigError("--predictions scores saved answers; --api-base would answer again. Give one of them.")
        judge = _judge(judge_api_base, judge_model, judge_api_key, api_concurrency)
        rescore_mmbench(predictions, data_path, work_dir, not no_circular, console, judge)
        return
    judge = _judge(judge_api_base, judge_model, judge_api_key, api_concurrency)
    if api_base is not None:
        choice = served_model(api_base, api_key, api_model, api_concurrency, model, batch_size, model_options)
        rank, rows_per_call = 0, choice.batch_size
    else:
        rows_per_call = 8 if batch_size is None else batch_size
        choice = benchmark_model(model, rows_per_call, model_options)
        rank = start_processes()
    run_mmbench(
        choice.load,
        data_path,
        work_dir or Path("work_dirs") / "eval" / choice.name,
        choice.name,
        choice.identity(),
        rows_per_call,
        max_new_tokens,
        circular=not no_circular,
        console=console if rank == 0 else Console(stderr=True, quiet=True),
        judge=judge,
    )


def _judge(api_base: str | None, model: str | None, api_key: str | None, concurrency: int) -> "Judge | None":
    """The LLM judge, its server checked before any answering starts (None without ``--judge-api-base``)."""
    if api_base is None:
        if model is not None:
            raise ConfigError("--judge-model names a judge model; give its server with --judge-api-base URL.")
        return None
    from vltool.eval.api_client import ApiEndpoint, ChatClient
    from vltool.eval.judge import Judge

    client = ChatClient(ApiEndpoint(api_base, api_key, concurrency))
    return Judge(client, client.resolve_model(model, "--judge-model"))
