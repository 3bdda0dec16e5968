"""Chart labels draw as text, never as boxes: a CJK font when one is installed, else English category names.

A tiny font holding only the needed glyphs is built here with fontTools (matplotlib's own
dependency), so the "a CJK font is installed" case runs on a machine that has none.
"""

import warnings
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from matplotlib import font_manager
from matplotlib.figure import Figure

from vltool.eval import chart_fonts
from vltool.eval.chart_fonts import chart_text, default_font_path, readable_label
from vltool.eval.report import bar_chart

matplotlib.use("Agg")
CCBENCH = Path(__file__).parents[1] / "assets" / "benchmarks" / "ccbench_samples.tsv"


def ccbench_categories() -> list[str]:
    return list(dict.fromkeys(pd.read_csv(CCBENCH, sep="\t", usecols=["category"])["category"]))


def write_font(path: Path, characters: str, family: str = "Tiny Test CJK") -> Path:
    """A TrueType font with a box glyph for each of ``characters`` (and nothing else)."""
    names = {ord(c): f"uni{ord(c):04X}" for c in sorted(set(characters))}
    order = [".notdef", *names.values()]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap(names)
    glyphs = {}
    for name in order:
        pen = TTGlyphPen(None)
        pen.moveTo((100, 0))
        pen.lineTo((100, 700))
        pen.lineTo((800, 700))
        pen.lineTo((800, 0))
        pen.closePath()
        glyphs[name] = pen.glyph()
    builder.setupGlyf(glyphs)
    builder.setupHorizontalMetrics({name: (1000, 100) for name in order})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": family, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=800, usWinAscent=800, usWinDescent=200)
    builder.setupPost()
    builder.save(str(path))
    return path


@pytest.fixture
def cjk_font(tmp_path):
    categories = ccbench_categories()
    title = "ccbench_samples.tsv: 50.0% overall (CircularEval)"
    return write_font(tmp_path / "tiny_cjk.ttf", "".join(categories) + title + "0123456789 .:%()")


@pytest.fixture
def fonts(monkeypatch):
    """Sets the installed fonts chart_fonts may choose from (besides matplotlib's default)."""
    chart_fonts.find_font.cache_clear()

    def install(*paths):
        monkeypatch.setattr(chart_fonts, "candidate_fonts", lambda: [default_font_path(), *map(str, paths)])

    yield install
    chart_fonts.find_font.cache_clear()


def missing_glyphs(text: str, font_path: str) -> list[str]:
    font = font_manager.get_font(font_path)
    return [c for c in text if font.get_char_index(ord(c)) == 0]


def drawn_labels(monkeypatch, path: Path, series: dict, title: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Write a chart; the (text, font file) of its title and y labels as saved, and any missing-glyph warnings."""
    drawn = []
    save = Figure.savefig

    def spy(figure, *args, **kwargs):
        axis = figure.axes[0]
        for artist in [axis.title, *axis.get_yticklabels()]:
            drawn.append((artist.get_text(), font_manager.findfont(artist.get_fontproperties())))
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bar_chart(path, series, "accuracy (%)", title, maximum=100)
    assert path.stat().st_size > 1000
    return drawn, [str(w.message) for w in caught if "missing from" in str(w.message)]


def test_ascii_labels_keep_the_default_font(fonts):
    fonts()
    text = chart_text(["colour", "shape"], "demo: 97.0%")
    assert text.font_path is None and text.labels == ("colour", "shape") and text.title == "demo: 97.0%"


def test_cjk_labels_take_a_font_with_every_glyph(fonts, cjk_font, tmp_path):
    partial = write_font(tmp_path / "partial.ttf", "书画")  # a CJK font that lacks most of the names
    fonts(partial, cjk_font)
    categories = ccbench_categories()
    text = chart_text(categories, "CCBench")
    assert text.font_path == str(cjk_font) and text.labels == tuple(categories)
    assert all(not missing_glyphs(label, text.font_path) for label in text.labels)


def test_a_font_matplotlib_knows_is_found(monkeypatch, cjk_font):
    chart_fonts.find_font.cache_clear()
    monkeypatch.setattr(font_manager.fontManager, "ttflist", list(font_manager.fontManager.ttflist))
    font_manager.fontManager.addfont(str(cjk_font))  # as an installed font in matplotlib's cache
    try:
        text = chart_text(ccbench_categories(), "CCBench")
    finally:
        chart_fonts.find_font.cache_clear()
    assert text.font_path is not None  # this one, or a real CJK font the machine has
    assert all(not missing_glyphs(label, text.font_path) for label in text.labels)


def test_without_a_cjk_font_labels_fall_back_to_english(fonts):
    fonts()
    text = chart_text(
        ["风景与建筑 (Scenery Building)", "书画（Calligraphy Painting）", "文物", "新 category"], "测试 CCBench"
    )
    assert text.font_path is None
    assert text.labels == ("Scenery Building", "Calligraphy Painting", "category 3", "category")
    assert text.title == "CCBench"
    assert readable_label("食物与服饰 (Food Clothes)", 0) == "Food Clothes"


@pytest.mark.parametrize("with_font", [True, False], ids=["cjk-font", "no-cjk-font"])
def test_ccbench_chart_draws_no_empty_boxes(monkeypatch, fonts, cjk_font, tmp_path, with_font):
    fonts(*([cjk_font] if with_font else []))
    categories = ccbench_categories()
    series = {
        "circular": {name: 10.0 * n for n, name in enumerate(categories)},
        "vanilla": {name: 12.0 * n for n, name in enumerate(categories)},
    }
    title = "ccbench_samples.tsv: 50.0% overall (CircularEval)"
    drawn, warned = drawn_labels(monkeypatch, tmp_path / "acc.png", series, title)
    assert not warned
    texts = [text for text, _ in drawn]
    expected = categories if with_font else [label.split(" (")[1].rstrip(")") for label in categories]
    assert texts == [title, *expected]
    for text, font_path in drawn:
        assert not missing_glyphs(text, font_path), (text, font_path)
    assert all(font_path == (str(cjk_font) if with_font else default_font_path()) for _, font_path in drawn)
