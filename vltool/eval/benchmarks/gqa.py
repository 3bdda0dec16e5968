"""GQA testdev-balanced: compositional questions about real images, scored by exact match.

Reads the official ``testdev_balanced_questions.json`` and prompts as LLaVA-1.5 does (``<image>``,
the question, "Answer the question using a single word or phrase."). Scoring follows LLaVA's
``scripts/convert_gqa_for_eval.py`` followed by GQA's official ``eval.py``: trailing periods are
removed from the answer as written (not stripped: ``"yes "`` stays wrong), it is lower-cased, and it
must then equal the annotated ``answer`` exactly (the annotation is not normalised). As in
``eval.py``, only questions marked ``isBalanced`` count; questions marked ``"isBalanced": false``
(present only in the ``all`` question files) are skipped when loading, and answers to them are
counted and ignored. Accuracy per structural type (verify, query, choose, logical, compare) is
``eval.py``'s "Accuracy / structural type".

LLaVA's GQA answer file uses the GQA question ids, so it matches by key. Where the official pair
is lax or stops, vltool does otherwise: eval.py keeps the last of two answers to a question and
skips answers to unknown ids without a word; vltool calls both an error. eval.py's distribution
score divides by zero when no scored question has a global group; vltool does not report it.
"""

from collections import defaultdict
from pathlib import Path
from typing import Any

from vltool.errors import DatasetError
from vltool.eval.benchmarks.answers import AnswerRecord, Answers, check_coverage, store_answer
from vltool.eval.benchmarks.base import (
    OFFICIAL,
    OVERALL,
    Benchmark,
    Sample,
    Scores,
    accuracy_table,
    image_file,
    read_json,
    require_keys,
)
from vltool.eval.benchmarks.textvqa import short_answer_prompt

REQUIRED_KEYS = ("imageId", "question", "answer")


def normalize_prediction(text: str) -> str:
    """An answer as LLaVA's ``convert_gqa_for_eval.py`` hands it to GQA's ``eval.py``.

    Trailing periods removed, lower case, and nothing else: not stripped (LLaVA's
    ``model_vqa_loader.py`` and vltool strip answers when they write them).
    """
    return text.rstrip(".").lower()


def _structural_type(question: dict[str, Any]) -> str | None:
    types = question.get("types")
    return types.get("structural") if isinstance(types, dict) else None


def _sample(question_id: str, question: Any, data_path: Path, image_folder: Path) -> Sample | None:
    where = f"{data_path} question {question_id}"
    if not isinstance(question, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(question).__name__}.")
    if question.get("isBalanced") is False:
        return None  # eval.py scores balanced questions only
    require_keys(question, REQUIRED_KEYS, where)
    image = image_file(image_folder, f"{question['imageId']}.jpg", where)
    reference = {"answer": question["answer"], "structural": _structural_type(question)}
    return Sample(question_id, short_answer_prompt(question["question"]), (image,), reference)


def load(data_path: Path, image_folder: Path | None) -> list[Sample]:
    """GQA questions from ``testdev_balanced_questions.json``.

    Args:
        data_path: the official question file (``{question_id: {"imageId", "question", "answer",
            "types": {"structural", ...}, "isBalanced", ...}}``).
        image_folder: the folder of ``<imageId>.jpg`` files (GQA's ``images``); required.

    Raises:
        DatasetError: no image folder, a wrong layout, a question without a required key or a
            missing image.
    """
    if image_folder is None:
        raise DatasetError("gqa needs --image-folder: the folder of GQA's <imageId>.jpg images.")
    content = read_json(data_path)
    if not isinstance(content, dict):
        raise DatasetError(
            f"{data_path}: expected GQA's layout, an object mapping question ids to questions; "
            "pass testdev_balanced_questions.json as --data-path."
        )
    samples = [_sample(str(qid), question, data_path, image_folder) for qid, question in content.items()]
    return [sample for sample in samples if sample is not None]


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """Exact-match accuracy in percent: overall and per structural type (when the questions have one)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for sample in samples:
        correct = normalize_prediction(predictions[sample.key]) == sample.reference["answer"]
        groups[OVERALL].append(correct)
        if sample.reference["structural"] is not None:
            groups[sample.reference["structural"]].append(correct)
    types = sorted(name for name in groups if name != OVERALL)
    table = accuracy_table({name: groups[name] for name in [OVERALL, *types]})
    return Scores(
        table=table,
        chart=table["accuracy"].drop(OVERALL).to_dict() if types else {OVERALL: table.loc[OVERALL, "accuracy"]},
        chart_label="accuracy (%)",
        summary={"accuracy": table.loc[OVERALL, "accuracy"]},
    )


def match_answers(data_path: Path, samples: list[Sample], records: list[AnswerRecord], path: Path) -> Answers:
    """Match an answer file (vltool's, or LLaVA's, whose ids are GQA's question ids) by key.

    Lines for questions of ``data_path`` marked ``"isBalanced": false`` are counted and ignored.

    Raises:
        DatasetError: questions without an answer, lines matching no question, or a question answered twice.
    """
    keys = {sample.key for sample in samples}
    texts: dict[str, str] = {}
    unknown = []
    for record in records:
        if record.id in keys:
            store_answer(texts, record.id, record, path)
        else:
            unknown.append(record.id)
    unbalanced = _unbalanced_ids(data_path) if unknown else set()
    unmatched = [question_id for question_id in unknown if question_id not in unbalanced]
    ignored = len(unknown) - len(unmatched)
    return check_coverage(
        path, samples, texts, unmatched, ignored, "unbalanced questions (eval.py scores balanced ones)"
    )


def _unbalanced_ids(data_path: Path) -> set[str]:
    """The ids of the questions marked ``"isBalanced": false`` in the question file."""
    content = read_json(data_path)
    return {
        str(qid)
        for qid, question in content.items()
        if isinstance(question, dict) and question.get("isBalanced") is False
    }


BENCHMARK = Benchmark(
    name="gqa",
    description="GQA testdev-balanced: compositional VQA, exact match (testdev_balanced_questions.json + images).",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={OFFICIAL: "LLaVA's scripts/convert_gqa_for_eval.py, then GQA's eval.py"},
    match_answers=match_answers,
)
