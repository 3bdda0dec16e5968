"""SEED-Bench (v1), image dimensions 1-9: four-option multiple-choice questions on CC3M images.

Reads the official ``SEED-Bench.json`` (``{"questions": [...], "question_type": {name: id}}``) and
keeps the questions whose ``data_type`` is ``"image"``; their ``data_id`` names a file in the
``SEED-Bench-image/`` folder.

The prompt is LLaVA-1.5's: a line of its ``llava-seed-bench.jsonl`` (``text``: the question, one
``A. ...`` line per option, then "Answer with the option's letter from the given choices
directly.") as ``llava/eval/model_vqa_loader.py`` asks it, after the image marker.

Scoring, ``--rules official`` (default): LLaVA's ``scripts/convert_seed_for_submission.py``, item for
item: an answer is right only when it is exactly the answer's letter ("B"; not "B.", "b", " B" or the
option's text; :func:`vltool.eval.llava_choice.read_seed`). ``tests/assets/benchmarks/official/seed/``
holds that script's own decisions on 44 image questions. Accuracy is reported per dimension (the
script's per-dimension lines) and over all image questions (its "image accuracy", a micro average, as
the official leaderboard's "image" figure). ``--rules vlmevalkit`` reads the letter with VLMEvalKit's
lenient exact matching (:func:`vltool.eval.extraction.extract_choice`) instead.

Where the script crashes, vltool reports a number anyway: a dimension whose answers are all wrong
(``KeyError``: it never counted a right answer there) scores 0%; a SEED-Bench.json without video
questions (``ZeroDivisionError`` after the image accuracy) scores its image questions as usual. A
question without an answer (``KeyError`` while it writes the upload file, after printing a score that
counted it wrong) is an error naming it here, so that no score silently covers fewer answers.

``--predictions`` reads LLaVA's answer file (``question_id``: an integer for image questions, the
``v...`` string for video ones; ``prompt``; ``text``) as well as vltool's; its lines for the video
questions, which LLaVA answers from a middle frame, are counted and ignored.
"""

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from vltool.constants import IMAGE_TOKEN
from vltool.errors import DatasetError
from vltool.eval.benchmarks.answers import AnswerRecord, Answers, check_coverage, store_answer
from vltool.eval.benchmarks.base import (
    OFFICIAL,
    OVERALL,
    VLMEVALKIT,
    Benchmark,
    Sample,
    Scores,
    accuracy_table,
    choice_notes,
    image_file,
    read_json,
    require_keys,
)
from vltool.eval.extraction import extract_choice
from vltool.eval.llava_choice import SEED_SCRIPT, read_seed, reading_notes
from vltool.templates.multiple_choice import ANSWER_INSTRUCTION

OPTION_KEYS = {"A": "choice_a", "B": "choice_b", "C": "choice_c", "D": "choice_d"}
REQUIRED_KEYS = ("question_id", "question", *OPTION_KEYS.values(), "answer", "data_type", "data_id", "question_type_id")
IMAGE_TYPE = "image"
"""The ``data_type`` of the scored questions (the others are ``"video"``)."""
IMAGE_SUFFIX = ".jpg"
"""The suffix of the files in ``SEED-Bench-image/``, added when a ``data_id`` has none."""


def load(data_path: Path, image_folder: Path | None) -> list[Sample]:
    """The image questions of ``SEED-Bench.json``.

    Args:
        data_path: the official ``SEED-Bench.json``.
        image_folder: the ``SEED-Bench-image/`` folder (required).

    Raises:
        DatasetError: no --image-folder, a wrong top-level structure, a question lacking a key or
            with a bad answer (index and question_id named), a repeated question_id or a missing image.
    """
    if image_folder is None:
        raise DatasetError(f"{data_path}: SEED-Bench needs --image-folder pointing at the SEED-Bench-image/ folder.")
    questions, dimension_names = _read(data_path)
    samples, keys = [], set()
    for index, question in enumerate(questions):
        where = f"{data_path}: questions[{index}]"
        if not isinstance(question, dict):
            raise DatasetError(f"{where}: expected an object, got {type(question).__name__}.")
        require_keys(question, REQUIRED_KEYS, where)
        if question["data_type"] != IMAGE_TYPE:
            continue
        key = str(question["question_id"])
        where = f"{where} (question_id {key})"
        if key in keys:
            raise DatasetError(f"{where}: question_id appears twice; use an unmodified SEED-Bench.json.")
        keys.add(key)
        samples.append(_sample(question, key, dimension_names, image_folder, where))
    if not samples:
        raise DatasetError(f"{data_path}: no question with data_type 'image'; is this SEED-Bench.json?")
    return samples


