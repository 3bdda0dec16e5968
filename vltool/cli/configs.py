"""``vltool list-cfg`` and ``vltool copy-cfg``."""

import typer
from rich.console import Console

from vltool.engine.config import copy_config, list_configs


def list_cfg(
    pattern: str = typer.Option(None, "-p", "--pattern", help="Only names matching this glob or substring."),
) -> None:
    """List the shipped configs."""
    names = list_configs(pattern)
    console = Console()
    for name in names:
        console.print(name, highlight=False)
    if not names:
        console.print(f"no config matches '{pattern}'", style="yellow")
        raise typer.Exit(1)


def copy_cfg(
    name: str = typer.Argument(..., help="A shipped config's name."),
    dest_dir: str = typer.Argument(..., help="Directory to copy it into."),
) -> None:
    """Copy a shipped config to edit it."""
    target = copy_config(name, dest_dir)
    Console().print(f"copied {name} to {target}", highlight=False)
