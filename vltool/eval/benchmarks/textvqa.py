"""TextVQA val: questions about text in images, scored with the soft VQA accuracy.

Reads the official ``TextVQA_0.5.1_val.json`` and prompts as LLaVA-1.5 does (``<image>``, the
question, "Answer the question using a single word or phrase."), without the OCR-token variant of
LLaVA's ``llava_textvqa_val_v051_ocr.jsonl``. Scoring follows LLaVA's ``llava/eval/eval_textvqa.py``
(m4c ``TextVQAAccuracyEvaluator``): every answer is normalised by the VQA answer processor and scores
``min(1, matching humans / 3)`` averaged over the ten leave-one-out subsets
(:func:`vltool.eval.benchmarks.vqa_normalize.vqa_accuracy`).
"""

from pathlib import Path
from typing import Any

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
    read_json,
    require_keys,
)
from vltool.eval.benchmarks.vqa_normalize import vqa_accuracy

SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
"""LLaVA-1.5's instruction for short-answer VQA benchmarks."""

REQUIRED_KEYS = ("question_id", "image_id", "question", "answers")


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
    return Sample(key, short_answer_prompt(entry["question"]), (image,), {"answers": answers})


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


BENCHMARK = Benchmark(
    name="textvqa",
    description="TextVQA val: reading text in images, soft VQA accuracy (TextVQA_0.5.1_val.json + train_images).",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={
        OFFICIAL: "LLaVA's llava/eval/eval_textvqa.py, m4c TextVQAAccuracyEvaluator",
    },
)
