"""The user's own questions: JSON Lines with an answer each, multiple-choice or short-answer.

One question per line::

    {"id": "q1", "image": "a.jpg", "question": "What animal is this?", "answer": "a dog"}
    {"image": ["a.jpg", "b.jpg"], "question": "Which is bigger?", "options": ["left", "right"],
     "answer": "B", "category": "size"}
    {"question": "What is 2 + 2?", "answer": "4"}

``image`` is a path, a list of paths or absent (a text-only question); paths are relative to
``--image-folder``, by default the JSONL file's folder. ``id`` defaults to the line number.

- With ``options`` (``{"A": "cat", ...}`` or a list of texts lettered A, B, ...): the prompt is
  LLaVA's multiple-choice prompt (:func:`vltool.templates.multiple_choice.build_prompt`) with one
  ``<image>`` marker per image, and an answer is correct when :func:`vltool.eval.extraction.extract_choice`
  (VLMEvalKit's rules) reads the right letter from it. ``answer`` is the letter or an option's exact text.
- Without options: the prompt is the markers and the question, and an answer is correct when it equals
  ``answer`` after the VQA normalisation (:func:`vltool.eval.benchmarks.vqa_normalize.normalize_answer`).
"""

from collections import defaultdict
from pathlib import Path
from string import ascii_uppercase
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
    read_jsonl,
    require_keys,
)
from vltool.eval.benchmarks.vqa_normalize import normalize_answer
from vltool.eval.extraction import extract_choice
from vltool.templates.multiple_choice import build_prompt

REQUIRED_KEYS = ("question", "answer")
NO_CATEGORY = "(no category)"
"""The row for questions without a category, when other questions have one."""


def _options(raw: Any, where: str) -> dict[str, str]:
    """Option letter -> text, from a ``{"A": ...}`` object or a list lettered A, B, ..."""
    if isinstance(raw, list) and 2 <= len(raw) <= len(ascii_uppercase):
        options = dict(zip(ascii_uppercase, raw, strict=False))
    elif isinstance(raw, dict) and len(raw) >= 2 and all(key in ascii_uppercase and len(key) == 1 for key in raw):
        options = dict(raw)
    else:
        raise DatasetError(
            f"{where}: 'options' must be a list of 2-26 option texts or an object with single capital "
            'letters as keys ({"A": "...", "B": "..."}).'
        )
    if not all(isinstance(text, str) for text in options.values()):
        raise DatasetError(f"{where}: every option must be a string.")
    return options


def _answer_letter(answer: str, options: dict[str, str], where: str) -> str:
    """The letter an ``answer`` field names: the letter itself, or an option's exact text."""
    if answer in options:
        return answer
    letters = [letter for letter, text in options.items() if text == answer]
    if len(letters) != 1:
        raise DatasetError(
            f"{where}: answer {answer!r} is neither an option letter ({', '.join(options)}) "
            "nor the exact text of one option."
        )
    return letters[0]


def _images(record: dict[str, Any], image_folder: Path, where: str) -> tuple[Path, ...]:
    raw = record.get("image")
    names = [] if raw is None else [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise DatasetError(f"{where}: 'image' must be a path, a list of paths or absent.")
    return tuple(image_file(image_folder, name, where) for name in names)


def _prompt(question: str, options: dict[str, str] | None, image_count: int) -> str:
    markers = f"{IMAGE_TOKEN}\n" * image_count
    if options is None:
        return markers + question
    return markers + build_prompt(question, options, with_image=False)


def _sample(number: int, record: dict[str, Any], where: str, image_folder: Path) -> Sample:
    require_keys(record, REQUIRED_KEYS, where)
    question, answer = record["question"], record["answer"]
    if not isinstance(question, str) or not isinstance(answer, str | int | float):
        raise DatasetError(f"{where}: 'question' must be a string and 'answer' a string or number.")
    answer = str(answer)
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise DatasetError(f"{where}: 'category' must be a string.")
    options = _options(record["options"], where) if record.get("options") is not None else None
    images = _images(record, image_folder, where)
    reference: dict[str, Any] = {"category": category, "options": options, "answer": answer}
    if options is not None:
        reference["answer"] = _answer_letter(answer, options, where)
    key = str(record.get("id", number))
    return Sample(key, _prompt(question, options, len(images)), images, reference)


def load(data_path: Path, image_folder: Path | None) -> list[Sample]:
    """The questions of a custom JSON Lines file.

    Args:
        data_path: the ``.jsonl`` file.
        image_folder: the folder image paths are relative to; None means the file's folder.

    Raises:
        DatasetError: a line without ``question`` or ``answer``, malformed options, an answer that
            names no option, a duplicate id (both lines named) or a missing image.
    """
    folder = image_folder if image_folder is not None else data_path.parent
    samples: list[Sample] = []
    first_line: dict[str, int] = {}
    for number, record in read_jsonl(data_path):
        where = f"{data_path}:{number}"
        sample = _sample(number, record, where, folder)
        if sample.key in first_line:
            raise DatasetError(f"{where}: id {sample.key!r} already used on line {first_line[sample.key]}.")
        first_line[sample.key] = number
        samples.append(sample)
    return samples


def _is_correct(prediction: str, reference: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the prediction is right, and whether it was a multiple-choice answer no option could be read from."""
    options = reference["options"]
    if options is None:
        return normalize_answer(prediction) == normalize_answer(reference["answer"]), False
    choice = extract_choice(prediction, options).choice
    return choice == reference["answer"], choice is None


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """Accuracy in percent: overall, and per category when the questions have categories."""
    groups: dict[str, list[bool]] = defaultdict(list)
    unresolved = 0
    has_categories = any(sample.reference["category"] is not None for sample in samples)
    for sample in samples:
        correct, no_choice = _is_correct(predictions[sample.key], sample.reference)
        unresolved += no_choice
        groups[OVERALL].append(correct)
        if has_categories:
            groups[sample.reference["category"] or NO_CATEGORY].append(correct)
    categories = sorted(name for name in groups if name != OVERALL)
    table = accuracy_table({name: groups[name] for name in [OVERALL, *categories]})
    notes = [f"{unresolved} of {len(samples)} answers picked no option (counted wrong)"] if unresolved else []
    return Scores(
        table=table,
        chart=table["accuracy"].drop(OVERALL).to_dict() if categories else {OVERALL: table.loc[OVERALL, "accuracy"]},
        chart_label="accuracy (%)",
        summary={"accuracy": table.loc[OVERALL, "accuracy"]},
        notes=notes,
    )


BENCHMARK = Benchmark(
    name="custom",
    description="Your own questions (JSONL: image, question, answer, optional options/category): accuracy.",
    load=load,
    score=score,
    max_new_tokens=64,
    rules={
        OFFICIAL: "vltool's: options read by VLMEvalKit's exact matching, else VQA-normalised exact match",
    },
)
