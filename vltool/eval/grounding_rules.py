r"""How a grounding answer becomes a box and a hit or a miss, by one of two rule sets.

``official``: QwenLM/Qwen-VL ``eval_mm/evaluate_grounding.py`` (commit 10cb904), item for item.

- The box is the first match of Qwen-VL's pattern ``\((.*?)\),\((.*?)\)`` anywhere in the answer:
  two bracketed groups joined by ``),(`` with nothing between, on one line. ``<box>`` tags play no
  part: Qwen-VL's prompt ends with ``<box>``, so its answers start with the corners.
- Each group must split on commas into exactly two numbers that Python's ``float`` reads
  (decimals, signs, exponents, ``nan``, ``inf``, spaces around them, even full-width digits).
  When the first match does not, or there is no match, the box is ``(0, 0, 0, 0)``: a miss. A
  later box is never tried, so ``"the man (left) at (1,2),(3,4)"`` is a miss (the first group is
  ``left) at (1,2``).
- Corners are divided by 999, then multiplied by the annotation's ``width`` (x) and ``height`` (y).
  Nothing is clamped and corners are not reordered: values below 0 or above 999 stand, and a box
  whose x or y corners are reversed overlaps nothing, so it misses.
- The IoU is torchvision's formula as the script calls it (areas not clamped, the overlap's width
  and height clamped at 0), in float32 like the script's tensors; a hit is IoU >= 0.5. Float32
  matters at the threshold: the fixtures hold an answer whose IoU is 0.50000006 in float32 (a hit)
  and 0.49999986 in float64. ``0/0`` (an empty answer box on an empty ground truth) is NaN: a miss.

``llava``: LLaVA-1.5's box convention, ``[x1, y1, x2, y2]`` as fractions of the image padded to
a square. LLaVA-1.5 trains with ``image_aspect_ratio="pad"``: ``expand2square`` (llava/mm_utils.py)
pastes the image on a ``side x side`` canvas, ``side = max(width, height)``, at
``((side - width) // 2, (side - height) // 2)``, so the image is centred and the offset rounds
down. The boxes of its instruction data (the RefCOCO and Visual Genome turns of
``llava_v1_5_mix665k.json``, two decimals) are read as fractions of that square
(haotian-liu/LLaVA issue #606, which later issues cite; #822 doubts it for the COCO images).
LLaVA has no RefCOCO scoring script, so vltool's rules for this convention are its own:

- the box is the first ``[a, b, c, d]`` of four numbers (ASCII digits, an optional sign, decimals);
- a corner in pixels is ``fraction * side - offset``, the offset being the one above for its axis;
- the IoU with the ground truth is computed in float64 in pixels (the same IoU as on the padded
  square: the two differ by a shift and a uniform scale); nothing is clamped or reordered, so a
  reversed box misses;
- a hit is IoU >= 0.5; an answer without such a box is a miss.
"""

import re
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLD = 0.5
QWEN_VL_DIVISOR = 999
"""Qwen-VL's scorer divides corners by 999 (vltool's grounding syntax, like its training data, reads
the grid as 0-1000; the two differ by 0.1%)."""

PixelBox = tuple[float, float, float, float]
"""``(x1, y1, x2, y2)`` in pixels of the original image."""

# Qwen-VL's pattern: "." stops at a line break, and the lazy groups make the first "(" decide.
_QWEN_VL_POINTS = re.compile(r"\((.*?)\),\((.*?)\)")
_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_LLAVA_BOX = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")


@dataclass(frozen=True)
class Decision:
    """How one answer was scored.

    Attributes:
        box: the predicted box in pixels, as scored; None when the rules read no box and score none
            (``llava``). ``official`` always scores a box: ``(0, 0, 0, 0)`` when it read none.
        iou: its IoU with the ground truth (NaN where Qwen-VL's float32 arithmetic gives NaN).
        hit: ``iou >= 0.5``.
        read: whether the answer held a box these rules could read.
    """

    box: PixelBox | None
    iou: float
    hit: bool
    read: bool


