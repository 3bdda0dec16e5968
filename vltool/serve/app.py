"""The FastAPI application: routes, Bearer auth, CORS, the body limit and OpenAI-shaped errors.

Request handling never touches the model: it reads the body (refusing it as soon as it grows
past ``--max-request-mb``, so a huge upload is never held in memory whole), validates it, fetches
and decodes the images in a thread pool, tokenises, and queues a :class:`~vltool.serve.engine.Job`.
The engine thread's events come back through an ``asyncio.Queue``.
"""

import asyncio
import hashlib
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from vltool.infer.pipeline import GenerationOptions
from vltool.serve import protocol
from vltool.serve.engine import Decoding, Engine, Job, QueueFull, Result
from vltool.serve.media import MediaError, MediaPolicy, load_image_url
from vltool.serve.protocol import APIError, ChatRequest
from vltool.templates.message import Message

logger = logging.getLogger("vltool.serve")
RETRY_AFTER_S = 1
OPEN_PATHS = ("/health", "/")
"""Paths served without the API key: the health probe, and the page, a static file holding no data
(it asks for the key and sends it with every API call)."""


@dataclass(frozen=True)
class ServeSettings:
    """Everything the app needs besides the model (the ``vltool serve`` flags).

    Attributes:
        model_name: the name clients give as ``model``.
        api_key: the Bearer token every endpoint but /health and the page needs; None: no auth.
        allow_origins: origins allowed to call the API from a browser (CORS); empty: none.
        max_queue: requests that may wait for the engine.
        request_timeout: seconds from arrival to the end of the answer (504 after).
        max_images: images one request may carry.
        max_request_bytes: the largest body (and image) accepted.
        media: where images may come from.
        defaults: decoding options for what a request leaves out.
        system: the system prompt of requests without one (None: the template's).
        max_batch_size: queued requests answered together (see :mod:`vltool.serve.engine`).
    """

    model_name: str
    api_key: str | None = None
    allow_origins: tuple[str, ...] = ()
    max_queue: int = 64
    request_timeout: float = 600.0
    max_images: int = 8
    max_request_bytes: int = 20 * 2**20
    media: MediaPolicy | None = None
    defaults: GenerationOptions = GenerationOptions()
    system: str | None = None
    max_batch_size: int = 1


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    """The application serving ``engine``'s model; the engine thread starts and stops with it."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="vltool serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    api = _Api(engine, settings, ThreadPoolExecutor(max_workers=4, thread_name_prefix="vltool-media"))
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", api.chat_completions, methods=["POST"])
    app.add_api_route("/", api.page, methods=["GET"])
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    # the last added middleware runs first: CORS answers preflights before auth asks for a key
    app.add_middleware(_BearerAuth, api_key=settings.api_key)
    if settings.allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


async def _api_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = "no such endpoint; see docs/serve.md" if error.status_code == 404 else str(error.detail)
    return await _api_error(_request, APIError(error.status_code, message))


async def _server_error(_request: Request, error: Exception) -> Response:
    logger.exception("request failed", exc_info=error)
    return await _api_error(_request, APIError(500, f"internal error: {type(error).__name__}: {error}"))


class _BearerAuth:
    """``Authorization: Bearer KEY`` on every path but the open ones; compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            return await self.app(scope, receive, send)
        error = APIError(
            401, "missing or wrong API key: send the header Authorization: Bearer KEY.", None, "invalid_api_key"
        )
        await JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


