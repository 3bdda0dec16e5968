"""MME: yes/no questions on 14 perception and cognition subtasks, two questions per image.

Reads the official ``MME_Benchmark_release_version/`` folder, in either of its two layouts per
subtask: ``images/`` beside ``questions_answers_YN/`` (one ``.txt`` per image, same stem), or the
image files and their ``.txt`` files side by side. Each ``.txt`` line is ``question<TAB>Yes|No``.

The prompt is LLaVA-1.5's (``llava_mme.jsonl``, which ``convert_answer_to_mme.py`` maps back): the
question without its "Please answer yes or no." suffix, then "Answer the question using a single
word or phrase.".

Scoring follows MME's official ``eval_tool/calculation.py``: an answer (lower-cased, not stripped)
is "yes" or "no" when it is exactly that, else "yes" if its first four characters hold "yes", else
"no" if they hold "no", else "other" (wrong). Per subtask, acc = correct questions / questions and
acc+ = images whose questions are all correct / images; the score is ``(acc + acc+) * 100`` (200 at
most). Perception sums its 10 subtask scores (2000 at most), cognition its 4 (800 at most).

Where the official chain (LLaVA's ``convert_answer_to_mme.py``, then ``calculation.py``) stops,
vltool goes on: a subtask whose answers are all "other" (calculation.py: scikit-learn's ValueError on
the empty yes/no list) scores acc 0 and acc+ 0; absent subtasks (calculation.py: file not found) are
left out of the totals, with a note; an answer holding a tab or line break (it breaks the
tab-separated line convert_answer_to_mme.py writes) is read by its first four characters like any
other; and acc+ groups each image's questions by image, where calculation.py pairs consecutive
lines (the same for LLaVA's files, which keep an image's two questions together).
"""

from collections import defaultdict
from pathlib import Path

import pandas as pd

from vltool.constants import IMAGE_TOKEN
from vltool.errors import DatasetError
from vltool.eval.benchmarks.answers import AnswerRecord, Answers, check_coverage, store_answer
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
            asked = _plain_question(question)
            samples.append(
                Sample(
                    key=f"{folder.name}/{image.name}#{number}",
                    prompt=f"{IMAGE_TOKEN}\n{asked}\n{INSTRUCTION}",
                    images=(image,),
                    reference={"subtask": folder.name, "image": image.name, "question": asked, "answer": answer},
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


def _plain_question(text: str) -> str:
    """A question without MME's "Please answer yes or no." and LLaVA's instruction, stripped.

    Both the release's question (some with two spaces before the suffix) and LLaVA's prompt reduce to
    the same text, which is how an answer line finds its question.
    """
    return text.replace(INSTRUCTION, "").replace(ANSWER_SUFFIX, "").strip()


def parse_answer(prediction: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``, by the official ``parse_pred_ans`` rules.

    The answer is lower-cased but not stripped, as calculation.py reads it: ``"   no"`` is "other".
    LLaVA's ``model_vqa_loader.py`` and vltool strip answers when they write them, so this matters
    only for answer files made otherwise.
    """
    answer = prediction.lower()
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
    # ratio first, then percent, as calculation.py computes them (so the floats agree to the bit)
    accuracy = 100 * (sum(oks) / len(oks))
    accuracy_plus = 100 * (sum(all(image_oks) for image_oks in images) / len(images))
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


def match_answers(data_path: Path, samples: list[Sample], records: list[AnswerRecord], path: Path) -> Answers:
    """Match vltool's predictions (by key) or LLaVA's MME answer file to the questions.

    LLaVA's ``question_id`` is the image's path in the release (``artwork/images/10002.jpg``), shared
    by the image's two questions, so, as ``convert_answer_to_mme.py`` does, a line is matched by its
    subtask (the path's first part), its image (the file stem) and its question (the prompt less
    LLaVA's instruction). Lines for MME subtasks absent from ``data_path`` are counted and ignored.

    Args:
        data_path: the release folder (unused: the samples hold what is needed).
        samples: the questions.
        records: the answer file's lines.
        path: the answer file, for messages.

    Raises:
        DatasetError: questions without an answer, lines matching no question (id and line named),
            or a question answered twice.
    """
    keys = {sample.key for sample in samples}
    by_question = {
        (sample.reference["subtask"], Path(sample.reference["image"]).stem, sample.reference["question"]): sample.key
        for sample in samples
    }
    present = {sample.reference["subtask"] for sample in samples}
    texts: dict[str, str] = {}
    unmatched, ignored = [], 0
    for record in records:
        key = record.id if record.id in keys else by_question.get(_llava_question(record))
        subtask = record.id.split("/")[0]
        if key is not None:
            store_answer(texts, key, record, path)
        elif subtask in PERCEPTION + COGNITION and subtask not in present:
            ignored += 1
        else:
            unmatched.append(f"{record.id} (line {record.line})")
    return check_coverage(path, samples, texts, unmatched, ignored, "MME subtasks not under --data-path")


def _llava_question(record: AnswerRecord) -> tuple[str, str, str] | None:
    """(subtask, image stem, question) of a LLaVA answer line; None without a prompt."""
    if record.prompt is None:
        return None
    parts = record.id.split("/")
    return parts[0], Path(parts[-1]).stem, _plain_question(record.prompt)


BENCHMARK = Benchmark(
    name="mme",
    description="MME yes/no perception (max 2000) and cognition (max 800); --data-path MME_Benchmark_release_version/",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={OFFICIAL: "MME's eval_tool/calculation.py"},
    match_answers=match_answers,
)
