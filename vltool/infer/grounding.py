"""Grounded answers: boxes a model writes as ``<ref>LABEL</ref><box>(x1,y1),(x2,y2)</box>``.

Models trained on Qwen-VL-style grounding data give box corners on a 0-1000 grid relative to the
original image's width and height. A ref may be followed by several boxes, and a box may come
without a ref (its label is then empty). A box whose text is not two ``(x,y)`` pairs of whole numbers
in 0..1000 is ignored: parsing, the text shown in chat and the drawing all see the same boxes.
"""

import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

GRID = 1000
"""Box coordinates run from 0 to ``GRID`` across the image's width and height."""

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (128, 128, 0),
    (0, 0, 128),
    (170, 110, 40),
)
"""Box colours, one per label in order of first appearance, cycling when there are more labels."""

# A group is an optional ref followed by one or more boxes; whitespace between the tags is part of the
# group so "<ref>a</ref> <box>..</box>" reads as one group, but whitespace after the last box is not.
_GROUP = re.compile(r"(?:<ref>(?P<label>[^<]*)</ref>\s*)?(?P<boxes><box>[^<]*</box>(?:\s*<box>[^<]*</box>)*)")
_BOX_BODY = re.compile(r"<box>([^<]*)</box>")
_CORNERS = re.compile(r"\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*")


@dataclass(frozen=True)
class Box:
    """One labelled box on the 0-1000 grid; corners are reordered so ``x1 <= x2`` and ``y1 <= y2``.

    Attributes:
        label: the text of the ref the box belongs to; empty for a box without a ref.
        x1: left edge, in thousandths of the image width.
        y1: top edge, in thousandths of the image height.
        x2: right edge, in thousandths of the image width.
        y2: bottom edge, in thousandths of the image height.
    """

    label: str
    x1: int
    y1: int
    x2: int
    y2: int

    def __post_init__(self) -> None:
        # models write corners in either order; normalising once keeps every consumer simple
        x1, x2 = sorted((self.x1, self.x2))
        y1, y2 = sorted((self.y1, self.y2))
        object.__setattr__(self, "x1", x1)
        object.__setattr__(self, "x2", x2)
        object.__setattr__(self, "y1", y1)
        object.__setattr__(self, "y2", y2)

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in pixels of an image of this size, rounded half up and clamped to the image.

        Args:
            width: the image width in pixels.
            height: the image height in pixels.

        Returns:
            ``(x1, y1, x2, y2)`` with x in ``[0, width]`` and y in ``[0, height]``.
        """
        return (
            _grid_to_pixel(self.x1, width),
            _grid_to_pixel(self.y1, height),
            _grid_to_pixel(self.x2, width),
            _grid_to_pixel(self.y2, height),
        )


def _grid_to_pixel(value: int, size: int) -> int:
    # integer arithmetic rounds exactly half up, where round() would round halves to even
    pixel = (2 * value * size + GRID) // (2 * GRID)
    return min(max(pixel, 0), size)


def _group_boxes(match: re.Match[str]) -> list[Box]:
    label = (match.group("label") or "").strip()
    boxes = []
    for body in _BOX_BODY.findall(match.group("boxes")):
        corners = _CORNERS.fullmatch(body)
        if corners is None:
            continue
        x1, y1, x2, y2 = (int(number) for number in corners.groups())
        if max(x1, y1, x2, y2) <= GRID:
            boxes.append(Box(label, x1, y1, x2, y2))
    return boxes


def parse_boxes(text: str) -> list[Box]:
    """The well-formed boxes in a model's answer.

    Args:
        text: the answer, e.g. ``"<ref>dogs</ref><box>(10,20),(300,400)</box><box>(500,20),(900,400)</box>"``.

    Returns:
        The boxes in order of appearance; malformed or out-of-range boxes are left out.
    """
    return [box for match in _GROUP.finditer(text) for box in _group_boxes(match)]


def pixel_text(text: str, width: int, height: int) -> str:
    """The answer as chat shows it: each ref and its boxes rewritten as ``LABEL [x1, y1, x2, y2]`` in pixels.

    Several boxes follow their label (``dogs [..] [..]``), a box without a ref is shown as ``[..]``, and
    malformed boxes are dropped (a ref whose boxes are all malformed leaves just its label).

    Args:
        text: the model's answer.
        width: the original image width in pixels.
        height: the original image height in pixels.

    Returns:
        The answer with grounding tags replaced; text outside them is unchanged.
    """

    def rewrite(match: re.Match[str]) -> str:
        label = (match.group("label") or "").strip()
        coordinates = ["[{}, {}, {}, {}]".format(*box.to_pixels(width, height)) for box in _group_boxes(match)]
        return " ".join(([label] if label else []) + coordinates)

    return _GROUP.sub(rewrite, text)


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    # black on light tags, white on dark ones (ITU-R BT.601 luma)
    red, green, blue = fill
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else (255, 255, 255)


def draw_boxes(image: Image.Image, boxes: list[Box]) -> Image.Image:
    """A copy of the image with each box outlined and labelled, one palette colour per label.

    Args:
        image: the original image the boxes refer to (any mode).
        boxes: boxes on the 0-1000 grid, e.g. from :func:`parse_boxes`.

    Returns:
        A new RGB image of the same size; ``image`` is left unchanged.
    """
    canvas = image.convert("RGB")  # a new image even when already RGB
    width, height = canvas.size
    line_width = max(2, min(width, height) // 160)
    font = ImageFont.load_default(size=max(12, min(width, height) // 30))
    padding = max(2, line_width)
    draw = ImageDraw.Draw(canvas)
    colours: dict[str, tuple[int, int, int]] = {}
    for box in boxes:
        colour = colours.setdefault(box.label, PALETTE[len(colours) % len(PALETTE)])
        x1, y1, x2, y2 = box.to_pixels(width, height)
        # to_pixels may return the far edge (width, height), one past the last pixel row and column
        draw.rectangle((x1, y1, min(x2, width - 1), min(y2, height - 1)), outline=colour, width=line_width)
        if not box.label:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), box.label, font=font)
        tag_width, tag_height = right - left + 2 * padding, bottom - top + 2 * padding
        # the tag sits at the box's top-left corner, shifted back inside when the box touches the right or bottom edge
        tag_x = max(0, min(x1, width - tag_width))
        tag_y = max(0, min(y1, height - tag_height))
        draw.rectangle((tag_x, tag_y, tag_x + tag_width - 1, tag_y + tag_height - 1), fill=colour)
        draw.text((tag_x + padding - left, tag_y + padding - top), box.label, fill=_text_colour(colour), font=font)
    return canvas
