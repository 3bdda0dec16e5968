"""ScienceQA-IMG: the test-split ScienceQA questions that come with an image (2,017 questions).

Reads the official ``problems.json`` (``{pid: {"question", "choices", "answer", "hint", "image",
"split", "subject", "grade", ...}}``), keeps the ``"test"`` problems whose ``image`` is set, and
finds each image at ``<image folder>/test/<pid>/<image>``.

The prompt is LLaVA-1.5's: ``llava_test_CQM-A.json`` (``scripts/convert_sqa_to_llava.py``, format
``CQM-A``) read by ``llava/eval/model_vqa_science.py --single-pred-prompt``::

    <image>
    Context: <hint, or N/A>
    Question: <question>
    Options: (A) <choice> (B) <choice> ...
    Answer with the option's letter from the given choices directly.

Scoring: the letter is read with VLMEvalKit's exact-matching rules
(:func:`vltool.eval.extraction.extract_choice`) instead of LLaVA's ``eval_science_qa.py`` (a bare
letter, "X. ..." or "The answer is X"); LLaVA-1.5's bare-letter answers score the same either
way. Accuracy is reported overall, per subject and per grade band, as the ScienceQA paper does.
"""

from collections import Counter, defaultdict
from pathlib import Path
from string import ascii_uppercase
from typing import Any

from vltool.constants import IMAGE_TOKEN
from vltool.errors import DatasetError
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

SPLIT = "test"
REQUIRED_KEYS = ("question", "choices", "answer", "hint", "image", "split", "subject", "grade")
SUBJECTS = ("natural science", "social science", "language science")
GRADE_BANDS = {"G1-6": range(1, 7), "G7-12": range(7, 13)}
INSTRUCTION = "Answer with the option's letter from the given choices directly."
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
    problems = read_json(data_path)
    if not isinstance(problems, dict) or not all(isinstance(problem, dict) for problem in problems.values()):
        raise DatasetError(f"{data_path}: expected an object mapping problem ids to problems (official problems.json).")
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
    """LLaVA-1.5's ScienceQA prompt (``CQM-A`` format with the single-prediction instruction)."""
    context = hint.strip() or "N/A"
    choices = " ".join(f"({letter}) {text}" for letter, text in options.items())
    # convert_sqa_to_llava_base_prompt.py collapses double spaces once and strips, so this does too
    text = f"Context: {context}\nQuestion: {question}\nOptions: {choices}\n".replace("  ", " ").strip()
    return f"{IMAGE_TOKEN}\n{text}\n{INSTRUCTION}"


def grade_band(grade: str, where: str) -> str:
    """``"G1-6"`` or ``"G7-12"`` for a ``"grade<N>"`` value."""
    number = grade.removeprefix("grade")
    for band, grades in GRADE_BANDS.items():
        if number.isdigit() and int(number) in grades:
            return band
    raise DatasetError(f"{where}: 'grade' must be grade1 ... grade12, got {grade!r}.")


def score(samples: list[Sample], predictions: dict[str, str], rules: str = OFFICIAL) -> Scores:
    """Accuracy per subject, per grade band and overall."""
    groups: dict[str, list[bool]] = defaultdict(list)
    rules: Counter[str] = Counter()
    for sample in samples:
        extraction = extract_choice(predictions[sample.key], sample.reference["options"])
        rules[extraction.rule] += 1
        ok = extraction.choice == sample.reference["answer"]
        groups[sample.reference["subject"]].append(ok)
        groups[sample.reference["grade_band"]].append(ok)
        groups[OVERALL].append(ok)
    order = [*SUBJECTS, *sorted(set(groups) - {*SUBJECTS, *GRADE_BANDS, OVERALL}), *GRADE_BANDS, OVERALL]
    table = accuracy_table({name: groups[name] for name in order if name in groups})
    return Scores(
        table=table,
        chart=table["accuracy"].drop(OVERALL).to_dict(),
        chart_label="accuracy (%)",
        summary={"accuracy": table.loc[OVERALL, "accuracy"]},
        notes=choice_notes(rules, len(samples)),
    )


BENCHMARK = Benchmark(
    name="scienceqa",
    description="ScienceQA-IMG test accuracy by subject and grade; --data-path problems.json (images/ beside it)",
    load=load,
    score=score,
    max_new_tokens=16,
    rules={
        OFFICIAL: "LLaVA's llava/eval/eval_science_qa.py",
        VLMEVALKIT: "VLMEvalKit's exact matching (can_infer)",
    },
)
