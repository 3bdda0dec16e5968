"""The engine: one thread owns the model and answers queued requests one by one (or in small batches).

PyTorch modules are not safe to drive from several threads at once, and a model answering two
prompts at once only shares its time between them, so one thread generates and the web server
only queues. The queue is bounded: a full queue refuses at once (503) rather than letting
latency grow without limit. A request whose client went away, or whose time ran out, sets its
``cancelled`` flag, which a stopping criterion polls after every token, so the model stops
spending time on an answer nobody reads.

Answers: a lone request goes through :class:`vltool.infer.session.ChatSession`, the streamed,
cache-reusing path of ``vltool chat``: the engine keeps one session whose cached token ids are the
last request's prompt and answer, so the next turn of that chat (whose history starts with
them) feeds the model only its new tokens. Images are compared by content, so a request with a
different picture at the same place never reuses another's visual tokens.

With ``max_batch_size > 1`` queued requests with identical decoding options are answered in one
left-padded batch. That is faster per request but not bit-identical to answering alone: padding
changes the shapes of the matrix products, and with them the last bits of the logits, so a
greedy answer can take another token where two candidates are nearly tied. Hence the default of 1,
where every client gets exactly the answer it would get alone.
"""

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList, set_seed

from vltool.infer.pipeline import GenerationOptions, Pipeline
from vltool.infer.session import AnswerStreamer, ChatImage, ChatSession
from vltool.serve.protocol import APIError

logger = logging.getLogger("vltool.serve")


@dataclass(frozen=True)
class Decoding:
    """How one request decodes; requests batch together only when these are equal."""

    options: GenerationOptions
    seed: int | None
    stop: tuple[str, ...]


@dataclass
class Result:
    """A finished answer."""

    text: str
    completion_tokens: int
    finish_reason: str


@dataclass
class Job:
    """One request in the engine.

    Attributes:
        request_id: the response id, also in the log lines.
        prompt_ids: the rendered prompt's token ids (``prompt_tokens`` of the usage).
        conversation: the messages, system first when given, ending with the user turn answered.
        images: the conversation's images in marker order.
        image_keys: a content digest per image (cache reuse compares them).
        decoding: the decoding options.
        emit: called from the engine thread with ``("text", str)``, ``("done", Result)`` or ``("error", APIError)``.
        cancelled: set when nobody waits for the answer any more.
    """

    request_id: str
    prompt_ids: list[int]
    conversation: list[Any]
    images: list[Image.Image]
    image_keys: tuple[str, ...]
    decoding: Decoding
    emit: Callable[[tuple[str, Any]], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting requests."""


class Engine:
    """The model's only user: a thread taking jobs from a bounded queue."""

    def __init__(self, pipeline: Pipeline, max_queue: int, max_batch_size: int = 1) -> None:
        self.pipeline = pipeline
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self._waiting: deque[Job] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._session = ChatSession(pipeline)
        self._session_image_keys: tuple[str, ...] = ()
        self._thread = threading.Thread(target=self._run, name="vltool-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the current answer, drop the waiting ones, end the thread."""
        with self._changed:
            self._stopping = True
            for job in self._waiting:
                job.cancelled.set()
            self._waiting.clear()
            self._changed.notify_all()
        self._thread.join(timeout=30)

    @property
    def waiting(self) -> int:
        """Requests in the queue (not counting the ones being answered)."""
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        """Queue a job.

        Raises:
            QueueFull: the queue is full; the client should retry later.
        """
        with self._changed:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull
            self._waiting.append(job)
            self._changed.notify()

    def _next_batch(self) -> list[Job] | None:
        """The oldest job and up to ``max_batch_size - 1`` later ones that decode the same way."""
        with self._changed:
            while not self._waiting and not self._stopping:
                self._changed.wait()
            if self._stopping:
                return None
            batch = [self._waiting.popleft()]
            for job in list(self._waiting):
                if len(batch) == self.max_batch_size:
                    break
                if job.decoding == batch[0].decoding:
                    self._waiting.remove(job)
                    batch.append(job)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [job for job in batch if not job.cancelled.is_set()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = self._answer_alone(batch[0]) if len(batch) == 1 else self._answer_batch(batch)
            except Exception as err:  # a bug or an out-of-memory must not kill the thread that serves everyone
                logger.exception("generation failed")
                for job in batch:
                    job.emit(("error", APIError(500, f"generation failed: {type(err).__name__}: {err}")))
                self._session.reset()
                self._session_image_keys = ()
                continue
            seconds = time.perf_counter() - started
            for job, result in zip(batch, results, strict=True):
                self._log(job, result, len(batch), seconds)
                job.emit(("done", result))

    def _log(self, job: Job, result: Result, batch: int, seconds: float) -> None:
        limit = job.decoding.options.max_new_tokens
        if job.cancelled.is_set():
            logger.info(
                "%s: stopped after %d of at most %d tokens: the client left or its time ran out",
                job.request_id,
                result.completion_tokens,
                limit,
            )
            return
        logger.info(
            "%s: %d prompt tokens, %d answer tokens (%s) in %.2f s, batch of %d",
            job.request_id,
            len(job.prompt_ids),
            result.completion_tokens,
            result.finish_reason,
            seconds,
            batch,
        )

    def _answer_alone(self, job: Job) -> list[Result]:
        """Answer through the chat session, reusing its KV cache for a shared prefix."""
        session = self._session
        kept = self._session_image_keys
        if job.image_keys[: len(kept)] != kept:  # another conversation's pictures: their visual tokens differ
            session.reset()
        pipeline = _RequestPipeline.of(self.pipeline, job.decoding.stop)
        history = job.conversation[:-1]
        has_system = bool(history) and history[0].role == "system"
        session.pipeline = pipeline
        session.options = job.decoding.options
        session.system = history[0].content if has_system else None
        session.messages = list(history[1:] if has_system else history)
        session.images = [ChatImage("", image) for image in job.images]  # the last turn's images too
        self._session_image_keys = job.image_keys
        if job.decoding.seed is not None:
            set_seed(job.decoding.seed)
        text = session.ask(
            job.conversation[-1].content,
            on_text=lambda piece: job.emit(("text", piece)),
            stop_requested=job.cancelled.is_set,
        )
        stats = session.stats
        if stats is not None and stats.reused_tokens:
            logger.info(
                "%s: %d of %d prompt tokens reused from the cache",
                job.request_id,
                stats.reused_tokens,
                stats.prompt_tokens,
            )
        tokens = stats.answer_tokens if stats is not None else 0
        return [Result(text, tokens, pipeline.finish_reason(tokens, job.decoding.options.max_new_tokens))]

    @torch.no_grad()
    def _answer_batch(self, jobs: list[Job]) -> list[Result]:
        """Answer several jobs in one left-padded ``generate``, streaming each row to its client."""
        decoding = jobs[0].decoding
        pipeline = _RequestPipeline.of(self.pipeline, decoding.stop)
        width = max(len(job.prompt_ids) for job in jobs)
        pad = pipeline.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(job.prompt_ids)) + job.prompt_ids for job in jobs])
        attention_mask = torch.tensor([[0] * (width - len(job.prompt_ids)) + [1] * len(job.prompt_ids) for job in jobs])
        rows = _Rows(pipeline, jobs)
        if decoding.seed is not None:
            set_seed(decoding.seed)
        pipeline.model.eval()
        pipeline.model.generate(
            input_ids.to(pipeline.device),
            attention_mask.to(pipeline.device),
            pipeline.pixel_values([image for job in jobs for image in job.images]),
            stopping_criteria=StoppingCriteriaList([rows]),
            **pipeline.generate_kwargs(decoding.options),
        )
        return rows.results(decoding.options.max_new_tokens)


