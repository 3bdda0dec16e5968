"""POPE: "Is there a <object> in the image?" on COCO val2014, to measure object hallucination.

Reads the POPE repository's annotation files (``output/coco/coco_pope_{random,popular,adversarial}.json``,
JSON Lines of ``{"question_id", "image", "text", "label": "yes" | "no"}``): one file, or a folder of
them. The split is the file name without ``coco_pope_`` and ``.json`` (otherwise the file stem).

The prompt is LLaVA-1.5's (``llava_pope_test.jsonl``): the question, then "Answer the question
using a single word or phrase.".

Scoring follows LLaVA's ``llava/eval/eval_pope.py``: keep the answer's first sentence (up to the
first "."), drop commas, split on spaces; the answer is "no" if a word is "No", "not" or "no", and
"yes" otherwise. With "yes" as the positive class, each split reports F1, accuracy, precision,
recall and the share of "yes" answers. Unlike the script, a precision, recall or F1 whose
denominator is zero (no "yes" answer, or no "yes" label) is 0 instead of a crash.
"""

from pathlib import Path

import pandas as pd

from vltool.constants import IMAGE_TOKEN
from vltool.errors import DatasetError
from vltool.eval.benchmarks.base import OFFICIAL, Benchmark, Sample, Scores, image_file, read_jsonl, require_keys

INSTRUCTION = "Answer the question using a single word or phrase."
OFFICIAL_PREFIX = "coco_pope_"
SPLIT_ORDER = ("random", "popular", "adversarial")
"""The order the POPE paper reports its splits in; other splits follow alphabetically."""

REQUIRED_KEYS = ("question_id", "image", "text", "label")
NEGATIONS = ("No", "not", "no")
"""Words that make LLaVA's ``eval_pope.py`` read an answer as "no" (case-sensitive, as there)."""


def load(data_path: Path, image_folder: Path | None) -> list[Sample]:
    """The questions of one POPE annotation file, or of every ``*.json`` file in a folder.

    Args:
        data_path: ``coco_pope_<split>.json`` or a folder holding such files.
        image_folder: COCO ``val2014/`` (required).

    Raises:
        DatasetError: no --image-folder, no annotation file, a bad line (file and line named), or a
            missing image.
    """
    if image_folder is None:
        raise DatasetError(f"{data_path}: POPE needs --image-folder pointing at COCO val2014/ (the question images).")
    samples = []
    for path in annotation_files(data_path):
        samples += _load_split(path, image_folder)
    return samples


def annotation_files(data_path: Path) -> list[Path]:
    """``data_path`` itself, or the ``*.json`` files in that folder, the official splits first."""
    if data_path.is_file():
        return [data_path]
    if not data_path.is_dir():
        raise DatasetError(f"{data_path}: not found; point --data-path at coco_pope_<split>.json or its folder.")
    files = sorted(data_path.glob("*.json"), key=lambda path: _split_rank(split_name(path)))
    if not files:
        raise DatasetError(f"{data_path}: no .json annotation files (coco_pope_random.json, ...) in this folder.")
    return files


def split_name(path: Path) -> str:
    """``random`` for ``coco_pope_random.json``; the file stem for other names."""
    return path.stem.removeprefix(OFFICIAL_PREFIX) if path.stem.startswith(OFFICIAL_PREFIX) else path.stem


def _split_rank(split: str) -> tuple[int, str]:
    """Sort key: the official splits in paper order, then the rest by name."""
    return (SPLIT_ORDER.index(split), "") if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)


def _load_split(path: Path, image_folder: Path) -> list[Sample]:
    """The samples of one annotation file."""
    split = split_name(path)
    samples, keys = [], set()
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        require_keys(record, REQUIRED_KEYS, where)
        if record["label"] not in ("yes", "no"):
            raise DatasetError(f"{where}: label must be 'yes' or 'no', got {record['label']!r}.")
        key = f"{split}/{record['question_id']}"
        if key in keys:
            raise DatasetError(f"{where}: question_id {record['question_id']} appears twice in this file.")
        keys.add(key)
        samples.append(
            Sample(
                key=key,
                prompt=f"{IMAGE_TOKEN}\n{record['text']}\n{INSTRUCTION}",
                images=(image_file(image_folder, record["image"], f"{where} (question {key})"),),
                reference={"split": split, "label": record["label"]},
            )
        )
    if not samples:
        raise DatasetError(f"{path}: no questions in this file.")
    return samples


def parse_answer(prediction: str) -> str:
    """``"yes"`` or ``"no"``, by LLaVA's ``eval_pope.py`` rules (answers stripped, as LLaVA's are)."""
    text = prediction.strip().split(".")[0].replace(",", "")
    return "no" if any(word in NEGATIONS for word in text.split(" ")) else "yes"


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """F1, accuracy, precision, recall and yes-ratio per split, and their mean over splits."""
    outcomes: dict[str, list[tuple[str, str]]] = {}
    unclear = 0
    for sample in samples:
        prediction = predictions[sample.key]
        unclear += _first_word(prediction) not in ("yes", "no")
        outcomes.setdefault(sample.reference["split"], []).append((parse_answer(prediction), sample.reference["label"]))
    rows = {split: split_metrics(pairs) for split, pairs in outcomes.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    if len(rows) > 1:
        table.loc["average"] = table.mean()
        table.loc["average", "questions"] = len(samples)
    headline = table.iloc[-1]
    notes = []
    if unclear:
        notes.append(
            f"{unclear} of {len(samples)} answers did not start with yes or no "
            "(read as 'no' if they contain no/not, else 'yes', as LLaVA does)"
        )
    return Scores(
        table=table,
        chart={split: row["f1"] for split, row in rows.items()},
        chart_label="F1 (%)",
        summary={"f1": headline["f1"], "accuracy": headline["accuracy"], "yes_ratio": headline["yes_ratio"]},
        notes=notes,
    )


def split_metrics(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """The metrics (percent) of ``(prediction, label)`` pairs, "yes" being the positive class."""
    true_pos = sum(pred == "yes" and label == "yes" for pred, label in pairs)
    false_pos = sum(pred == "yes" and label == "no" for pred, label in pairs)
    true_neg = sum(pred == "no" and label == "no" for pred, label in pairs)
    false_neg = len(pairs) - true_pos - false_pos - true_neg
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "f1": 100 * f1,
        "accuracy": 100 * (true_pos + true_neg) / len(pairs),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "yes_ratio": 100 * (true_pos + false_pos) / len(pairs),
        "questions": len(pairs),
    }


def _first_word(prediction: str) -> str:
    """The answer's first word, lower-cased, without punctuation."""
    words = prediction.strip().lower().split()
    return words[0].strip(".,!:;\"'") if words else ""


BENCHMARK = Benchmark(
    name="pope",
    description="POPE object hallucination (F1); --data-path coco_pope_*.json or folder, --image-folder val2014/",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={OFFICIAL: "LLaVA's llava/eval/eval_pope.py"},
)
