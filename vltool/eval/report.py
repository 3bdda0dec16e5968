"""Results as a user reads them: a rich table on the terminal, a bar chart PNG, files written safely."""

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table


def print_table(console: Console, table: pd.DataFrame, title: str, first_column: str = "") -> None:
    """Show a results table: the index as the first column, numbers with two decimals.

    Args:
        console: where to print.
        table: rows named by the index; numeric columns (integers shown as such).
        title: the table's caption.
        first_column: the heading of the index column.
    """
    shown = Table(title=title, title_justify="left")
    shown.add_column(first_column)
    for column in table.columns:
        shown.add_column(str(column), justify="right")
    for name, *values in table.itertuples():  # itertuples keeps each column's type (counts stay integers)
        shown.add_row(str(name), *(_cell(value) for value in values))
    console.print(shown)


def _cell(value: object) -> str:
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return "-" if np.isnan(value) else f"{value:.2f}"
    return str(value)


COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def bar_chart(
    path: Path, series: dict[str, dict[str, float]], value_label: str, title: str, maximum: float | None = None
) -> None:
    """Save a horizontal bar chart as a PNG: one group of bars per label, top to bottom, one bar per series.

    Args:
        path: the PNG to write.
        series: series name -> (label -> value); every series has the labels of the first. With
            more than one series a legend names them.
        value_label: the value axis's name.
        title: the chart's title.
        maximum: the value axis's end (100 for percentages); None fits the largest value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    labels = list(next(iter(series.values())))
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(8, 1.2 + 0.32 * len(labels) * max(1, len(series) * 0.7)))
    for number, (name, values) in enumerate(series.items()):
        offsets = [row - 0.4 + width * (number + 0.5) for row in range(len(labels))]
        bars = axis.barh(offsets, [values[label] for label in labels], height=width, label=name, color=COLOURS[number])
        axis.bar_label(bars, fmt="%.1f", padding=3, fontsize=8)
    axis.set_yticks(range(len(labels)), labels=labels, fontproperties=_font(font_manager, labels))
    axis.invert_yaxis()
    largest = max((value for values in series.values() for value in values.values()), default=0.0)
    axis.set_xlim(0, (maximum or largest or 1.0) * 1.12)  # room for the value labels
    axis.set(xlabel=value_label, title=title)
    axis.grid(axis="x", alpha=0.3)
    if len(series) > 1:
        axis.legend(loc="lower right", fontsize=8)
    with warnings.catch_warnings():  # labels in a script the installed fonts lack draw as boxes; say nothing
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        figure.tight_layout()
        write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    plt.close(figure)


def _font(font_manager: object, labels: list[str]) -> object | None:
    """A font with CJK glyphs when a label needs one and such a font is installed (else matplotlib's default)."""
    if all(label.isascii() for label in labels):
        return None
    for name in ("Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei"):
        if any(font.name == name for font in font_manager.fontManager.ttflist):
            return font_manager.FontProperties(family=name)
    return None


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file renamed into place, so a failure never leaves half a file.

    Args:
        path: the file to (re)write.
        write: writes the content to the temporary path it is given.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix tells writers the format
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
