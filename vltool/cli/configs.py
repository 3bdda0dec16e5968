"""``vltool list-cfg`` and ``vltool copy-cfg``."""

import typer
from rich.console import Console

from vltool.engine.config import copy_config, list_configs


def list_cfg(
    pattern: str = typer.Option(None, "-p", "--pattern", help="Only names matching this glob or substring."),
) -> None:
    """List the shipped configs."""
    names = list_configs(pattern)
    console = plain_console()
    for name in names:
        console.print(name)
    if not names:
        console.print(f"no config matches '{pattern}'", style="yellow")
        raise typer.Exit(1)


def copy_cfg(
    name: str = typer.Argument(..., help="A shipped config's name."),
    dest_dir: str = typer.Argument(..., help="Directory to copy it into."),
) -> None:
    """Copy a shipped config to edit it."""
    target = copy_config(name, dest_dir)
    plain_console().print(f"copied {name} to {target}")


def plain_console() -> Console:
    """A console that prints text as given, each message on one line.

    A path may hold ``[...]``, which rich would read as markup and drop; and rich wraps at the
    terminal's width (80 columns when piped), which left "copied NAME to " alone on its line.
    """
    return Console(markup=False, highlight=False, soft_wrap=True)
