"""Reading a saved answer file for ``vltool eval --predictions``: vltool's own or LLaVA's.

vltool writes ``<model>_<benchmark>_predictions.jsonl`` with ``key`` and ``prediction`` per line.
LLaVA's ``llava/eval/model_vqa*.py`` scripts write answer files with ``question_id``, ``prompt``
(the question as asked: ``model_vqa_loader.py`` writes the question file's text without ``<image>``,
``model_vqa_science.py`` puts ``<image>`` and a newline in front when there was an image), ``text``
(the answer), ``answer_id``, ``model_id`` and ``metadata``. Their ``question_id`` is not always one id
per question of the official data (MME uses the image path for both its questions, TextVQA the
image id), so each benchmark matches answer lines to its samples itself (``Benchmark.match_answers``);
the default here matches ``key`` or ``question_id`` to the sample key.

An answer file may hold more than the scored questions: LLaVA's ScienceQA file also answers the
text-only questions, its SEED file the video ones. A benchmark counts and ignores such lines
(``ignored``); a line that matches no question of the data at all is an error naming it.
"""

from dataclasses import dataclass
from pathlib import Path

from vltool.errors import DatasetError
from vltool.eval.benchmarks.base import Sample, read_jsonl


@dataclass(frozen=True)
class AnswerRecord:
    """One line of an answer file.

    Attributes:
        line: its 1-based line number.
        id: ``key`` (vltool) or ``question_id`` (LLaVA), as a string.
        text: the answer: ``prediction`` (vltool) or ``text`` (LLaVA).
        prompt: LLaVA's ``prompt`` (the question as asked), or None.
    """

    line: int
    id: str
    text: str
    prompt: str | None = None


@dataclass(frozen=True)
class Answers:
    """An answer file matched to a benchmark's samples.

    Attributes:
        texts: sample key -> answer, for every sample.
        ignored: answer lines for questions outside the scored subset (text-only, video ...).
        ignored_what: what those lines were, for the report ("text-only questions").
    """

    texts: dict[str, str]
    ignored: int = 0
    ignored_what: str = "questions outside the scored subset"


def read_answer_records(path: Path) -> list[AnswerRecord]:
    """The lines of a vltool predictions file or a LLaVA answer file.

    Raises:
        DatasetError: unreadable file, or a line without an id and an answer (file and line named).
    """
    records = []
    for number, record in read_jsonl(path):
        key = record.get("key", record.get("question_id"))
        text = record.get("prediction", record.get("text"))
        if key is None or text is None:
            raise DatasetError(f"{path}:{number}: needs key and prediction (or LLaVA's question_id and text).")
        prompt = record.get("prompt")
        records.append(AnswerRecord(number, str(key), str(text), prompt if isinstance(prompt, str) else None))
    return records


def match_by_key(data_path: Path, samples: list[Sample], records: list[AnswerRecord], path: Path) -> Answers:
    """Match each line to the sample whose key is its id (the default ``Benchmark.match_answers``).

    Args:
        data_path: the benchmark's ``--data-path`` (unused here; benchmarks that must tell ignored
            lines from wrong ones read it).
        samples: the scored questions.
        records: the answer file's lines.
        path: the answer file, for messages.

    Raises:
        DatasetError: a question without an answer, a line matching no question, or one answered twice.
    """
    keys = {sample.key for sample in samples}
    texts: dict[str, str] = {}
    unmatched = []
    for record in records:
        if record.id not in keys:
            unmatched.append(record.id)
            continue
        store_answer(texts, record.id, record, path)
    return check_coverage(path, samples, texts, unmatched)


def store_answer(texts: dict[str, str], key: str, record: AnswerRecord, path: Path) -> None:
    """``texts[key] = record.text``; a second answer to the same question is an error naming both lines."""
    if key in texts:
        raise DatasetError(f"{path}:{record.line}: question {key} is answered twice; keep one answer per question.")
    texts[key] = record.text


def check_coverage(
    path: Path, samples: list[Sample], texts: dict[str, str], unmatched: list[str], ignored: int = 0, what: str = ""
) -> Answers:
    """The matched answers, or an error counting and naming the unanswered questions and the unmatched ids.

    Args:
        path: the answer file.
        samples: the scored questions.
        texts: sample key -> answer, as matched.
        unmatched: ids of lines that match no question of the data.
        ignored: lines for questions outside the scored subset.
        what: what those lines were (default: "questions outside the scored subset").
    """
    missing = [sample.key for sample in samples if sample.key not in texts]
    if missing or unmatched:
        parts = [f"{len(missing)} question(s) have no prediction ({_few(missing)})"] if missing else []
        parts += [f"{len(unmatched)} prediction(s) match no question ({_few(unmatched)})"] if unmatched else []
        raise DatasetError(f"{path}: {'; '.join(parts)}; score it against the data it was made from.")
    return Answers(texts, ignored, what or Answers.ignored_what)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
