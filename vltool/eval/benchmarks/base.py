"""What every ``vltool eval`` benchmark provides: its samples, and a scorer for their predictions.

A benchmark module reads its official (or LLaVA eval-script) files into :class:`Sample` objects
and scores a ``key -> prediction text`` mapping into :class:`Scores`. Generation, caching, sharding
across processes, the predictions file and the report are shared (``vltool.eval.evaluate``), so a
benchmark module holds only its file format, its prompt and its metric.
"""

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from vltool.errors import DatasetError

if TYPE_CHECKING:
    from vltool.eval.benchmarks.answers import AnswerRecord, Answers


@dataclass(frozen=True)
class Sample:
    """One question of a benchmark.

    Attributes:
        key: unique id within the benchmark; predictions are cached and matched by it.
        prompt: the user message, with one ``<image>`` marker per image.
        images: the image files, in marker order (checked to exist when the benchmark is loaded).
        reference: whatever the scorer needs (answers, category, split, box, image size ...).
    """

    key: str
    prompt: str
    images: tuple[Path, ...]
    reference: dict[str, Any]


@dataclass
class Scores:
    """A benchmark's results.

    Attributes:
        table: one row per group (subtask, split, dimension ...) and usually an overall row;
            the index holds the row names, every column is a number.
        chart: what the bar chart shows: label -> value.
        chart_label: the chart's value axis ("accuracy (%)", "score" ...).
        summary: the headline figures printed last (``{"perception": 1412.5, ...}``).
        notes: lines printed with the results (how many answers were unresolved ...).
    """

    table: pd.DataFrame
    chart: dict[str, float]
    chart_label: str
    summary: dict[str, float]
    notes: list[str] = field(default_factory=list)


OFFICIAL = "official"
"""The rule set every benchmark scores by default: its official scoring script's."""

VLMEVALKIT = "vlmevalkit"
"""VLMEvalKit's lenient option extraction, for the benchmarks VLMEvalKit scores that way."""


@dataclass(frozen=True)
class Benchmark:
    """A benchmark ``vltool eval --benchmark NAME`` can run.

    Attributes:
        name: the ``--benchmark`` name.
        description: one line for the list of benchmarks (what it measures and its input).
        load: ``(data_path, image_folder) -> samples``; ``image_folder`` is None when not given.
            Raises :class:`DatasetError` naming the file, line or sample at fault.
        score: ``(samples, predictions, rules) -> scores``; ``predictions`` has a text for every
            key; ``rules`` is one of ``rules``' names.
        max_new_tokens: the default answer length.
        rules: the rule sets ``--rules`` may pick: name -> what it reproduces (printed with the
            results); the first is the default.
        match_answers: ``(data_path, samples, answer lines, answer file) -> Answers``: matches a
            saved answer file (vltool's or LLaVA's) to the samples
            (:mod:`vltool.eval.benchmarks.answers`; default: by key).
    """

    name: str
    description: str
    load: Callable[[Path, Path | None], list[Sample]]
    score: Callable[[list[Sample], dict[str, str], str], Scores]
    max_new_tokens: int
    rules: dict[str, str]
    match_answers: "Callable[[Path, list[Sample], list[AnswerRecord], Path], Answers] | None" = None


def read_json(path: Path) -> Any:
    """A JSON file's content.

    Raises:
        DatasetError: missing file, or not JSON (with the line and column).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}).") from None


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The objects of a JSON Lines file with their 1-based line numbers; blank lines are skipped.

    Raises:
        DatasetError: missing file, or a line that is not a JSON object (file and line named).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found.")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}:{number}: not valid JSON ({err.msg}).") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}.")
        records.append((number, record))
    return records


def require_keys(record: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Raise a :class:`DatasetError` naming ``where`` (``file:line``) and the keys ``record`` lacks."""
    missing = [key for key in keys if key not in record]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {', '.join(missing)}.")


def image_file(folder: Path, name: str, where: str) -> Path:
    """``folder / name``, which must be an existing file.

    Raises:
        DatasetError: naming ``where`` (the sample), the missing path and the folder to check.
    """
    path = folder / name
    if not path.is_file():
        raise DatasetError(f"{where}: image {path} not found; check --image-folder ({folder}).")
    return path


OVERALL = "overall"
"""The name of the row over every question."""


def accuracy_table(groups: dict[str, list[bool] | list[float]]) -> pd.DataFrame:
    """One row per group, in the order given: ``accuracy`` (mean outcome, percent) and ``questions``.

    Args:
        groups: row name -> each question's outcome (right/wrong, or a score in 0..1).
    """
    return pd.DataFrame(
        {
            "accuracy": [100 * sum(outcomes) / len(outcomes) for outcomes in groups.values()],
            "questions": [len(outcomes) for outcomes in groups.values()],
        },
        index=list(groups),
    )


def choice_notes(rules: Counter[str], total: int) -> list[str]:
    """Lines saying how many multiple-choice answers named no option (both kinds count as wrong).

    Args:
        rules: how many answers each extraction rule decided (``vltool.eval.extraction.RULES``).
        total: how many answers there were.
    """
    kinds = ("unresolved", "refused")
    return [f"{rules[kind]} of {total} answers {kind} (counted wrong)" for kind in kinds if rules[kind]]
