"""RefCOCO / RefCOCO+ / RefCOCOg: find the box a referring expression describes (Acc@0.5).

Reads the JSON Lines files Qwen-VL's ``eval_mm/evaluate_grounding.py`` evaluates
(``refcoco_val.jsonl``, ``refcoco+_testA.jsonl``, ``refcocog_test.jsonl`` ...), one expression per
line: ``image`` (a path, here relative to ``--image-folder``), ``sent`` (the expression), ``bbox``
(the ground-truth box in pixels, ``[x1, y1, x2, y2]`` corners, as Qwen-VL's IoU reads it) and
``width`` / ``height`` (the image size in pixels, used as given; read from the image header when
absent, where Qwen-VL requires them).

Scoring (:mod:`vltool.eval.grounding_rules`): ``official`` is Qwen-VL's script item for item (the
first ``(x1,y1),(x2,y2)`` anywhere in the answer, float corners divided by 999, float32 IoU >= 0.5,
an unreadable answer scored as the box ``(0,0),(0,0)``); ``llava`` reads LLaVA-1.5's
``[x1, y1, x2, y2]`` fractions of the centred padded square.

The prompt is not Qwen-VL's. Qwen-VL scores its pretrained model by raw completion of
``<img>IMAGE</img><ref>SENT</ref><box>``: the model continues the open ``<box>`` with the corners.
vltool asks the question in the model's chat template, as a user turn, and the assistant's reply
cannot continue a tag left open in the user's message; vltool's grounding data
(``docs/data_formats.md``, :mod:`vltool.infer.grounding`) teaches a model to answer a question with
``<ref>..</ref><box>(x1,y1),(x2,y2)</box>``. So vltool keeps InternVL's and VLMEvalKit's chat
prompt, "Please provide the bounding box coordinate of the region this sentence describes:
<ref>SENT</ref>" (LLaVA-1.5's RefCOCO training question, with the expression in a ``<ref>`` tag),
and the official pattern reads the corners inside ``<box>..</box>`` as it reads Qwen-VL's
continuations. The prompt is the same under both rule sets (they differ only in how the answer is
read).
"""

from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from vltool.constants import IMAGE_TOKEN
from vltool.errors import ConfigError, DatasetError
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
from vltool.eval.grounding_rules import Decision, PixelBox, llava_decision, qwen_vl_decision

PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"
"""The grounding request, with the expression in a ``<ref>`` tag."""

LLAVA = "llava"
"""The rule set for LLaVA-1.5-style boxes: ``[x1, y1, x2, y2]`` fractions of the padded square."""

RULES = {
    OFFICIAL: "Qwen-VL's eval_mm/evaluate_grounding.py: (x1,y1),(x2,y2) on a 0-999 grid, float32 IoU >= 0.5",
    LLAVA: "LLaVA-1.5 boxes: x1, y1, x2, y2 in square brackets, fractions of the centred padded square, IoU >= 0.5",
}
_DECIDE = {OFFICIAL: qwen_vl_decision, LLAVA: llava_decision}
# no square brackets in what the report prints: it prints with rich markup, which would swallow them
_UNREAD = {
    OFFICIAL: "had no (x1,y1),(x2,y2) box Qwen-VL's scorer reads (scored as (0,0),(0,0): misses)",
    LLAVA: "had no box of four numbers in square brackets (misses)",
}
REQUIRED_KEYS = ("image", "sent", "bbox")


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


def _image_size(record: dict[str, Any], image: Path, where: str) -> tuple[int | float, int | float]:
    if "width" in record and "height" in record:
        size = record["width"], record["height"]
        if not all(isinstance(value, int | float) and value >= 1 for value in size):
            raise DatasetError(f"{where}: 'width' and 'height' must be positive numbers of pixels, got {size!r}.")
        return size  # as given: Qwen-VL scales by these numbers
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


def decide(prediction: str, reference: dict[str, Any], rules: str = OFFICIAL) -> Decision:
    """How one answer scores under ``rules`` (``official`` or ``llava``): its box, IoU and hit.

    Args:
        prediction: the model's answer.
        reference: the sample's reference (``box``, ``width``, ``height``).
        rules: the rule set.

    Raises:
        ConfigError: an unknown rule set.
    """
    if rules not in _DECIDE:
        raise ConfigError(f"refcoco has no rule set {rules!r}; choose one of {', '.join(RULES)}.")
    return _DECIDE[rules](prediction, reference["box"], reference["width"], reference["height"])


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """Acc@0.5 in percent per split, plus an overall row when there are several splits."""
    hits: dict[str, list[bool]] = defaultdict(list)
    unread = 0
    for sample in samples:
        decision = decide(predictions[sample.key], sample.reference, rules)
        unread += not decision.read
        hits[sample.reference["split"]].append(decision.hit)
    splits = list(hits)  # in file order
    if len(splits) > 1:
        hits[OVERALL] = [hit for split in splits for hit in hits[split]]
    rows = splits + ([OVERALL] if len(splits) > 1 else [])
    table = accuracy_table({row: hits[row] for row in rows})
    headline = table["accuracy"].iloc[-1] if rows else 0.0
    notes = [f"{unread} of {len(samples)} answers {_UNREAD[rules]}"] if unread else []
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
    rules=RULES,
)
