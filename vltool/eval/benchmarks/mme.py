"""MME: yes/no questions on 14 perception and cognition subtasks, two questions per image.

Reads the official ``MME_Benchmark_release_version/`` folder, in either of its two layouts per
subtask: ``images/`` beside ``questions_answers_YN/`` (one ``.txt`` per image, same stem), or the
image files and their ``.txt`` files side by side. Each ``.txt`` line is ``question<TAB>Yes|No``.

The prompt is LLaVA-1.5's (``llava_mme.jsonl``, which ``convert_answer_to_mme.py`` maps back): the
question without its "Please answer yes or no." suffix, then "Answer the question using a single
word or phrase.".

Scoring follows MME's official ``eval_tool/calculation.py``: an answer (lower-cased) is "yes" or
"no" when it is exactly that, else "yes" if its first four characters hold "yes", else "no" if they
hold "no", else "other" (wrong). Per subtask, acc = correct questions / questions and acc+ = images
whose questions are all correct / images; the score is ``(acc + acc+) * 100`` (200 at most).
Perception sums its 10 subtask scores (2000 at most), cognition its 4 (800 at most).
"""

from collections import defaultdict
from pathlib import Path

import pandas as pd

from vltool.constants import IMAGE_TOKEN
from vltool.errors import DatasetError
from vltool.eval.benchmarks.base import OFFICIAL, Benchmark, Sample, Scores

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
GROUPS = {"perception": PERCEPTION, "cognition": COGNITION}
"""The official score groups, subtasks in the official order."""

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
ANSWER_SUFFIX = "Please answer yes or no."
INSTRUCTION = "Answer the question using a single word or phrase."
NESTED_ROOT = "MME_Benchmark"
"""Some copies of the release hold the subtask folders one level down, in this folder."""


def load(data_path: Path, image_folder: Path | None) -> list[Sample]:
    """Every question of the subtasks present under ``data_path``.

    Args:
        data_path: the ``MME_Benchmark_release_version/`` folder (or the ``MME_Benchmark/`` folder
            inside it), one folder per subtask; subtasks that are absent are skipped.
        image_folder: unused: the images sit in the subtask folders.

    Raises:
        DatasetError: no subtask folder, a malformed question line (file and line named), or a
            question file without its image.
    """
    root = _subtask_root(data_path)
    samples = []
    for subtask in PERCEPTION + COGNITION:
        if (root / subtask).is_dir():
            samples += _load_subtask(root / subtask)
    return samples


def _subtask_root(data_path: Path) -> Path:
    """The folder holding the subtask folders."""
    if not data_path.is_dir():
        raise DatasetError(f"{data_path}: not a folder; point --data-path at MME_Benchmark_release_version/.")
    for root in (data_path, data_path / NESTED_ROOT):
        if any((root / subtask).is_dir() for subtask in PERCEPTION + COGNITION):
            return root
    raise DatasetError(
        f"{data_path}: no MME subtask folder (existence, count, ..., code_reasoning) found; "
        "point --data-path at the unpacked MME_Benchmark_release_version/ folder."
    )


def _load_subtask(folder: Path) -> list[Sample]:
    """The questions of one subtask folder, in either official layout."""
    questions_folder, images_folder = folder / "questions_answers_YN", folder / "images"
    if not (questions_folder.is_dir() and images_folder.is_dir()):
        questions_folder = images_folder = folder
    question_files = sorted(questions_folder.glob("*.txt"))
    if not question_files:
        raise DatasetError(f"{folder}: no question .txt files; is this subtask folder complete?")
    samples = []
    for question_file in question_files:
        image = _image_for(question_file, images_folder)
        for number, (question, answer) in enumerate(_read_questions(question_file), start=1):
            samples.append(
                Sample(
                    key=f"{folder.name}/{image.name}#{number}",
                    prompt=f"{IMAGE_TOKEN}\n{question.replace(ANSWER_SUFFIX, '').strip()}\n{INSTRUCTION}",
                    images=(image,),
                    reference={"subtask": folder.name, "image": image.name, "answer": answer},
                )
            )
    return samples


