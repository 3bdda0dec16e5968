"""POPE: "Is there a <object> in the image?" on COCO val2014, to measure object hallucination.

Reads the POPE repository's annotation files (``output/coco/coco_pope_{random,popular,adversarial}.json``,
JSON Lines of ``{"question_id", "image", "text", "label": "yes" | "no"}``): one file, or a folder of
them. The split is the file name without ``coco_pope_`` and ``.json`` (otherwise the file stem).

The prompt is LLaVA-1.5's (``llava_pope_test.jsonl``): the question, then "Answer the question
using a single word or phrase.".

Scoring follows LLaVA's ``llava/eval/eval_pope.py``: keep the answer's first sentence (up to the
first "."), drop commas, split on spaces; the answer is "no" if a word is "No", "not" or "no", and
"yes" otherwise. With "yes" as the positive class, each split reports F1, accuracy, precision,
recall and the share of "yes" answers.

Where eval_pope.py stops or goes wrong, vltool does otherwise: a precision, recall or F1 whose
denominator is zero (no "yes" answer in a split, no "yes" label, or no right "yes") is 0, where the
script stops with ZeroDivisionError; answers are paired with labels by question id (and their
question text checked), where the script pairs a split's answers and labels by position and
silently drops the surplus of the longer list.
"""

from pathlib import Path

import pandas as pd

from vltool.constants import IMAGE_TOKEN
from vltool.errors import DatasetError
from vltool.eval.benchmarks.answers import AnswerRecord, Answers, check_coverage, store_answer
from vltool.eval.benchmarks.base import OFFICIAL, Benchmark, Sample, Scores, image_file, read_jsonl, require_keys

INSTRUCTION = "Answer the question using a single word or phrase."
OFFICIAL_PREFIX = "coco_pope_"
SPLIT_ORDER = ("random", "popular", "adversarial")
"""The order the POPE paper reports its splits in; other splits follow alphabetically."""

LLAVA_ID_SPLITS = ("adversarial", "random", "popular")
LLAVA_ID_STRIDE = 10_000_000
"""LLaVA's ``llava_pope_test.jsonl`` numbers its questions ``stride * i + POPE question_id``, i indexing these
splits (adversarial 1-3000, random 10000001-10002910, popular 20000001-20003000)."""

LLAVA_POPE_VERSION = "e3e39262c85a6a83f26cf5094022a782cb0df58d"
"""The POPE commit whose ``output/coco`` files LLaVA-1.5's question file was made from (random has 2910 questions)."""

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
                reference={"split": split, "question": record["text"], "label": record["label"]},
            )
        )
    if not samples:
        raise DatasetError(f"{path}: no questions in this file.")
    return samples


def parse_answer(prediction: str) -> str:
    """``"yes"`` or ``"no"``, by LLaVA's ``eval_pope.py`` rules.

    The answer is not stripped, as eval_pope.py reads it: "No" followed by a line break has no word
    "No" and reads as "yes". LLaVA's ``model_vqa_loader.py`` and vltool strip answers when they write
    them, so this matters only for answer files made otherwise.
    """
    text = prediction.split(".")[0].replace(",", "")
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
    # eval_pope.py divides by zero here (no "yes" answer, no "yes" label, no right "yes"); vltool reports 0
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    # ratios first, then percent, as eval_pope.py computes them (so the floats agree to the bit)
    return {
        "f1": 100 * f1,
        "accuracy": 100 * ((true_pos + true_neg) / len(pairs)),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "yes_ratio": 100 * ((true_pos + false_pos) / len(pairs)),
        "questions": len(pairs),
    }


def _first_word(prediction: str) -> str:
    """The answer's first word, lower-cased, without punctuation."""
    words = prediction.strip().lower().split()
    return words[0].strip(".,!:;\"'") if words else ""


def match_answers(data_path: Path, samples: list[Sample], records: list[AnswerRecord], path: Path) -> Answers:
    """Match vltool's predictions (``split/question_id``) or LLaVA's POPE answer file to the questions.

    LLaVA's one answer file covers the three splits, telling them apart by its question file's
    ``category``; its ids encode the split (:data:`LLAVA_ID_SPLITS`), which is how the lines are read
    here without that file. Each LLaVA line's question must be the annotation's (but for POPE's later
    spelling fix, :func:`_spelled`): POPE's random file after :data:`LLAVA_POPE_VERSION` asks other
    questions under the same ids. Lines for an official split absent from ``data_path`` (one split
    file given) are counted and ignored.

    Args:
        data_path: the annotation file or folder (unused: the samples hold what is needed).
        samples: the questions.
        records: the answer file's lines.
        path: the answer file, for messages.

    Raises:
        DatasetError: questions without an answer, lines matching no question, a question answered
            twice, or a line whose question differs from the annotation's (line named).
    """
    by_key = {sample.key: sample for sample in samples}
    present = {sample.reference["split"] for sample in samples}
    texts: dict[str, str] = {}
    unmatched, ignored = [], 0
    for record in records:
        key = record.id if record.id in by_key else _sample_key(record.id)
        if key in by_key:
            _check_question(record, by_key[key], path)
            store_answer(texts, key, record, path)
        elif key is not None and key.split("/")[0] in SPLIT_ORDER and key.split("/")[0] not in present:
            ignored += 1
        else:
            unmatched.append(record.id)
    return check_coverage(path, samples, texts, unmatched, ignored, "POPE splits not under --data-path")


def _sample_key(question_id: str) -> str | None:
    """The key a line's id names: the id itself (vltool's keys), or ``split/number`` for LLaVA's ids.

    ``10000007`` -> ``random/7``; a number past LLaVA's three splits names nothing (None).
    """
    if not (question_id.isascii() and question_id.isdigit()):
        return question_id
    index, number = divmod(int(question_id), LLAVA_ID_STRIDE)
    return f"{LLAVA_ID_SPLITS[index]}/{number}" if index < len(LLAVA_ID_SPLITS) else None


def _spelled(question: str) -> str:
    """A question with the one misspelling POPE later corrected ("imange") corrected.

    After commit e3e3926 POPE fixed "in the imange?" in 102 questions of its adversarial and popular
    files and changed nothing else there (same ids, images and labels), so answers made from the old
    files still belong to those questions; its random file was drawn anew.
    """
    return question.replace(" imange", " image")


def _check_question(record: AnswerRecord, sample: Sample, path: Path) -> None:
    """Raise when a LLaVA line asks another question than the annotation it was matched to."""
    if record.prompt is None or record.id == sample.key:
        return
    asked = record.prompt.split("\n")[0]
    if _spelled(asked) != _spelled(sample.reference["question"]):
        raise DatasetError(
            f"{path}:{record.line}: question {record.id} asks {asked!r}, but {sample.key} of --data-path is "
            f"{sample.reference['question']!r}; LLaVA's answers pair with POPE's output/coco files of commit "
            f"{LLAVA_POPE_VERSION[:7]} (coco_pope_random.json has 2910 questions there)."
        )


BENCHMARK = Benchmark(
    name="pope",
    description="POPE object hallucination (F1); --data-path coco_pope_*.json or folder, --image-folder val2014/",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={OFFICIAL: "LLaVA's llava/eval/eval_pope.py"},
    match_answers=match_answers,
)
