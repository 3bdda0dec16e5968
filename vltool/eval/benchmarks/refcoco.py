"""RefCOCO / RefCOCO+ / RefCOCOg: find the box a referring expression describes (Acc@0.5).

Reads the JSON Lines files Qwen-VL's ``eval_mm/evaluate_grounding.py`` evaluates
(``refcoco_val.jsonl``, ``refcoco+_testA.jsonl``, ``refcocog_test.jsonl`` ...), one expression per
line: ``image`` (a path, here relative to ``--image-folder``), ``sent`` (the expression), ``bbox``
(the ground-truth box in pixels, ``[x1, y1, x2, y2]`` corners, as Qwen-VL's IoU reads it) and
``width`` / ``height`` (the image size in pixels; read from the image header when absent).

The model is asked "Please provide the bounding box coordinate of the region this sentence
describes: <ref>SENT</ref>" (InternVL's and VLMEvalKit's RefCOCO prompt, in vltool's grounding
syntax) and should answer ``<ref>..</ref><box>(x1,y1),(x2,y2)</box>`` on the 0-1000 grid. As in
Qwen-VL's scorer, the first box counts and is a hit when its IoU with the ground truth is at least
0.5; an answer without a box is a miss. One difference: Qwen-VL divides its coordinates by 999,
vltool reads the grid as 0-1000 (:mod:`vltool.infer.grounding`), the convention its training data
uses, and rounds the box to whole pixels.
"""

from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from vltool.constants import IMAGE_TOKEN
from vltool.errors import DatasetError
from vltool.eval.benchmarks.base import (
    OFFICIAL,
    OVERALL,
    Benchmark,
    Sample,
    Scores,
    accuracy_table,
    image_file,
    read_jsonl,
    require_keys,
)
from vltool.infer.grounding import parse_boxes

PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"
"""The grounding request, with the expression in a ``<ref>`` tag."""

IOU_THRESHOLD = 0.5
REQUIRED_KEYS = ("image", "sent", "bbox")

PixelBox = tuple[float, float, float, float]
"""``(x1, y1, x2, y2)`` in pixels."""


def box_iou(first: PixelBox, second: PixelBox) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes; 0 when both are empty."""
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    intersection = width * height
    area_first = (first[2] - first[0]) * (first[3] - first[1])
    area_second = (second[2] - second[0]) * (second[3] - second[1])
    union = area_first + area_second - intersection
    return intersection / union if union > 0 else 0.0


def _split_files(data_path: Path) -> list[Path]:
    if data_path.is_dir():
        files = sorted(data_path.glob("*.jsonl"))
        if not files:
            raise DatasetError(f"{data_path}: no .jsonl files in this folder; pass refcoco_val.jsonl or its folder.")
        return files
    return [data_path]


def _ground_truth(record: dict[str, Any], where: str) -> PixelBox:
    box = record["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
        raise DatasetError(f"{where}: 'bbox' must be four numbers [x1, y1, x2, y2] in pixels, got {box!r}.")
    x1, y1, x2, y2 = (float(value) for value in box)
    if x2 < x1 or y2 < y1:
        raise DatasetError(f"{where}: 'bbox' {box!r} is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2.")
    return x1, y1, x2, y2


def _image_size(record: dict[str, Any], image: Path, where: str) -> tuple[int, int]:
    if "width" in record and "height" in record:
        size = record["width"], record["height"]
        if not all(isinstance(value, int | float) and value >= 1 for value in size):
            raise DatasetError(f"{where}: 'width' and 'height' must be positive numbers of pixels, got {size!r}.")
        return round(size[0]), round(size[1])
    try:
        with Image.open(image) as opened:  # reads the header only
            return opened.size
    except (OSError, ValueError) as err:
        raise DatasetError(f"{where}: cannot read the size of {image} ({err}); add 'width' and 'height'.") from None


def _sample(split: str, number: int, record: dict[str, Any], where: str, image_folder: Path) -> Sample:
    require_keys(record, REQUIRED_KEYS, where)
    box = _ground_truth(record, where)
    image = image_file(image_folder, record["image"], where)
    width, height = _image_size(record, image, where)
    prompt = f"{IMAGE_TOKEN}\n{PROMPT.format(record['sent'])}"
    reference = {"split": split, "box": box, "width": width, "height": height}
    return Sample(f"{split}/{number}", prompt, (image,), reference)


def load(data_path: Path, image_folder: Path | None) -> list[Sample]:
    """Referring expressions from one Qwen-VL grounding file, or from every ``*.jsonl`` in a folder.

    Each file is a split named by its stem (``refcoco_val``); a sample's key is ``SPLIT/LINE``.

    Args:
        data_path: a ``.jsonl`` file or a folder of them.
        image_folder: the folder the ``image`` paths are relative to; required.

    Raises:
        DatasetError: no image folder, an empty folder, a line without a required key, a malformed
            box or size, or a missing image.
    """
    if image_folder is None:
        raise DatasetError("refcoco needs --image-folder: the folder the files' 'image' paths are relative to.")
    samples = []
    for path in _split_files(data_path):
        for number, record in read_jsonl(path):
            samples.append(_sample(path.stem, number, record, f"{path}:{number}", image_folder))
    return samples


def _is_hit(prediction: str, reference: dict[str, Any]) -> bool | None:
    """Whether the first predicted box overlaps the ground truth enough; None when there is no box."""
    boxes = parse_boxes(prediction)
    if not boxes:
        return None
    predicted = boxes[0].to_pixels(reference["width"], reference["height"])
    return box_iou(predicted, reference["box"]) >= IOU_THRESHOLD


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """Acc@0.5 in percent per split, plus an overall row when there are several splits."""
    hits: dict[str, list[bool]] = defaultdict(list)
    without_box = 0
    for sample in samples:
        hit = _is_hit(predictions[sample.key], sample.reference)
        without_box += hit is None
        hits[sample.reference["split"]].append(bool(hit))
    splits = list(hits)  # in file order
    if len(splits) > 1:
        hits[OVERALL] = [hit for split in splits for hit in hits[split]]
    rows = splits + ([OVERALL] if len(splits) > 1 else [])
    table = accuracy_table({row: hits[row] for row in rows})
    headline = table["accuracy"].iloc[-1] if rows else 0.0
    notes = [f"{without_box} of {len(samples)} answers had no box (counted as misses)"] if without_box else []
    return Scores(
        table=table,
        chart=table["accuracy"].loc[splits].to_dict(),
        chart_label="Acc@0.5 (%)",
        summary={"accuracy": headline},
        notes=notes,
    )


BENCHMARK = Benchmark(
    name="refcoco",
    description="RefCOCO/+/g grounding: box of a referring expression, Acc@0.5 (Qwen-VL's refcoco*.jsonl + COCO).",
    load=load,
    score=score,
    max_new_tokens=64,
    rules={OFFICIAL: "Qwen-VL's eval_mm/evaluate_grounding.py"},
)
