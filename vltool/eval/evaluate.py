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
from vltool.eval.benchmarks.base import Benchmark, Sample, Scores, read_jsonl
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


def load_samples(benchmark: Benchmark, data_path: Path, image_folder: Path | None, console: Console) -> list[Sample]:
    """Read a benchmark's questions (every image checked to exist) and say how many there are.

    Raises:
        DatasetError: from the benchmark's reader, naming the file, line or sample; or no questions.
    """
    samples = benchmark.load(data_path, image_folder)
    if not samples:
        raise DatasetError(f"{data_path}: no {benchmark.name} questions found; check --data-path.")
    console.print(f"{benchmark.name}: {len(samples)} questions from {data_path}", highlight=False)
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
        console: where progress and results go (default: stderr).
    """
    console = console or Console(stderr=True)
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
    return report(benchmark, samples, answers, predictions_file, work_dir, stem, console)


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
) -> EvalFiles:
    """Score a saved predictions file (JSON Lines with ``key`` and ``prediction``) without a model.

    Raises:
        DatasetError: unreadable file, lines without those keys, or keys that differ from the benchmark's.
    """
    samples = load_samples(benchmark, data_path, image_folder, console)
    answers = read_predictions(predictions_path, {s.key for s in samples})
    stem = predictions_path.stem.removesuffix("_predictions")
    return report(benchmark, samples, answers, predictions_path, work_dir or predictions_path.parent, stem, console)


def read_predictions(path: Path, expected: set[str]) -> dict[str, str]:
    """``key -> prediction`` from a predictions JSONL, which must cover exactly the expected keys.

    LLaVA's answer files (``question_id`` and ``text``) are read too.
    """
    answers = {}
    for number, record in read_jsonl(path):
        key = record.get("key", record.get("question_id"))
        text = record.get("prediction", record.get("text"))
        if key is None or text is None:
            raise DatasetError(f"{path}:{number}: needs key and prediction (or LLaVA's question_id and text).")
        answers[str(key)] = str(text)
    missing, extra = sorted(expected - set(answers)), sorted(set(answers) - expected)
    if missing or extra:
        parts = [f"{len(missing)} question(s) have no prediction ({_few(missing)})"] if missing else []
        parts += [f"{len(extra)} prediction(s) match no question ({_few(extra)})"] if extra else []
        raise DatasetError(f"{path}: {'; '.join(parts)}; score it against the data it was made from.")
    return answers


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")


def report(
    benchmark: Benchmark,
    samples: list[Sample],
    answers: dict[str, str],
    predictions_file: Path,
    work_dir: Path,
    stem: str,
    console: Console,
) -> EvalFiles:
    """Score, write the results CSV and chart, and print the table, notes and headline figures."""
    scores = benchmark.score(samples, answers)
    results, chart = work_dir / f"{stem}_results.csv", work_dir / f"{stem}_results.png"
    write_atomically(results, lambda path: scores.table.to_csv(path, index_label="name"))
    maximum = 100 if "%" in scores.chart_label else None
    bar_chart(chart, {benchmark.name: scores.chart}, scores.chart_label, f"{benchmark.name}: {stem}", maximum)
    print_table(console, scores.table, f"{benchmark.name} ({len(samples)} questions)")
    for note in scores.notes:
        console.print(note, highlight=False)
    console.print("  ".join(f"[bold]{name}[/]: {value:.2f}" for name, value in scores.summary.items()))
    console.print(f"predictions: {predictions_file}\nresults: {results}, chart: {chart}", highlight=False)
    return EvalFiles(predictions_file, results, chart, scores)
