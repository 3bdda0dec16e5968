"""``vltool eval``: answer a benchmark's questions, write the predictions, score them, report.

Files in the work dir, named ``<model>_<benchmark>``: ``_predictions.jsonl`` (one line per
question: ``key``, ``prompt``, ``images``, ``prediction``), ``_results.csv`` (the benchmark's
table), ``_results.png`` (its bar chart) and ``_cache/`` (answers per question, for resuming).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from vltool.data.images import load_image
from vltool.errors import ConfigError, DatasetError
from vltool.eval.benchmarks import BENCHMARKS
from vltool.eval.benchmarks.answers import match_by_key, read_answer_records
from vltool.eval.benchmarks.base import Benchmark, Sample, Scores
from vltool.eval.predict import PredictionCache, Request, answer_requests, process_rank
from vltool.eval.report import bar_chart, print_table, write_atomically
from vltool.infer.pipeline import GenerationOptions, Pipeline


@dataclass
class EvalFiles:
    """What a run wrote, and the scores."""

    predictions: Path
    results: Path
    chart: Path
    scores: Scores


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``.

    Raises:
        ConfigError: an unknown name; the message lists the known ones.
    """
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}.")
    return BENCHMARKS[name]


def check_rules(benchmark: Benchmark, rules: str | None) -> str:
    """The rule set to score with: ``rules``, or the benchmark's default (its official rules) when None.

    Raises:
        ConfigError: a rule set this benchmark does not have; the message lists the ones it has.
    """
    if rules is None:
        return next(iter(benchmark.rules))
    if rules not in benchmark.rules:
        raise ConfigError(
            f"--rules {rules!r}: {benchmark.name} scores by {', '.join(benchmark.rules)} "
            f"(default {next(iter(benchmark.rules))})."
        )
    return rules


def load_samples(benchmark: Benchmark, data_path: Path, image_folder: Path | None, console: Console) -> list[Sample]:
    """Read a benchmark's questions (every image checked to exist) and say how many there are.

    Raises:
        DatasetError: from the benchmark's reader, naming the file, line or sample; or no questions.
    """
    samples = benchmark.load(data_path, image_folder)
    if not samples:
        raise DatasetError(f"{data_path}: no {benchmark.name} questions found; check --data-path.")
    console.print(f"{benchmark.name}: {len(samples)} questions from {data_path}", markup=False, highlight=False)
    return samples


def run_eval(
    load_model: Callable[[], Pipeline],
    benchmark: Benchmark,
    data_path: Path,
    image_folder: Path | None,
    work_dir: Path,
    model_name: str,
    cache_settings: dict[str, Any],
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    rules: str | None = None,
    console: Console | None = None,
) -> EvalFiles | None:
    """Answer every question greedily (resuming from the cache), then write predictions and results.

    The questions are read and checked before the model loads. Under torchrun every process
    answers its share; only rank 0 writes (the others return None).

    Args:
        load_model: loads the model.
        benchmark: which benchmark.
        data_path: its question/annotation file or folder.
        image_folder: where its images are (None: the benchmark's default).
        work_dir: where the files go.
        model_name: the files' name prefix.
        cache_settings: what the answers depend on besides the prompts (the model, its template).
        batch_size: prompts per ``generate`` call.
        max_new_tokens: the longest answer (None: the benchmark's default).
        rules: the rule set to score with (None: the benchmark's official rules).
        console: where progress and results go (default: stderr).
    """
    console = console or Console(stderr=True)
    rules = check_rules(benchmark, rules)
    samples = load_samples(benchmark, data_path, image_folder, console)
    max_new_tokens = max_new_tokens or benchmark.max_new_tokens
    stem = f"{model_name}_{benchmark.name}"
    settings = {**cache_settings, "max_new_tokens": max_new_tokens}
    cache = PredictionCache(work_dir / f"{stem}_cache", settings)
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    answers = answer_requests(load_model(), [_request(s) for s in samples], cache, options, batch_size, console)
    if process_rank()[0] != 0:
        return None
    predictions_file = work_dir / f"{stem}_predictions.jsonl"
    write_atomically(predictions_file, lambda path: _write_predictions(path, samples, answers))
    return report(benchmark, rules, samples, answers, predictions_file, work_dir, stem, console)


def _request(sample: Sample) -> Request:
    def images() -> list:
        return [load_image(path, name=f"sample {sample.key}: {path}") for path in sample.images]

    return Request(sample.key, sample.prompt, images, tuple(str(path) for path in sample.images))


def _write_predictions(path: Path, samples: list[Sample], answers: dict[str, str]) -> None:
    with path.open("w", encoding="utf-8") as file:
        for sample in samples:
            row = {
                "key": sample.key,
                "prompt": sample.prompt,
                "images": [str(p) for p in sample.images],
                "prediction": answers[sample.key],
            }
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def rescore_eval(
    benchmark: Benchmark,
    predictions_path: Path,
    data_path: Path,
    image_folder: Path | None,
    work_dir: Path | None,
    console: Console,
    rules: str | None = None,
) -> EvalFiles:
    """Score a saved answer file without a model: vltool's predictions JSONL or LLaVA's answer file.

    Lines for questions outside the scored subset (LLaVA's files also answer text-only or video
    questions) are counted and ignored.

    Raises:
        ConfigError: a rule set the benchmark does not have.
        DatasetError: unreadable file, lines without an id and an answer, questions without an
            answer or lines that match no question (counted and named).
    """
    rules = check_rules(benchmark, rules)
    samples = load_samples(benchmark, data_path, image_folder, console)
    match = benchmark.match_answers or match_by_key
    answers = match(data_path, samples, read_answer_records(predictions_path), predictions_path)
    if answers.ignored:
        console.print(
            f"{predictions_path}: {answers.ignored} answer(s) to {answers.ignored_what} ignored",
            markup=False,
            highlight=False,
        )
    stem = predictions_path.stem.removesuffix("_predictions")
    work_dir = work_dir or predictions_path.parent
    return report(benchmark, rules, samples, answers.texts, predictions_path, work_dir, stem, console)


def report(
    benchmark: Benchmark,
    rules: str,
    samples: list[Sample],
    answers: dict[str, str],
    predictions_file: Path,
    work_dir: Path,
    stem: str,
    console: Console,
) -> EvalFiles:
    """Score, write the results CSV and chart, and print the rule set, table, notes and headline figures."""
    scores = benchmark.score(samples, answers, rules)
    results, chart = work_dir / f"{stem}_results.csv", work_dir / f"{stem}_results.png"
    write_atomically(results, lambda path: scores.table.to_csv(path, index_label="name"))
    maximum = 100 if "%" in scores.chart_label else None
    bar_chart(chart, {benchmark.name: scores.chart}, scores.chart_label, f"{benchmark.name}: {stem}", maximum)
    console.print(f"scoring rules: {rules} ({benchmark.rules[rules]})", markup=False, highlight=False)
    print_table(console, scores.table, f"{benchmark.name} ({len(samples)} questions)")
    for note in scores.notes:
        console.print(note, markup=False, highlight=False)
    console.print("  ".join(f"[bold]{name}[/]: {value:.2f}" for name, value in scores.summary.items()))
    console.print(f"predictions: {predictions_file}\nresults: {results}, chart: {chart}", markup=False, highlight=False)
    return EvalFiles(predictions_file, results, chart, scores)
