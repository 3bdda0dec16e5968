"""``vltool bench CONFIG``: samples/s, supervised tokens/s, padding, memory and MFU of training steps."""

import typer
from rich.console import Console
from rich.table import Table

from vltool.cli.options import CFG_OPTIONS, collect_cfg_options


def bench(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="Config file or shipped config name (e.g. demo_lengths)."),
    steps: int = typer.Option(20, "--steps", help="Timed training steps."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed steps before them."),
    compare_packing: bool = typer.Option(
        False, "--compare-packing", help="Run padded and packed batches on the same samples and compare them."
    ),
    cfg_options: list[str] = CFG_OPTIONS,
) -> None:
    """Time training steps of a config: [bold]vltool bench demo_lengths --compare-packing[/]."""
    from vltool.engine.bench import collate_mode, image_decode_seconds, prepare, run_bench
    from vltool.engine.config import load_config

    cfg = load_config(config, collect_cfg_options(cfg_options, ctx))
    console = Console(highlight=False)
    dataset = prepare(cfg)
    modes = ["padded", "packed"] if compare_packing else [collate_mode(cfg)]
    results = []
    for mode in modes:
        console.print(f"{mode}: {warmup} warm-up and {steps} timed steps ...")
        results.append(run_bench(cfg, dataset, mode, steps, warmup))
    console.print(_table(results, cfg.train_dataloader.batch_size))
    decode = image_decode_seconds(dataset)
    if decode is not None:
        console.print(f"image decode and preprocessing: {decode * 1e3:.2f} ms per image, once per sample")
    if compare_packing:
        padded, packed = results
        ratio = packed.per_second(packed.supervised) / padded.per_second(padded.supervised)
        console.print(
            f"packed / padded supervised tokens/s: [bold]{ratio:.2f}x[/]; first-step loss "
            f"{padded.first_loss:.6f} (padded) vs {packed.first_loss:.6f} (packed), the same batch"
        )


def _table(results: list, batch_size: int) -> Table:
    table = Table(title=f"training steps (batch size {batch_size})", title_justify="left")
    table.add_column("")
    for result in results:
        table.add_column(result.mode, justify="right")
    rows = {
        "step time (s)": [f"{r.seconds / r.steps:.3f}" for r in results],
        "samples/s": [f"{r.per_second(r.samples):.1f}" for r in results],
        "supervised tokens/s": [f"{r.per_second(r.supervised):.0f}" for r in results],
        "tokens/s (real)": [f"{r.per_second(r.tokens):.0f}" for r in results],
        "padding": [f"{r.padding_fraction:.1%}" for r in results],
        "waiting for data": [f"{r.data_seconds / r.seconds:.1%}" for r in results],
        "peak memory (GiB)": [f"{r.peak_memory / 2**30:.2f}" for r in results],
        "MFU": [f"{r.mfu:.1%}" if r.mfu is not None else "-" for r in results],
    }
    for name, cells in rows.items():
        table.add_row(name, *cells)
    return table