@dataclass
class _RequestPipeline(Pipeline):
    """The shared pipeline as one request sees it: its ``stop`` strings join the template's stop words.

    Stop words end generation, are held back while streaming and are cut from the answer, all
    by the code that handles the template's own, so a request's ``stop`` behaves exactly like them.
    ``cut`` also remembers whether the raw answer held a stop word, which tells ``stop`` from ``length``.
    """

    stopped_by_word: bool = False

    @classmethod
    def of(cls, pipeline: Pipeline, stop: tuple[str, ...]) -> "_RequestPipeline":
        template = dataclasses.replace(pipeline.template, stop_words=(*pipeline.template.stop_words, *stop))
        return cls(pipeline.model, pipeline.tokenizer, template, pipeline.image_transform)

    def cut(self, text: str) -> str:
        words = (*self.template.stop_words, self.tokenizer.pad_token or "")
        self.stopped_by_word = any(word and word in text for word in words)
        return super().cut(text)

    def finish_reason(self, answer_tokens: int, max_new_tokens: int) -> str:
        """``length`` when the answer used every allowed token without reaching a stop word."""
        return "length" if answer_tokens >= max_new_tokens and not self.stopped_by_word else "stop"


class _Rows(StoppingCriteria):
    """Per-row bookkeeping of a batched ``generate``, called after every step.

    Streams each row's new token to its client, stops a row whose client left (the other rows go
    on), and records each row's tokens up to where it ended.
    """

    def __init__(self, pipeline: _RequestPipeline, jobs: list[Job]) -> None:
        self.pipeline = pipeline
        self.jobs = jobs
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.done = [False] * len(jobs)
        self.stop_ids = set(pipeline.generate_kwargs(jobs[0].decoding.options).get("eos_token_id") or [])
        self.words = (*pipeline.template.stop_words, pipeline.tokenizer.pad_token or "")
        self.streamers = []
        for job in jobs:
            streamer = AnswerStreamer(pipeline, lambda piece, job=job: job.emit(("text", piece)))
            streamer.next_tokens_are_prompt = False
            self.streamers.append(streamer)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if self.done[row]:
                continue
            self.tokens[row].append(token)
            self.streamers[row].put(torch.tensor([token]))
            if self.jobs[row].cancelled.is_set() or token in self.stop_ids or self._ends_with_word(row):
                self.done[row] = True
                self.streamers[row].end()
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _ends_with_word(self, row: int) -> bool:
        """A multi-token stop word just completed (only the tail needs decoding: every token is text)."""
        tail = self.tokens[row][-(max(len(word) for word in self.words) + 2) :]
        text = self.pipeline.tokenizer.decode(tail, skip_special_tokens=False)
        return any(word and word in text for word in self.words)

    def results(self, max_new_tokens: int) -> list[Result]:
        results = []
        for row, tokens in enumerate(self.tokens):
            if not self.done[row]:
                self.streamers[row].end()
            text = self.pipeline.cut(self.pipeline.tokenizer.decode(tokens, skip_special_tokens=False))
            results.append(Result(text, len(tokens), self.pipeline.finish_reason(len(tokens), max_new_tokens)))
        return results
