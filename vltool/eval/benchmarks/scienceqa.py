"""ScienceQA-IMG: the test-split ScienceQA questions that come with an image (2,017 questions).

Reads the official ``problems.json`` (``{pid: {"question", "choices", "answer", "hint", "image",
"split", "subject", "grade", ...}}``), keeps the ``"test"`` problems whose ``image`` is set, and
finds each image at ``<image folder>/test/<pid>/<image>``.

The prompt is the one LLaVA-1.5 answered: a question of its released ``llava_test_CQM-A.json`` (the
file LLaVA's ``scripts/v1_5/eval/sqa.sh`` reads, from LLaVA-1.5's eval data) as
``llava/eval/model_vqa_science.py --single-pred-prompt`` asks it::

    <image>
    Context: <hint>                      (only when the hint is not empty)
    <question>
    A. <choice>
    B. <choice> ...
    Answer with the option's letter from the given choices directly.

The released file is not what LLaVA's ``scripts/convert_sqa_to_llava.py`` makes for format ``CQM-A``
(``Context: ... Question: ... Options: (A) ... (B) ...``). What is reproduced here is the released file:
its entries for pids 4 and 5 (a "Context: " line only where there is a hint, one "X. choice" line per
option) and lmms-eval's copy of LLaVA's prompt (``sqa_doc_to_text``) agree on it. model_vqa_science.py
strips the question before it adds the marker and the instruction, and so does :func:`build_prompt`.

Scoring, ``--rules official`` (default): the letter is read as LLaVA's ``llava/eval/eval_science_qa.py``
reads it (:func:`vltool.eval.llava_choice.read_scienceqa`: a bare letter, "X. ...", or "The answer is X."),
item for item; ``tests/assets/benchmarks/official/scienceqa/`` holds that script's own decisions on 50
image questions. The overall accuracy is its ``IMG-Accuracy``; the per-subject and per-grade rows, which
the ScienceQA paper reports, are vltool's. ``--rules vlmevalkit`` reads the letter with VLMEvalKit's
lenient exact matching (:func:`vltool.eval.extraction.extract_choice`) instead.

Where vltool does not follow the script: a question whose answer is the sixth option or later makes the
script crash, and vltool scores it (see :mod:`vltool.eval.llava_choice`). A question without an answer,
which the script leaves out of IMG-Accuracy, is an error here, and so is an image question LLaVA answered
without its image (no ``<image>`` in the answer line's prompt; the script leaves that out too): either
would silently score a different set of questions.

``--predictions`` reads LLaVA's answer file (``question_id`` = pid, ``prompt``, ``text``) as well as
vltool's; its lines for the text-only test questions are counted and ignored.
"""

from collections import Counter, defaultdict
from pathlib import Path
from string import ascii_uppercase
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
from vltool.eval.llava_choice import SCIENCEQA_SCRIPT, read_scienceqa, reading_notes, scienceqa_letters
from vltool.templates.multiple_choice import ANSWER_INSTRUCTION

SPLIT = "test"
REQUIRED_KEYS = ("question", "choices", "answer", "hint", "image", "split", "subject", "grade")
SUBJECTS = ("natural science", "social science", "language science")
GRADE_BANDS = {"G1-6": range(1, 7), "G7-12": range(7, 13)}
DEFAULT_IMAGE_FOLDER = "images"
"""Without --image-folder, the official ``images/`` folder next to ``problems.json``."""


def load(data_path: Path, image_folder: Path | None) -> list[Sample]:
    """The test problems of ``problems.json`` that have an image.

    Args:
        data_path: the official ``problems.json``.
        image_folder: the folder holding ``test/<pid>/image.png`` (or that ``test/`` folder itself);
            default ``images/`` next to ``problems.json``.

    Raises:
        DatasetError: a wrong top-level structure, a problem lacking a key or with a bad answer
            (pid named), or a missing image.
    """
    problems = _read(data_path)
    folder = image_folder if image_folder is not None else data_path.parent / DEFAULT_IMAGE_FOLDER
    if (folder / SPLIT).is_dir():
        folder = folder / SPLIT
    samples = []
    for pid, problem in problems.items():
        where = f"{data_path}: problem {pid}"
        require_keys(problem, REQUIRED_KEYS, where)
        if problem["split"] == SPLIT and problem["image"]:
            samples.append(_sample(str(pid), problem, folder, where))
    if not samples:
        raise DatasetError(f"{data_path}: no test problem with an image; is this ScienceQA's problems.json?")
    return samples


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """``problems.json``: pid -> problem."""
    problems = read_json(path)
    if not isinstance(problems, dict) or not all(isinstance(problem, dict) for problem in problems.values()):
        raise DatasetError(f"{path}: expected an object mapping problem ids to problems (official problems.json).")
    return problems


