"""``vltool train CONFIG``."""

import typer

from vltool.cli.options import CFG_OPTIONS, collect_cfg_options


def train(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="Config file, or the name of a shipped config (see list-cfg)."),
    work_dir: str = typer.Option(None, "--work-dir", help="Checkpoints and logs go here [default: work_dirs/NAME]."),
    seed: int = typer.Option(None, "--seed", help="Random seed (overrides randomness.seed)."),
    cfg_options: list[str] = CFG_OPTIONS,
) -> None:
    """Train a model from a config: [bold]vltool train demo[/] runs the CPU demo."""
    from vltool.engine.config import load_config  # heavy imports stay out of `vltool --help`
    from vltool.engine.runner import build_runner

    cfg = load_config(config, collect_cfg_options(cfg_options, ctx))
    if seed is not None:
        cfg.randomness.seed = seed
    build_runner(cfg, work_dir).train()