def _image_for(question_file: Path, images_folder: Path) -> Path:
    """The image a question file is about: same stem, in ``images_folder``."""
    for suffix in IMAGE_SUFFIXES:
        image = images_folder / (question_file.stem + suffix)
        if image.is_file():
            return image
    raise DatasetError(
        f"{question_file}: no image {images_folder / question_file.stem}.jpg (or .png) found; "
        "restore the subtask folder from the MME release."
    )


def _read_questions(path: Path) -> list[tuple[str, str]]:
    """``(question, "yes" | "no")`` for each non-blank line of a question file."""
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 2 or fields[1].strip().lower() not in ("yes", "no"):
            raise DatasetError(f"{path}:{number}: expected 'question<TAB>Yes' or 'question<TAB>No', got {line!r}.")
        questions.append((fields[0], fields[1].strip().lower()))
    if not questions:
        raise DatasetError(f"{path}: no questions; expected lines 'question<TAB>Yes|No'.")
    return questions


def parse_answer(prediction: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``, by the official ``parse_pred_ans`` rules.

    LLaVA strips its answers before they reach the official files; so does this.
    """
    answer = prediction.strip().lower()
    if answer in ("yes", "no"):
        return answer
    if "yes" in answer[:4]:
        return "yes"
    if "no" in answer[:4]:
        return "no"
    return "other"


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """Acc, acc+ and score per subtask, and the perception and cognition totals."""
    correct: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    others = 0
    for sample in samples:
        parsed = parse_answer(predictions[sample.key])
        others += parsed == "other"
        reference = sample.reference
        correct[reference["subtask"]][reference["image"]].append(parsed == reference["answer"])
    rows = {subtask: _row(list(correct[subtask].values())) for subtask in PERCEPTION + COGNITION if subtask in correct}
    totals = {}
    for group, subtasks in GROUPS.items():
        present = [subtask for subtask in subtasks if subtask in correct]
        if present:
            totals[group] = _group_row(present, correct, rows)
    table = pd.DataFrame.from_dict({**rows, **totals}, orient="index")
    summary = {group: row["score"] for group, row in totals.items()}
    summary["total"] = sum(summary.values())
    return Scores(
        table=table,
        chart={subtask: row["score"] for subtask, row in rows.items()},
        chart_label="score (max 200)",
        summary=summary,
        notes=_notes(len(rows), others, len(samples)),
    )


def _row(images: list[list[bool]]) -> dict[str, float]:
    """acc, acc+ (percent), score and question count, from each image's per-question outcomes."""
    oks = [ok for image_oks in images for ok in image_oks]
    accuracy = 100 * sum(oks) / len(oks)
    accuracy_plus = 100 * sum(all(image_oks) for image_oks in images) / len(images)
    return {"acc": accuracy, "acc+": accuracy_plus, "score": accuracy + accuracy_plus, "questions": len(oks)}


def _group_row(
    subtasks: list[str], correct: dict[str, dict[str, list[bool]]], rows: dict[str, dict[str, float]]
) -> dict[str, float]:
    """A total row: the official summed score; acc and acc+ pooled over the group's questions and images."""
    row = _row([oks for subtask in subtasks for oks in correct[subtask].values()])
    row["score"] = sum(rows[subtask]["score"] for subtask in subtasks)
    return row


def _notes(subtasks: int, others: int, questions: int) -> list[str]:
    """Lines on a partial MME and on answers that were neither yes nor no."""
    notes = []
    if subtasks < len(PERCEPTION + COGNITION):
        notes.append(f"{subtasks} of 14 subtasks present: totals are not comparable with full-MME scores")
    if others:
        notes.append(f"{others} of {questions} answers were neither yes nor no (counted wrong)")
    return notes


BENCHMARK = Benchmark(
    name="mme",
    description="MME yes/no perception (max 2000) and cognition (max 800); --data-path MME_Benchmark_release_version/",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={OFFICIAL: "MME's eval_tool/calculation.py"},
)
