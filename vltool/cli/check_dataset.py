"""``vltool check-dataset CONFIG``."""

import typer
from rich.console import Console
from rich.table import Table

from vltool.cli.options import CFG_OPTIONS, collect_cfg_options


def check_dataset(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="Config file or shipped config name."),
    decode: bool = typer.Option(
        True, "--decode/--no-decode", help="Decode every image; --no-decode only checks that each file exists (quick)."
    ),
    num_proc: int | None = typer.Option(
        None, "--num-proc", min=1, help="Processes that read samples and images; default: every core."
    ),
    cfg_options: list[str] = CFG_OPTIONS,
) -> None:
    """Read every training sample and image; report lengths, truncation and every problem.

    No model weights are loaded: the visual-token count comes from the encoder's and projector's
    configs, so a 7B recipe checks on a CPU machine with only its config and tokenizer files.
    """
    from vltool.data.check import check_dataset as run_check  # heavy imports stay out of `vltool --help`
    from vltool.data.dataset import length_stats
    from vltool.engine.config import load_config, train_dataset_cfg
    from vltool.engine.data_parts import build_data_parts, prepare_data

    cfg = load_config(config, collect_cfg_options(cfg_options, ctx))
    dataset_cfg = train_dataset_cfg(cfg)
    prepare_data(cfg, with_hooks=False)  # the hooks only run in training
    parts = build_data_parts(cfg)
    max_length = dataset_cfg.get("max_length", 2048)
    result = run_check(
        dataset_cfg.data_path,
        dataset_cfg.get("image_folder"),
        parts.tokenizer,
        parts.template,
        parts.image_seq_length,
        max_length,
        dataset_cfg.get("dataset_format", "auto"),
        decode=decode,
        num_proc=num_proc,
    )
    console = Console()
    table = Table(title=f"{dataset_cfg.data_path}", show_header=False)
    rows = [
        ("samples", result.num_samples),
        ("images" if decode else "images (found, not decoded)", result.num_images),
        ("text-only samples", result.num_text_only),
        ("image tokens per image", parts.image_seq_length),
        ("tokens (min / median / p95 / max)", " / ".join(str(n) for n in length_stats(result.lengths))),
        (
            f"longer than max_length={max_length}",
            f"{len(result.truncated)} ({dataset_cfg.get('truncation', 'truncate')})",
        ),
        ("problems", len(result.problems)),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    for problem in result.problems:
        console.print(f"[red]problem:[/] {problem}", highlight=False, soft_wrap=True)
    if result.problems:
        raise typer.Exit(1)