class _Api:
    """The route handlers, sharing the engine, the settings and the media thread pool."""

    def __init__(self, engine: Engine, settings: ServeSettings, media_pool: ThreadPoolExecutor) -> None:
        self.engine = engine
        self.settings = settings
        self.media_pool = media_pool
        self.created = int(time.time())
        self.context = engine.pipeline.model.llm.config.max_position_embeddings
        self.tokenizer_lock = threading.Lock()

    async def health(self) -> dict[str, Any]:
        """Liveness, and how many requests wait for the engine (what a load balancer needs)."""
        return {"status": "ok", "waiting": self.engine.waiting}

    async def models(self) -> dict[str, Any]:
        model = {
            "id": self.settings.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "vltool",
            "max_model_len": self.context,
        }
        return {"object": "list", "data": [model]}

    async def page(self) -> Response:
        page = resources.files("vltool.serve").joinpath("static/index.html")
        if not page.is_file():
            raise APIError(404, "the web page is not installed (vltool/serve/static/index.html is missing).")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    async def chat_completions(self, request: Request) -> Response:
        deadline = time.monotonic() + self.settings.request_timeout
        body = await _read_body(request, self.settings.max_request_bytes)
        try:
            raw = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, f"the body is not valid JSON ({err}).") from None
        chat = protocol.parse_chat_request(raw, self.settings.max_images)
        if chat.model != self.settings.model_name:
            raise APIError(
                404,
                f"model {chat.model!r} is not served here; this server serves {self.settings.model_name!r}.",
                "model",
                "model_not_found",
            )
        loop = asyncio.get_running_loop()
        images = await asyncio.gather(
            *(
                loop.run_in_executor(self.media_pool, self._image, number, url)
                for number, url in enumerate(chat.image_urls, start=1)
            )
        )
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        job = await loop.run_in_executor(self.media_pool, self._job, chat, list(images), _sink(loop, events))
        try:
            self.engine.submit(job)
        except QueueFull:
            raise APIError(
                503,
                f"the server is busy ({self.engine.max_queue} requests waiting); retry in a moment.",
                None,
                "queue_full",
                {"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        answer = _Answer(job, chat, self.settings.model_name, events, deadline)
        if chat.stream:
            return StreamingResponse(
                answer.stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return JSONResponse(await answer.complete(request))

    def _image(self, number: int, url: str) -> Image.Image:
        """The request's ``number``-th image (counted from 1 over the whole conversation, as errors name it)."""
        try:
            return load_image_url(url, self.settings.media)
        except MediaError as err:
            raise APIError(err.status, f"image {number}: {err.message}", err.param, "invalid_image") from None

    def _job(self, chat: ChatRequest, images: list[Image.Image], emit: Callable[[tuple[str, Any]], None]) -> Job:
        """Tokenise (in the pool: long prompts take milliseconds) and check the context length."""
        conversation = chat.messages
        if conversation[0].role != "system" and self.settings.system is not None:
            conversation = [Message("system", self.settings.system), *conversation]
        with self.tokenizer_lock:
            prompt_ids = self.engine.pipeline.prompt_ids(conversation)
        options = _options(self.settings.defaults, chat.sampling, len(prompt_ids), self.context)
        keys = tuple(hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest() for image in images)
        decoding = Decoding(options, chat.sampling.seed, chat.sampling.stop)
        return Job(f"chatcmpl-{uuid.uuid4().hex}", prompt_ids, conversation, images, keys, decoding, emit)


def _options(
    defaults: GenerationOptions, sampling: protocol.Sampling, prompt_tokens: int, context: int
) -> GenerationOptions:
    """The request's decoding options over the server's defaults; the answer must fit the LLM's context."""
    room = context - prompt_tokens
    if room < 1:
        raise APIError(
            400,
            f"the prompt has {prompt_tokens} tokens (images included); the model's context is {context}.",
            "messages",
            "context_length_exceeded",
        )
    if sampling.max_tokens is not None and sampling.max_tokens > room:
        raise APIError(
            400,
            f"max_tokens={sampling.max_tokens} does not fit: the prompt has {prompt_tokens} tokens (images included) "
            f"and the model's context is {context}, leaving {room}.",
            "max_tokens",
            "context_length_exceeded",
        )
    chosen = {
        "max_new_tokens": sampling.max_tokens or min(defaults.max_new_tokens, room),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "repetition_penalty": sampling.repetition_penalty,
    }
    return replace(defaults, **{name: value for name, value in chosen.items() if value is not None})


def _sink(loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Callable[[tuple[str, Any]], None]:
    """A thread-safe ``emit`` for the engine thread: hands each event to the request's event loop."""

    def emit(event: tuple[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop has closed: the server is shutting down
            pass

    return emit


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit`` bytes (never read whole first)."""
    too_large = APIError(
        413,
        f"the request body is larger than {limit / 2**20:g} MB (--max-request-mb); send smaller or fewer images.",
        None,
        "request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large
    return bytes(body)


class _Answer:
    """Turns a job's engine events into a JSON answer or a stream of server-sent events."""

    def __init__(self, job: Job, chat: ChatRequest, model: str, events: asyncio.Queue, deadline: float) -> None:
        self.job = job
        self.chat = chat
        self.model = model
        self.events = events
        self.deadline = deadline
        self.created = int(time.time())

    async def _next(self, poll: Callable[[], Awaitable[bool]] | None = None) -> tuple[str, Any]:
        """The next engine event; 504 once the deadline passes; ``("gone", None)`` when ``poll`` says so."""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.job.cancelled.set()
                raise APIError(
                    504, "the answer took longer than --request-timeout; ask for fewer max_tokens.", None, "timeout"
                )
            try:
                return await asyncio.wait_for(self.events.get(), timeout=min(left, 0.25 if poll else left))
            except TimeoutError:
                if poll is not None and await poll():
                    self.job.cancelled.set()
                    return ("gone", None)

    async def complete(self, request: Request) -> dict[str, Any]:
        """The whole answer as a ``chat.completion``; a client that leaves cancels the generation."""
        text = ""
        while True:
            kind, value = await self._next(request.is_disconnected)
            if kind == "gone":
                return {}
            if kind == "error":
                raise value
            if kind == "done":
                return protocol.completion(
                    self.job.request_id, self.created, self.model, value.text, value.finish_reason, self._usage(value)
                )
            text += value

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, content chunks, a finish chunk, a usage chunk if asked, ``[DONE]``.

        An error after the stream has started (the status line is sent) goes out as an error event.
        Leaving the generator early (the client disconnected) cancels the generation.
        """
        job = self.job
        try:
            yield _event(protocol.chunk(job.request_id, self.created, self.model, {"role": "assistant", "content": ""}))
            while True:
                try:
                    kind, value = await self._next()
                except APIError as err:
                    kind, value = "error", err
                if kind == "error":
                    yield _event(value.body())
                    break
                if kind == "text":
                    yield _event(protocol.chunk(job.request_id, self.created, self.model, {"content": value}))
                    continue
                yield _event(protocol.chunk(job.request_id, self.created, self.model, {}, value.finish_reason))
                if self.chat.include_usage:
                    yield _event(protocol.chunk(job.request_id, self.created, self.model, {}, None, self._usage(value)))
                break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # no effect once the answer is done; stops it when the client has gone

    def _usage(self, result: Result) -> dict[str, int]:
        return protocol.usage(len(self.job.prompt_ids), result.completion_tokens)


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
