"""``vltool mmbench``: answer an MMBench-layout TSV, score it as VLMEvalKit does, write the leaderboard files.

Files in the work dir, named ``<model>_<tsv name>``:

- ``.xlsx``: every question (all passes) without the image, with ``prediction``, the extracted
  ``choice``, the extraction ``rule`` and, on dev splits, ``hit``; always written.
- dev splits: ``_acc.csv`` (VLMEvalKit's report layout: CircularEval accuracy, fractions),
  ``_vanilla_acc.csv`` (pass 0 alone) and ``_acc.png`` (accuracy per category).
- test splits: ``_submission.xlsx``: every TSV row except the image, plus ``prediction``.
- ``_cache/``: answers per row, so a killed run resumes without answering again.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from rich.console import Console

from vltool.errors import DatasetError
from vltool.eval.circular import OFFSET, add_passes, check_groups, group_index, has_passes
from vltool.eval.extraction import RULES
from vltool.eval.mmbench_data import MMBenchTable, is_empty, options_of, read_mmbench_tsv
from vltool.eval.mmbench_score import ScoredRows, accuracy_report, display_table, score_rows
from vltool.eval.predict import PredictionCache, Request, answer_requests, process_rank
from vltool.eval.report import bar_chart, print_table, write_atomically
from vltool.infer.pipeline import GenerationOptions, Pipeline
from vltool.templates.message import Message
from vltool.templates.multiple_choice import build_prompt

if TYPE_CHECKING:  # the judge's HTTP client loads only for runs that have one
    from vltool.eval.judge import Judge

SUBMISSION_URL = "https://mmbench.opencompass.org.cn/mmbench-submission"


@dataclass
class MMBenchFiles:
    """What a run wrote; absent files are None (dev splits have no submission, test splits no scores)."""

    predictions: Path
    accuracy: Path | None = None
    vanilla_accuracy: Path | None = None
    chart: Path | None = None
    submission: Path | None = None
    scored: ScoredRows | None = None


def load_questions(data_path: str | Path, circular: bool, console: Console) -> tuple[MMBenchTable, pd.DataFrame]:
    """Read the TSV and the rows to answer.

    With ``circular``, every pass (built here when the file has originals only); without it, pass 0 alone.

    Raises:
        DatasetError: bad TSV (see :func:`read_mmbench_tsv`), or a rotated pass without its original.
    """
    table = read_mmbench_tsv(data_path)
    questions = int((table.rows["index"] < OFFSET).sum())
    in_file = has_passes(table.rows)
    rows = question_rows(table, circular)
    source = "from the file" if in_file else "built here"
    mode = f"CircularEval: {len(rows)} passes, {source}" if circular else "vanilla: pass 0 only"
    console.print(f"{table.path.name}: {questions} questions ({mode})", highlight=False)
    return table, rows


def question_rows(table: MMBenchTable, circular: bool) -> pd.DataFrame:
    """The rows to answer: every pass with ``circular`` (built here when the file has originals only), else pass 0.

    Raises:
        DatasetError: a rotated pass in the file without its original.
    """
    rows = table.rows
    if has_passes(rows):
        check_groups(rows, str(table.path))
        return rows if circular else rows[rows["index"] < OFFSET].reset_index(drop=True)
    return add_passes(rows) if circular else rows


def mmbench_requests(table: MMBenchTable, rows: pd.DataFrame) -> list[Request]:
    """One prompt per row: the image, hint, question, options and the answer-with-a-letter instruction."""
    requests = []
    for _, row in rows.iterrows():
        hint = row.get("hint", "")
        text = build_prompt(row["question"], options_of(row), "" if is_empty(hint) else hint)
        requests.append(Request(str(row["index"]), text, lambda row=row: [table.image(row)], (table.image_id(row),)))
    return requests


def run_mmbench(
    load_model: Callable[[], Pipeline],
    data_path: str | Path,
    work_dir: Path,
    model_name: str,
    cache_settings: dict[str, Any],
    batch_size: int = 8,
    max_new_tokens: int = 128,
    circular: bool = True,
    console: Console | None = None,
    judge: "Judge | None" = None,
) -> MMBenchFiles | None:
    """Answer every question greedily (resuming from the cache), score and write the files.

    The TSV is read and checked before the model loads. Under torchrun every process answers its
    share; only rank 0 scores and writes (the others return None).

    Args:
        load_model: loads the model.
        data_path: the MMBench TSV.
        work_dir: where the files go.
        model_name: the files' name prefix.
        cache_settings: what the answers depend on besides the prompts (the model, its template).
        batch_size: prompts per ``generate`` call.
        max_new_tokens: the longest answer.
        circular: CircularEval (all passes) or vanilla (pass 0 only).
        console: where progress and results go (default: stderr).
        judge: an LLM judge for the answers exact matching cannot read (None: they count as wrong).
    """
    console = console or Console(stderr=True)
    table, rows = load_questions(data_path, circular, console)
    stem = f"{model_name}_{table.path.stem}"
    settings = {**cache_settings, "max_new_tokens": max_new_tokens}
    cache = PredictionCache(work_dir / f"{stem}_cache", settings)
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    requests = mmbench_requests(table, rows)
    answers = answer_requests(load_model(), requests, cache, options, batch_size, console)
    if process_rank()[0] != 0:
        return None
    predictions = {int(key): answer for key, answer in answers.items()}
    return write_results(table, rows, predictions, work_dir, stem, circular, console, judge=judge)


def rescore_mmbench(
    predictions_path: Path,
    data_path: str | Path,
    work_dir: Path | None,
    circular: bool,
    console: Console,
    judge: "Judge | None" = None,
) -> MMBenchFiles:
    """Score a saved predictions file (``index`` and ``prediction`` columns; xlsx, csv or tsv) against the TSV.

    The file itself is never rewritten: the scored rows go to ``<its name>_scored.xlsx``. With a
    ``judge``, the answers exact matching cannot read go to it.

    Raises:
        DatasetError: the file cannot be read, lacks those columns, or its indices differ from the TSV's.
    """
    table, rows = load_questions(data_path, circular, console)
    predictions = read_predictions(predictions_path, set(rows["index"]), circular, table.path)
    work_dir = work_dir or predictions_path.parent
    stem = predictions_path.stem
    return write_results(table, rows, predictions, work_dir, stem, circular, console, "_scored", judge)


def read_predictions(path: Path, expected: set[int], circular: bool, tsv: Path) -> dict[int, str]:
    """``index -> prediction`` from a predictions file, which must hold exactly the expected indices."""
    frame = _read_table(path)
    missing_columns = [c for c in ("index", "prediction") if c not in frame.columns]
    if missing_columns:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing_columns)}; it needs index and prediction.")
    try:
        indices = [int(float(i)) for i in frame["index"]]
    except ValueError as err:
        raise DatasetError(f"{path}: column index holds a non-integer ({err}).") from None
    texts = ["" if pd.isna(t) else str(t) for t in frame["prediction"]]
    predictions = dict(zip(indices, texts, strict=True))
    missing, extra = sorted(expected - set(predictions)), sorted(set(predictions) - expected)
    if missing or extra:
        parts = [f"{len(missing)} question(s) of {tsv.name} have no prediction ({_few(missing)})"] if missing else []
        parts += [f"{len(extra)} prediction(s) are not in {tsv.name} ({_few(extra)})"] if extra else []
        advice = "score it against the TSV it was made from"
        if circular and all(i >= OFFSET for i in missing) and not extra:
            advice += ", or add --no-circular for vanilla accuracy on pass 0"
        raise DatasetError(f"{path}: {'; '.join(parts)}; {advice}.")
    return predictions


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: predictions file not found.")
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm"):
            return pd.read_excel(path, engine="openpyxl")
        return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except Exception as err:  # openpyxl and pandas raise many kinds for a damaged file
        raise DatasetError(f"{path}: cannot read it as {path.suffix or 'a table'} ({err}).") from None


def _few(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:5])) + (", ..." if len(indices) > 5 else "")


def write_results(
    table: MMBenchTable,
    rows: pd.DataFrame,
    predictions: dict[int, str],
    work_dir: Path,
    stem: str,
    circular: bool,
    console: Console,
    scored_suffix: str = "",
    judge: "Judge | None" = None,
) -> MMBenchFiles:
    """Score (dev) or prepare the submission (test), write every file and print the results.

    The scored rows go to ``<stem><scored_suffix>.xlsx``; the other files are ``<stem>_acc.csv`` ...
    With a ``judge``, the answers exact matching cannot read go to it (the ``rule`` column says so);
    its verdicts are kept in ``<stem>_judge.jsonl`` and reused by the next run.
    """
    judge = judge.cached_in(work_dir / f"{stem}_judge.jsonl") if judge is not None else None
    scored = score_rows(rows, predictions, table.has_answers, circular, judge)
    files = MMBenchFiles(work_dir / f"{stem}{scored_suffix}.xlsx", scored=scored)
    _write_xlsx(files.predictions, scored.rows.drop(columns="image_index"))
    _print_extraction(scored, console, judge)
    if table.has_answers:
        _write_scores(scored, files, work_dir, stem, table.path.name, console)
    else:
        files.submission = work_dir / f"{stem}_submission.xlsx"
        columns = [c for c in rows.columns if c != "image_index"] + ["prediction"]
        _write_xlsx(files.submission, scored.rows[columns])
        console.print(f"test split (no answers): submit {files.submission} at {SUBMISSION_URL}", highlight=False)
    console.print(f"predictions: {files.predictions}", highlight=False)
    return files


def _write_scores(
    scored: ScoredRows, files: MMBenchFiles, work_dir: Path, stem: str, title: str, console: Console
) -> None:
    originals = scored.originals
    files.accuracy = work_dir / f"{stem}_acc.csv"
    write_atomically(files.accuracy, lambda p: accuracy_report(originals).to_csv(p, index=False))
    if scored.circular:
        files.vanilla_accuracy = work_dir / f"{stem}_vanilla_acc.csv"
        vanilla = accuracy_report(originals, "vanilla_hit")
        write_atomically(files.vanilla_accuracy, lambda p: vanilla.to_csv(p, index=False))
    shown = display_table(scored)
    mode = "CircularEval" if scored.circular else "vanilla"
    print_table(console, shown, f"{title}: accuracy (%), {mode}", first_column="")
    if "category" in originals:
        files.chart = work_dir / f"{stem}_acc.png"
        hits = {"circular": "hit", "vanilla": "vanilla_hit"} if scored.circular else {"vanilla": "hit"}
        series = {name: (originals.groupby("category")[hit].mean() * 100).to_dict() for name, hit in hits.items()}
        overall = originals["hit"].mean() * 100
        title = f"{title}: {overall:.1f}% overall ({mode})"
        bar_chart(files.chart, series, "accuracy (%)", title, maximum=100)
    console.print(f"accuracy: {files.accuracy}" + (f", chart: {files.chart}" if files.chart else ""), highlight=False)


def _print_extraction(scored: ScoredRows, console: Console, judge: "Judge | None" = None) -> None:
    counts = scored.rule_counts()
    if judge is None:
        unresolved = counts["unresolved"] + counts["refused"]
        by_rule = ", ".join(f"{rule} {counts[rule]}" for rule in RULES if counts[rule])
        console.print(
            f"answer extraction: exact matching, VLMEvalKit's rules (no LLM judge); {unresolved} of "
            f"{sum(counts.values())} answers unresolved ({counts['refused']} refused), counted wrong. "
            f"By rule: {by_rule}.",
            highlight=False,
        )
        return
    from vltool.eval.judge import JUDGE_RULES

    judged = sum(counts[rule] for rule in JUDGE_RULES)
    no_option = int(scored.rows["choice"].eq("").sum())  # refusals, "Z" verdicts and random "Z" picks
    by_rule = ", ".join(f"{rule} {counts[rule]}" for rule in (*RULES, *JUDGE_RULES) if counts[rule])
    reused = f" {judge.reused} verdict(s) reused from {judge.cache.path}." if judge.reused and judge.cache else ""
    console.print(
        f"answer extraction: exact matching, VLMEvalKit's rules, then the LLM judge {judge.name} for the {judged} "
        f"answers they left unresolved; {no_option} of {sum(counts.values())} answers pick no option, counted wrong. "
        f"By rule: {by_rule}.{reused}",
        highlight=False,
    )


def _write_xlsx(path: Path, frame: pd.DataFrame) -> None:
    """Write a table as xlsx; characters Excel cannot store (control codes in answers) are dropped."""
    clean = frame.copy()
    for column in clean.columns:
        if clean[column].dtype == object:
            clean[column] = [ILLEGAL_CHARACTERS_RE.sub("", v) if isinstance(v, str) else v for v in clean[column]]
    write_atomically(path, lambda p: clean.to_excel(p, index=False, engine="openpyxl"))


@dataclass
class HeldOutResult:
    """Accuracy of a small MMBench-layout set, for the training hook: CircularEval and vanilla (pass 0).

    Unresolved answers count as wrong. Without CircularEval, :attr:`accuracy` is the vanilla one.
    """

    scored: ScoredRows

    @property
    def questions(self) -> int:
        """Questions scored (each asked once per pass)."""
        return len(self.scored.originals)

    @property
    def passes(self) -> int:
        """Prompts answered: every pass of every question."""
        return len(self.scored.rows)

    @property
    def accuracy(self) -> float:
        """The headline: with CircularEval, the fraction of questions right on every pass; else vanilla."""
        return float(self.scored.originals["hit"].mean())

    @property
    def vanilla_accuracy(self) -> float:
        """The fraction of questions right on pass 0 (the options in the file's order)."""
        return float(self.scored.originals["vanilla_hit"].mean())

    @property
    def chance(self) -> float:
        """Expected vanilla accuracy of guessing uniformly."""
        originals = self.scored.originals
        return float(sum(1 / len(options_of(row)) for _, row in originals.iterrows()) / len(originals))

    @property
    def circular_chance(self) -> float:
        """Expected headline accuracy of guessing uniformly on every pass (the vanilla chance without CircularEval)."""
        passes = self.scored.rows["index"].map(group_index).value_counts()
        originals = self.scored.originals
        guesses = [len(options_of(row)) ** -int(passes[row["index"]]) for _, row in originals.iterrows()]
        return float(sum(guesses) / len(guesses))

    def per_category(self, vanilla: bool = False) -> dict[str, float]:
        """Headline (or vanilla) accuracy of each category."""
        originals = self.scored.originals
        if "category" not in originals:
            return {}
        hits = originals.groupby("category")["vanilla_hit" if vanilla else "hit"].mean()
        return {str(k): float(v) for k, v in hits.items()}

    def to_dict(self) -> dict[str, object]:
        """Summary for JSON."""
        vanilla = self.per_category(vanilla=True)
        return {
            "accuracy": self.accuracy,
            "mode": "circular" if self.scored.circular else "vanilla",
            "vanilla_accuracy": self.vanilla_accuracy,
            "chance": self.chance,
            "circular_chance": self.circular_chance,
            "questions": self.questions,
            "passes": self.passes,
            "unresolved": int(self.scored.rows["choice"].eq("").sum()),
            "per_category": self.per_category(),
            "per_category_vanilla": vanilla,
        }


def heldout_accuracy(
    pipeline: Pipeline, data_path: str | Path, batch_size: int = 32, max_new_tokens: int = 8, circular: bool = True
) -> HeldOutResult:
    """Answer a TSV with answers greedily, in memory (no cache, no files), and score it.

    With ``circular``, every question is asked once per rotation of its options (the passes are
    built here unless the file has them, as ``vltool mmbench`` does) and scored by CircularEval
    next to vanilla; without it, pass 0 alone. Every caller answers every prompt in the same
    batches, which ZeRO-3 needs: all ranks must run each forward pass together.

    Raises:
        DatasetError: a bad TSV, or one without answers.
    """
    table = read_mmbench_tsv(data_path)
    if not table.has_answers:
        raise DatasetError(f"{table.path}: has no answers to score held-out accuracy with.")
    rows = question_rows(table, circular)
    requests = mmbench_requests(table, rows)
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    predictions = {}
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        conversations = [[Message("user", request.text)] for request in batch]
        answers = pipeline.answer(conversations, [request.images() for request in batch], options)
        predictions.update((int(request.key), answer) for request, answer in zip(batch, answers, strict=True))
    return HeldOutResult(score_rows(rows, predictions, has_answers=True, circular=circular))
