"""Run :class:`~vltool.data.prepare.ChunkPreparer` over a whole file on every core, in file order.

One process reads the file (:class:`~vltool.data.json_stream.RecordReader`) and hands chunks
of records to ``num_proc`` worker processes; results come back in file order. At most two
chunks per worker are in flight, so memory stays flat however large the file is (a plain
``Pool.imap`` would read the whole file into its task queue). Workers are spawned, not
forked: the parent may hold CUDA, a process group and tokenizer threads, none of which
survive a fork reliably.
"""

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from itertools import islice
from multiprocessing.pool import AsyncResult

from mmengine.logging import print_log
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vltool.data.json_stream import RecordReader
from vltool.data.prepare import Chunk, ChunkPreparer, PrepareSettings, default_num_proc

CHUNK_RECORDS = 1024
"""Records per chunk: large enough for the batch tokenizer, small enough to spread the work."""
IN_PROCESS_BELOW_BYTES = 8 << 20
"""Files smaller than this are prepared in this process when ``num_proc`` is not given (no start-up cost)."""

_worker: ChunkPreparer | None = None


def _start_worker(settings: PrepareSettings) -> None:
    global _worker
    # one worker per core already; the tokenizer's own thread pool would only compete with them
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker = ChunkPreparer(settings)


def _run_worker(records: list) -> Chunk:
    return _worker(records)


def _chunks(reader: RecordReader) -> Iterator[list]:
    records = iter(reader)
    while chunk := list(islice(records, CHUNK_RECORDS)):
        yield chunk


def prepare_chunks(
    settings: PrepareSettings, num_proc: int | None = None, description: str = "tokenising"
) -> Iterator[Chunk]:
    """Prepare every record of ``settings.data_path``, chunk by chunk, in file order.

    Args:
        settings: what to do with each record.
        num_proc: worker processes; default every core (one process for small files).
        description: the progress bar's label.

    Raises:
        DatasetError: the file cannot be read, or (unless listing problems) the first bad record.
    """
    reader = RecordReader(settings.data_path)
    if num_proc is None:
        num_proc = 1 if reader.size < IN_PROCESS_BELOW_BYTES else default_num_proc()
    if num_proc <= 1:
        preparer = ChunkPreparer(settings)
        with _Progress(description, reader) as progress:
            for records in _chunks(reader):
                yield progress.done(preparer(records))
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(num_proc, initializer=_start_worker, initargs=(settings,)) as pool:
        with _Progress(description, reader) as progress:
            pending: deque[AsyncResult] = deque()
            for records in _chunks(reader):
                pending.append(pool.apply_async(_run_worker, (records,)))
                while len(pending) >= 2 * num_proc or (pending and pending[0].ready()):
                    yield progress.done(pending.popleft().get())
            while pending:
                yield progress.done(pending.popleft().get())


class _Progress:
    """Progress over the file's bytes with the samples done and an ETA.

    A live bar in a terminal; elsewhere (a Slurm log, CI) rich draws nothing until the end,
    so a line is logged every ``LOG_EVERY_S`` seconds instead.
    """

    LOG_EVERY_S = 30.0

    def __init__(self, description: str, reader: RecordReader) -> None:
        console = Console(stderr=True)
        self.live = console.is_terminal
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%  {task.fields[samples]:,} samples"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
        )
        self.task = self.bar.add_task(description, total=reader.size or 1, samples=0)
        self.reader = reader
        self.samples = 0
        self.logged_at = time.monotonic()

    def __enter__(self) -> "_Progress":
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not any(exc):
            self.bar.update(self.task, completed=self.reader.size)
        self.bar.stop()

    def done(self, chunk: Chunk) -> Chunk:
        """Count ``chunk`` as done and pass it on."""
        self.samples += chunk.num_records
        self.bar.update(self.task, completed=self.reader.bytes_read, samples=self.samples)
        if not self.live and time.monotonic() - self.logged_at >= self.LOG_EVERY_S:
            self.logged_at = time.monotonic()
            task = self.bar.tasks[self.task]
            eta = f", about {task.time_remaining:.0f} s left" if task.time_remaining is not None else ""
            print_log(f"{task.description}: {task.percentage:.0f}%, {self.samples:,} samples{eta}", logger="current")
        return chunk
