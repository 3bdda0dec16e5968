"""Chart labels that draw as text, never as empty boxes: a font that has every glyph, else English names.

MMBench-CN and CCBench name their categories in Chinese (CCBench: ``风景与建筑 (Scenery Building)``).
matplotlib's own font, DejaVu Sans, has no CJK glyphs, so on a machine without a CJK font those
labels draw as boxes ("tofu"). :func:`chart_text` picks, in this order:

1. matplotlib's default font, when it has every character;
2. an installed font that has every character, well-known CJK families first (Noto Sans CJK,
   Source Han Sans, WenQuanYi, Droid Sans Fallback, SimHei, Microsoft YaHei, PingFang). Fonts
   installed after matplotlib built its font cache are found too: the system's font folders are
   searched as well as the cache;
3. no font: each label is redrawn readable in the default font: its English part when it has one
   (``风景与建筑 (Scenery Building)`` -> ``Scenery Building``), else the label without the
   characters the font lacks, else ``category N``. The CSV files keep the original names.
"""

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PREFERRED = ("notosanscjk", "notoserifcjk", "sourcehansans", "wqy", "droidsansfallback", "simhei", "msyh", "pingfang")
"""Substrings of font file names (lower case, without ``-_ ``) tried before any other installed font."""

_ENGLISH_PART = re.compile(r"[(（]\s*([\x20-\x7e]*[A-Za-z][\x20-\x7e]*?)\s*[)）]\s*$")


@dataclass(frozen=True)
class ChartText:
    """What a chart draws its labels and title with.

    Attributes:
        font_path: the font file to draw them in; None for matplotlib's default font.
        labels: the labels to draw, in order (the given ones, or readable replacements).
        title: the title to draw.
    """

    font_path: str | None
    labels: tuple[str, ...]
    title: str


def chart_text(labels: list[str], title: str) -> ChartText:
    """The font and the label texts a chart draws so that every character has a glyph (see the module docstring)."""
    characters = frozenset("".join(labels) + title)
    if _covers(default_font_path(), characters):
        return ChartText(None, tuple(labels), title)
    found = find_font(characters)
    if found is not None:
        return ChartText(found, tuple(labels), title)
    readable = tuple(readable_label(label, number) for number, label in enumerate(labels))
    return ChartText(None, readable, _readable(title))


def readable_label(label: str, number: int) -> str:
    """``label`` as the default font draws it: its English part, else its drawable characters, else ``category N``."""
    english = _ENGLISH_PART.search(label)
    if english:
        return english.group(1)
    return _readable(label) or f"category {number + 1}"


def _readable(text: str) -> str:
    """``text`` without the characters the default font lacks, spaces collapsed."""
    font = _font(default_font_path())
    return " ".join("".join(c for c in text if font.get_char_index(ord(c))).split())


def default_font_path() -> str:
    """The file of matplotlib's default font (DejaVu Sans unless the user's settings say otherwise)."""
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties())


@lru_cache(maxsize=64)
def find_font(characters: frozenset[str]) -> str | None:
    """An installed font file with a glyph for every one of ``characters``; None when there is none."""
    for path in candidate_fonts():
        try:
            if _covers(path, characters):
                return path
        except (OSError, RuntimeError):  # a broken or unsupported font file is not a candidate
            continue
    return None


def candidate_fonts() -> list[str]:
    """Font files to try: matplotlib's cache and the system's font folders, :data:`PREFERRED` names first."""
    from matplotlib import font_manager

    paths = list(dict.fromkeys([entry.fname for entry in font_manager.fontManager.ttflist] + _system_fonts()))
    return sorted(paths, key=lambda path: not _preferred(path))


def _system_fonts() -> list[str]:
    from matplotlib import font_manager

    try:
        return sorted(font_manager.findSystemFonts())
    except OSError:
        return []


def _preferred(path: str) -> bool:
    name = re.sub(r"[-_ ]", "", Path(path).name.lower())
    return any(part in name for part in PREFERRED)


def _covers(path: str, characters: frozenset[str]) -> bool:
    """Whether the font at ``path`` has a glyph (a non-zero glyph index) for every character."""
    font = _font(path)
    return all(font.get_char_index(ord(c)) for c in characters)


def _font(path: str) -> object:
    from matplotlib import font_manager

    return font_manager.get_font(path)