def qwen_vl_corners(answer: str) -> PixelBox | None:
    """The corners Qwen-VL's scorer reads from an answer, on its 0-999 grid; None where it falls back to zeros."""
    match = _QWEN_VL_POINTS.search(answer)  # the script's findall(...)[0]
    if match is None:
        return None
    try:
        first = [float(part) for part in match.group(1).split(",")]
        second = [float(part) for part in match.group(2).split(",")]
    except ValueError:
        return None
    if len(first) != 2 or len(second) != 2:
        return None
    return first[0], first[1], second[0], second[1]


def qwen_vl_decision(answer: str, truth: PixelBox, width: float, height: float) -> Decision:
    """Score one answer as Qwen-VL's ``evaluate_grounding.py`` does.

    Args:
        answer: the model's answer.
        truth: the ground-truth box in pixels (the file's ``bbox``).
        width: the annotation's image width in pixels.
        height: the annotation's image height in pixels.
    """
    corners = qwen_vl_corners(answer)
    # nan and inf corners, overflow to float32 and 0/0 behave as in the script's tensors, silently
    with np.errstate(all="ignore"):
        box = np.array(corners or (0.0, 0.0, 0.0, 0.0), dtype=np.float32) / np.float32(QWEN_VL_DIVISOR)
        box[0::2] *= np.float32(width)
        box[1::2] *= np.float32(height)
        iou = _float32_iou(box, np.array(truth, dtype=np.float32))
    return Decision(tuple(float(value) for value in box), iou, iou >= IOU_THRESHOLD, corners is not None)


def _float32_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Qwen-VL's ``box_iou`` (with torchvision's ``box_area``) for one pair of float32 ``[4]`` boxes, in its order."""
    area_predicted = (predicted[2] - predicted[0]) * (predicted[3] - predicted[1])
    area_truth = (truth[2] - truth[0]) * (truth[3] - truth[1])
    top_left = np.maximum(predicted[:2], truth[:2])  # NaN-propagating, as torch.max
    bottom_right = np.minimum(predicted[2:], truth[2:])
    overlap = np.maximum(bottom_right - top_left, np.float32(0))  # clamp(min=0); NaN stays NaN
    intersection = overlap[0] * overlap[1]
    union = area_predicted + area_truth - intersection
    return float(intersection / union)


def llava_fractions(answer: str) -> PixelBox | None:
    """The first ``[x1, y1, x2, y2]`` of four numbers in an answer (fractions of the padded square), or None."""
    match = _LLAVA_BOX.search(answer)
    if match is None:
        return None
    x1, y1, x2, y2 = (float(group) for group in match.groups())
    return x1, y1, x2, y2


def padded_square_to_pixels(box: PixelBox, width: int, height: int) -> PixelBox:
    """A box given as fractions of LLaVA's padded square, in pixels of the original image.

    Args:
        box: ``(x1, y1, x2, y2)`` as fractions of the square's side.
        width: the original image width in pixels.
        height: the original image height in pixels.
    """
    side = max(width, height)
    # expand2square pastes the image at ((side - width) // 2, (side - height) // 2); one of them is 0
    left, top = (side - width) // 2, (side - height) // 2
    return box[0] * side - left, box[1] * side - top, box[2] * side - left, box[3] * side - top


def llava_decision(answer: str, truth: PixelBox, width: int, height: int) -> Decision:
    """Score one answer with a LLaVA-1.5-style box (fractions of the centred padded square).

    Args:
        answer: the model's answer.
        truth: the ground-truth box in pixels.
        width: the image width in pixels.
        height: the image height in pixels.
    """
    fractions = llava_fractions(answer)
    if fractions is None:
        return Decision(None, 0.0, False, False)
    box = padded_square_to_pixels(fractions, width, height)
    iou = box_iou(box, truth)
    return Decision(box, iou, iou >= IOU_THRESHOLD, True)


def box_iou(first: PixelBox, second: PixelBox) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes in float64; 0 when the union is not positive."""
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    intersection = width * height
    area_first = (first[2] - first[0]) * (first[3] - first[1])
    area_second = (second[2] - second[0]) * (second[3] - second[1])
    union = area_first + area_second - intersection
    return intersection / union if union > 0 else 0.0
