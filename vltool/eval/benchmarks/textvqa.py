"""TextVQA val: questions about text in images, scored with the soft VQA accuracy.

Reads the official ``TextVQA_0.5.1_val.json`` and prompts as LLaVA-1.5 does (``<image>``, the
question, "Answer the question using a single word or phrase."), without the OCR-token variant of
LLaVA's ``llava_textvqa_val_v051_ocr.jsonl``. Scoring follows LLaVA's ``llava/eval/eval_textvqa.py``
(m4c ``TextVQAAccuracyEvaluator``): every answer is normalised by the VQA answer processor and scores
``min(1, matching humans / 3)`` averaged over the ten leave-one-out subsets
(:func:`vltool.eval.benchmarks.vqa_normalize.vqa_accuracy`).

LLaVA's answer files (either prompt variant) are read as eval_textvqa.py reads them: the line's
``question_id`` is the image id, and the question comes from its prompt. Where the script stops or
differs, vltool does otherwise: a prompt of another shape (the script's ``assert False``) gives its
first line that is not the OCR-token line; a question not in the annotation file (the script's
KeyError) and questions without an answer (the script averages over the lines it is given) are
errors naming them; a question with other than ten human answers (the m4c evaluator's assertion) is
scored over the answers it has.
"""

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from vltool.constants import IMAGE_TOKEN
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
from vltool.eval.benchmarks.vqa_normalize import vqa_accuracy

SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
"""LLaVA-1.5's instruction for short-answer VQA benchmarks."""

REQUIRED_KEYS = ("question_id", "image_id", "question", "answers")
OCR_LINE = "Reference OCR token:"
"""How LLaVA-1.5's OCR prompt variant starts the line listing the image's OCR tokens."""

OLD_OCR_PROMPT = "OCR tokens: "
"""How an older LLaVA prompt starts: ``OCR tokens: ... Question: <question> Short answer:`` (also read)."""
_OLD_OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def short_answer_prompt(question: str) -> str:
    """LLaVA-1.5's short-answer prompt: the image marker, the question, the instruction."""
    return f"{IMAGE_TOKEN}\n{question}\n{SHORT_ANSWER_INSTRUCTION}"


def _entries(data_path: Path) -> list[dict[str, Any]]:
    content = read_json(data_path)
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise DatasetError(
            f'{data_path}: expected the official TextVQA layout {{"data": [...]}}; '
            "pass TextVQA_0.5.1_val.json as --data-path."
        )
    return content["data"]


def _sample(entry: Any, index: int, data_path: Path, image_folder: Path) -> Sample:
    where = f"{data_path} data[{index}]"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(entry).__name__}.")
    require_keys(entry, REQUIRED_KEYS, where)
    answers = entry["answers"]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DatasetError(f"{where}: 'answers' must be a non-empty list of strings (ten in TextVQA).")
    key = str(entry["question_id"])
    image = image_file(image_folder, f"{entry['image_id']}.jpg", f"{where} (question {key})")
    reference = {"answers": answers, "image_id": str(entry["image_id"]), "question": entry["question"]}
    return Sample(key, short_answer_prompt(entry["question"]), (image,), reference)


def load(data_path: Path, image_folder: Path | None) -> list[Sample]:
    """TextVQA questions from ``TextVQA_0.5.1_val.json``.

    Args:
        data_path: the official annotation file (``{"data": [{"question_id", "image_id", "question",
            "answers", ...}]}``).
        image_folder: the folder of ``<image_id>.jpg`` files (the official ``train_images``); required.

    Raises:
        DatasetError: no image folder, a wrong layout, an entry without a required key, a duplicate
            question id or a missing image.
    """
    if image_folder is None:
        raise DatasetError("textvqa needs --image-folder: the folder of <image_id>.jpg (TextVQA train_images).")
    samples: list[Sample] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(_entries(data_path)):
        sample = _sample(entry, index, data_path, image_folder)
        if sample.key in first_index:
            raise DatasetError(
                f"{data_path} data[{index}]: question_id {sample.key} already used by data[{first_index[sample.key]}]."
            )
        first_index[sample.key] = index
        samples.append(sample)
    return samples


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """Mean soft VQA accuracy, in percent, over all questions."""
    scores = [vqa_accuracy(predictions[sample.key], sample.reference["answers"]) for sample in samples]
    table = accuracy_table({OVERALL: scores})
    accuracy = table.loc[OVERALL, "accuracy"]
    return Scores(
        table=table, chart={OVERALL: accuracy}, chart_label="VQA accuracy (%)", summary={"accuracy": accuracy}
    )


def prompt_question(prompt: str) -> str | None:
    r"""The question of a LLaVA TextVQA prompt, lower-cased, as ``eval_textvqa.py`` finds it.

    ``question\nReference OCR token: ...\ninstruction`` (or with the OCR line first), ``question\ninstruction``
    or ``OCR tokens: ... Question: question Short answer:``; any other shape, where the script stops,
    gives its first line that is not the OCR-token line. None for an old-style prompt without its question.
    """
    if prompt.startswith(OLD_OCR_PROMPT):
        match = _OLD_OCR_QUESTION.search(prompt)
        return match.group(1).lower() if match else None
    lines = prompt.split("\n")
    if OCR_LINE + " " in prompt and len(lines) == 3:
        return (lines[1] if lines[0].startswith(OCR_LINE) else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    return next((line for line in lines if not line.startswith(OCR_LINE)), lines[0]).lower()


def match_answers(data_path: Path, samples: list[Sample], records: list[AnswerRecord], path: Path) -> Answers:
    """Match vltool's predictions (by question id) or LLaVA's TextVQA answer file to the questions.

    A LLaVA line is matched, as eval_textvqa.py does, by (image id, lower-cased question); should two
    questions share both, the lines go to them in file order.

    Args:
        data_path: the annotation file (unused: the samples hold what is needed).
        samples: the questions.
        records: the answer file's lines.
        path: the answer file, for messages.

    Raises:
        DatasetError: questions without an answer, lines matching no question (id and line named),
            or a question answered twice.
    """
    keys = {sample.key for sample in samples}
    by_question: dict[tuple[str, str], list[str]] = defaultdict(list)
    for sample in samples:
        by_question[(sample.reference["image_id"], sample.reference["question"].lower())].append(sample.key)
    texts: dict[str, str] = {}
    unmatched = []
    for record in records:
        candidates = [record.id] if record.id in keys else by_question.get(_llava_question(record), [])
        if not candidates:
            unmatched.append(f"{record.id} (line {record.line})")
            continue
        key = next((key for key in candidates if key not in texts), candidates[-1])
        store_answer(texts, key, record, path)
    return check_coverage(path, samples, texts, unmatched)


def _llava_question(record: AnswerRecord) -> tuple[str, str | None] | None:
    """(image id, question) of a LLaVA answer line; None without a prompt."""
    return None if record.prompt is None else (record.id, prompt_question(record.prompt))


BENCHMARK = Benchmark(
    name="textvqa",
    description="TextVQA val: reading text in images, soft VQA accuracy (TextVQA_0.5.1_val.json + train_images).",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={
        OFFICIAL: "LLaVA's llava/eval/eval_textvqa.py, m4c TextVQAAccuracyEvaluator",
    },
    match_answers=match_answers,
)
