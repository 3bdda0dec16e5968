"""Answering a benchmark's prompts: batched greedy generation, a per-row cache, rows shared by processes.

Every answered batch is appended to a JSON Lines cache before the next batch starts, so a run
that is killed (or fails on a bad image) resumes where it stopped. Under torchrun
(``NPROC_PER_NODE=N vltool mmbench ...``) each process answers every N-th row and the answers are
gathered back to every process, keyed by row, so the result does not depend on how many
processes ran.
"""

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vltool.errors import AnswerError, ConfigError
from vltool.infer.pipeline import GenerationOptions, Pipeline
from vltool.templates.message import Message


@dataclass(frozen=True)
class Request:
    """One prompt to answer.

    Attributes:
        key: the row's unique id (an MMBench index, a benchmark's question id).
        text: the user message, with one ``<image>`` marker per image.
        images: decodes the row's images, in marker order; called only when its batch runs.
        image_ids: what identifies those images (paths, or a hash of embedded image data); a
            cached answer is reused only while the text and these stay the same.
    """

    key: str
    text: str
    images: Callable[[], list[Image.Image]]
    image_ids: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """A short hash of the prompt and its images."""
        return hashlib.sha1("\x00".join((self.text, *self.image_ids)).encode()).hexdigest()[:16]


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PredictionCache:
    """Answers already generated, in ``rank<R>.jsonl`` files of one folder, plus the settings they were made with.

    Every process appends to its own file and reads all of them, so a run resumed with another
    number of processes still finds every cached answer. A line cut short by a kill is ignored.

    Args:
        folder: where the cache lives (created).
        settings: what the answers depend on besides the prompt (model, template, answer length);
            a folder made with other settings is refused rather than mixed.

    Raises:
        ConfigError: the folder holds answers made with other settings.
    """

    SETTINGS_FILE = "settings.json"

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        settings_file = folder / self.SETTINGS_FILE
        if settings_file.is_file():
            saved = json.loads(settings_file.read_text())
            changed = [name for name in sorted(set(saved) | set(settings)) if saved.get(name) != settings.get(name)]
            if changed:
                name = changed[0]
                raise ConfigError(
                    f"{folder}: cached answers were made with {name}={saved.get(name)!r}, this run has "
                    f"{settings.get(name)!r}; use another --work-dir, or delete the folder to start over."
                )
        elif process_rank()[0] == 0:
            settings_file.write_text(json.dumps(settings, indent=1))

    def load(self) -> dict[str, tuple[str, str]]:
        """``key -> (prompt digest, answer)`` from every process's file."""
        cached = {}
        for path in sorted(self.folder.glob("rank*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed run may be cut short
                    continue
                cached[row["key"]] = (row["digest"], row["prediction"])
        return cached

    def append(self, answered: list[tuple[Request, str]]) -> None:
        """Add a batch of answers to this process's file and flush it to disk."""
        path = self.folder / f"rank{process_rank()[0]}.jsonl"
        with path.open("a", encoding="utf-8") as file:
            for request, prediction in answered:
                row = {"key": request.key, "digest": request.digest, "prediction": prediction}
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())


def answer_requests(
    pipeline: Pipeline,
    requests: list[Request],
    cache: PredictionCache,
    options: GenerationOptions,
    batch_size: int,
    console: Console | None = None,
) -> dict[str, str]:
    """Answer every request greedily in batches, reusing cached answers; every process gets all answers.

    Args:
        pipeline: the model to ask.
        requests: all rows of the run (every process passes the same list).
        cache: the prediction cache; each new batch is appended before the next one starts.
        options: decoding options.
        batch_size: prompts per ``generate`` call.
        console: where rank 0 shows progress (None: no progress bar).

    Returns:
        ``key -> answer`` for every request.
    """
    rank, world = process_rank()
    cached = cache.load()
    mine = requests[rank::world]
    done = {r.key: cached[r.key][1] for r in mine if r.key in cached and cached[r.key][0] == r.digest}
    # similar lengths in one batch: less padding; the longest batch first, so memory errors come early
    pending = sorted((r for r in mine if r.key not in done), key=lambda r: len(r.text), reverse=True)
    with _progress(console if rank == 0 else None, len(mine), len(done)) as advance:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            conversations = [[Message("user", request.text)] for request in batch]
            try:
                answers = pipeline.answer(conversations, [request.images() for request in batch], options)
            except AnswerError as err:
                raise ConfigError(f"row {batch[err.position].key}: {err}") from None
            cache.append(list(zip(batch, answers, strict=True)))
            done.update((request.key, answer) for request, answer in zip(batch, answers, strict=True))
            advance(len(batch))
    return _gathered(done, world)


def _gathered(local: dict[str, str], world: int) -> dict[str, str]:
    """Every process's answers, merged (a collective: every process must call it)."""
    if world == 1:
        return local
    parts: list[dict[str, str] | None] = [None] * world
    dist.all_gather_object(parts, local)
    return {key: answer for part in parts for key, answer in (part or {}).items()}


class _progress:
    """A progress bar over this process's rows on a terminal (else a no-op); yields ``advance(n)``."""

    def __init__(self, console: Console | None, total: int, completed: int) -> None:
        self.bar = None
        if console is not None and console.is_terminal and total > completed:  # no bar in log files
            columns = (TextColumn("answering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar = Progress(*columns, console=console, transient=True)
            self.task = self.bar.add_task("answering", total=total, completed=completed)

    def __enter__(self) -> Callable[[int], None]:
        if self.bar is None:
            return lambda n: None
        self.bar.start()
        return lambda n: self.bar.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
