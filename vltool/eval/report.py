"""Results as a user reads them: a rich table on the terminal, a bar chart PNG, files written safely."""

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from vltool.eval.chart_fonts import chart_text
from vltool.io import write_atomically  # also imported from here by the eval commands


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
    from matplotlib.font_manager import FontProperties

    labels = list(next(iter(series.values())))
    text = chart_text([str(label) for label in labels], title)  # CJK names need a CJK font, or English names
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(8, 1.2 + 0.32 * len(labels) * max(1, len(series) * 0.7)))
    for number, (name, values) in enumerate(series.items()):
        offsets = [row - 0.4 + width * (number + 0.5) for row in range(len(labels))]
        bars = axis.barh(offsets, [values[label] for label in labels], height=width, label=name, color=COLOURS[number])
        axis.bar_label(bars, fmt="%.1f", padding=3, fontsize=8)
    axis.set_yticks(range(len(labels)), labels=text.labels)
    axis.invert_yaxis()
    largest = max((value for values in series.values() for value in values.values()), default=0.0)
    axis.set_xlim(0, (maximum or largest or 1.0) * 1.12)  # room for the value labels
    axis.set(xlabel=value_label, title=text.title)
    if text.font_path:
        for artist in [axis.title, *axis.get_yticklabels()]:
            size, weight = artist.get_fontsize(), artist.get_fontweight()
            artist.set_fontproperties(FontProperties(fname=text.font_path, size=size, weight=weight))
    axis.grid(axis="x", alpha=0.3)
    if len(series) > 1:
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    plt.close(figure)
