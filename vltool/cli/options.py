"""Options several commands share."""

import typer

from vltool.errors import ConfigError


def collect_cfg_options(flagged: list[str] | None, ctx: typer.Context) -> list[str]:
    """``--cfg-options a=1 b=2`` (XTuner style) or repeated ``--cfg-options``: all KEY=VALUE pairs."""
    extra = list(ctx.args)
    stray = [arg for arg in extra if "=" not in arg]
    if stray:
        raise ConfigError(f"unexpected argument(s) {' '.join(stray)}; overrides look like --cfg-options KEY=VALUE.")
    return list(flagged or []) + extra


CFG_OPTIONS = typer.Option(
    None, "--cfg-options", help="Override config keys: KEY=VALUE (dotted keys; lists as [a,b]). Repeatable."
)