def _sample(pid: str, problem: dict[str, Any], image_folder: Path, where: str) -> Sample:
    """One problem as a sample; its choices and answer are checked."""
    choices = problem["choices"]
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(ascii_uppercase):
        raise DatasetError(f"{where}: 'choices' must be a list of 2 or more options, got {choices!r}.")
    options = {letter: str(choice) for letter, choice in zip(ascii_uppercase, choices, strict=False)}
    answer = problem["answer"]
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DatasetError(f"{where}: 'answer' must be a choice index 0-{len(choices) - 1}, got {answer!r}.")
    return Sample(
        key=pid,
        prompt=build_prompt(str(problem["question"]), options, str(problem["hint"] or "")),
        images=(image_file(image_folder, f"{pid}/{problem['image']}", where),),
        reference={
            "options": options,
            "answer": ascii_uppercase[answer],
            "subject": problem["subject"],
            "grade_band": grade_band(str(problem["grade"]), where),
        },
    )


def build_prompt(question: str, options: dict[str, str], hint: str) -> str:
    """A question of LLaVA-1.5's ``llava_test_CQM-A.json`` as model_vqa_science.py --single-pred-prompt asks it."""
    context = f"Context: {hint}\n" if hint else ""
    choices = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    # model_vqa_science.py strips the question before it adds the image marker and the instruction
    text = f"{context}{question}\n{choices}".strip()
    return f"{IMAGE_TOKEN}\n{text}\n{ANSWER_INSTRUCTION}"


def grade_band(grade: str, where: str) -> str:
    """``"G1-6"`` or ``"G7-12"`` for a ``"grade<N>"`` value."""
    number = grade.removeprefix("grade")
    for band, grades in GRADE_BANDS.items():
        if number.isdigit() and int(number) in grades:
            return band
    raise DatasetError(f"{where}: 'grade' must be grade1 ... grade12, got {grade!r}.")


def read_letter(answer: str, reference: dict[str, Any], rules: str) -> tuple[str | None, str]:
    """The letter an answer names and the rule that read it, by ``rules`` (official or vlmevalkit).

    Args:
        answer: the model's answer.
        reference: the sample's reference (``options``, ``answer``).
        rules: the rule set.
    """
    options = reference["options"]
    if rules == VLMEVALKIT:
        extraction = extract_choice(answer, options)
        return extraction.choice, extraction.rule
    reading = read_scienceqa(answer, scienceqa_letters(len(options), reference["answer"]))
    return reading.letter, reading.rule


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """Accuracy per subject, per grade band and overall, the letter read by ``rules``."""
    groups: dict[str, list[bool]] = defaultdict(list)
    counts: Counter[str] = Counter()
    unknown_letters = 0
    for sample in samples:
        letter, rule = read_letter(predictions[sample.key], sample.reference, rules)
        counts[rule] += 1
        unknown_letters += letter is not None and letter not in sample.reference["options"]
        ok = letter == sample.reference["answer"]
        groups[sample.reference["subject"]].append(ok)
        groups[sample.reference["grade_band"]].append(ok)
        groups[OVERALL].append(ok)
    order = [*SUBJECTS, *sorted(set(groups) - {*SUBJECTS, *GRADE_BANDS, OVERALL}), *GRADE_BANDS, OVERALL]
    table = accuracy_table({name: groups[name] for name in order if name in groups})
    if rules == VLMEVALKIT:
        notes = choice_notes(counts, len(samples))
    else:
        notes = reading_notes(counts, unknown_letters, len(samples), SCIENCEQA_SCRIPT)
    return Scores(
        table=table,
        chart=table["accuracy"].drop(OVERALL).to_dict(),
        chart_label="accuracy (%)",
        summary={"accuracy": table.loc[OVERALL, "accuracy"]},
        notes=notes,
    )


def match_answers(data_path: Path, samples: list[Sample], records: list[AnswerRecord], path: Path) -> Answers:
    """Match an answer file by pid; LLaVA's lines for text-only test questions are counted and ignored.

    Raises:
        DatasetError: an image question answered without its image (line named), a question answered
            twice, unanswered questions, or lines whose pid is no test question.
    """
    text_only = {str(pid) for pid, problem in _read(data_path).items() if _is_text_only(problem)}
    keys = {sample.key for sample in samples}
    texts: dict[str, str] = {}
    unmatched, ignored = [], 0
    for record in records:
        if record.id in keys:
            if record.prompt is not None and IMAGE_TOKEN not in record.prompt:
                raise DatasetError(
                    f"{path}:{record.line}: question {record.id} has an image but its prompt has no {IMAGE_TOKEN}: "
                    "it was answered without the image (eval_science_qa.py leaves it out of IMG-Accuracy); "
                    "answer it with its image."
                )
            store_answer(texts, record.id, record, path)
        elif record.id in text_only:
            ignored += 1
        else:
            unmatched.append(record.id)
    return check_coverage(path, samples, texts, unmatched, ignored, "text-only questions")


def _is_text_only(problem: dict[str, Any]) -> bool:
    return problem.get("split") == SPLIT and not problem.get("image")


BENCHMARK = Benchmark(
    name="scienceqa",
    description="ScienceQA-IMG test accuracy by subject and grade; --data-path problems.json (images/ beside it)",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={
        OFFICIAL: f"LLaVA's {SCIENCEQA_SCRIPT}",
        VLMEVALKIT: "VLMEvalKit's exact matching (can_infer)",
    },
    match_answers=match_answers,
)