def _read(path: Path) -> tuple[list[Any], dict[int, str]]:
    """The question list and dimension id -> name of ``SEED-Bench.json``."""
    content = read_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("questions"), list):
        raise DatasetError(f"{path}: expected an object with a 'questions' list (the official SEED-Bench.json).")
    question_types = content.get("question_type", {})
    if not isinstance(question_types, dict) or not all(isinstance(number, int) for number in question_types.values()):
        raise DatasetError(f"{path}: 'question_type' must map dimension names to integer ids.")
    return content["questions"], {number: name for name, number in question_types.items()}


def _sample(
    question: dict[str, Any], key: str, dimension_names: dict[int, str], image_folder: Path, where: str
) -> Sample:
    """One question as a sample; its options and answer are checked."""
    options = {letter: str(question[field]) for letter, field in OPTION_KEYS.items()}
    if question["answer"] not in options:
        raise DatasetError(f"{where}: answer must be one of A, B, C, D, got {question['answer']!r}.")
    name = str(question["data_id"])
    if not Path(name).suffix and not (image_folder / name).is_file():
        name += IMAGE_SUFFIX
    dimension_id = question["question_type_id"]
    if not isinstance(dimension_id, int):
        raise DatasetError(f"{where}: question_type_id must be an integer, got {dimension_id!r}.")
    return Sample(
        key=key,
        prompt=build_prompt(str(question["question"]), options),
        images=(image_file(image_folder, name, where),),
        reference={
            "options": options,
            "answer": question["answer"],
            "dimension": dimension_names.get(dimension_id, f"dimension {dimension_id}"),
            "dimension_id": dimension_id,
        },
    )


def build_prompt(question: str, options: dict[str, str]) -> str:
    """A line of LLaVA-1.5's ``llava-seed-bench.jsonl`` after the image marker, as model_vqa_loader.py asks it."""
    choices = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return f"{IMAGE_TOKEN}\n{question}\n{choices}\n{ANSWER_INSTRUCTION}"


def read_letter(answer: str, options: dict[str, str], rules: str) -> tuple[str | None, str]:
    """The letter an answer names and the rule that read it, by ``rules`` (official or vlmevalkit)."""
    if rules == VLMEVALKIT:
        extraction = extract_choice(answer, options)
        return extraction.choice, extraction.rule
    reading = read_seed(answer)
    return reading.letter, reading.rule


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """Accuracy per dimension (in dimension-id order) and over all image questions, the letter read by ``rules``."""
    by_dimension: dict[tuple[int, str], list[bool]] = defaultdict(list)
    counts: Counter[str] = Counter()
    for sample in samples:
        letter, rule = read_letter(predictions[sample.key], sample.reference["options"], rules)
        counts[rule] += 1
        dimension = (sample.reference["dimension_id"], sample.reference["dimension"])
        by_dimension[dimension].append(letter == sample.reference["answer"])
    groups = {name: oks for (_, name), oks in sorted(by_dimension.items())}
    table = accuracy_table({**groups, OVERALL: [ok for oks in groups.values() for ok in oks]})
    if rules == VLMEVALKIT:
        notes = choice_notes(counts, len(samples))
    else:
        notes = reading_notes(counts, 0, len(samples), SEED_SCRIPT)
    return Scores(
        table=table,
        chart=table["accuracy"].drop(OVERALL).to_dict(),
        chart_label="accuracy (%)",
        summary={"accuracy": table.loc[OVERALL, "accuracy"]},
        notes=notes,
    )


def match_answers(data_path: Path, samples: list[Sample], records: list[AnswerRecord], path: Path) -> Answers:
    """Match an answer file by question_id (LLaVA's integers too); its video-question lines are counted and ignored.

    Raises:
        DatasetError: a question answered twice, unanswered questions, or lines matching no question.
    """
    questions, _ = _read(data_path)
    videos = {
        str(question["question_id"])
        for question in questions
        if isinstance(question, dict) and "question_id" in question and question.get("data_type") != IMAGE_TYPE
    }
    keys = {sample.key for sample in samples}
    texts: dict[str, str] = {}
    unmatched, ignored = [], 0
    for record in records:
        if record.id in keys:
            store_answer(texts, record.id, record, path)
        elif record.id in videos:
            ignored += 1
        else:
            unmatched.append(record.id)
    return check_coverage(path, samples, texts, unmatched, ignored, "video questions")


BENCHMARK = Benchmark(
    name="seed",
    description="SEED-Bench v1 image dimensions; --data-path SEED-Bench.json, --image-folder SEED-Bench-image/",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={
        OFFICIAL: f"LLaVA's {SEED_SCRIPT}",
        VLMEVALKIT: "VLMEvalKit's exact matching (can_infer)",
    },
    match_answers=match_answers,
)
