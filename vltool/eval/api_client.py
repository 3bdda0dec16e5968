"""Answering benchmark prompts through any OpenAI-compatible chat API (vLLM, lmdeploy, SGLang, ``vltool serve``).

:class:`ApiPipeline` has :class:`vltool.infer.pipeline.Pipeline`'s ``answer``, so ``vltool mmbench`` and
``vltool eval`` answer, cache and score exactly as with a local model; only where the answers come
from differs. Each prompt becomes one chat completion request, greedy (temperature 0) with the run's
``max_tokens``; a batch's requests go out at once, at most ``concurrency`` in flight.

How a prompt's ``<image>`` markers travel: the text is cut at each marker into ``text`` and
``image_url`` content parts in the prompt's order, images as lossless PNG data URLs (the server
decodes the very pixels the local run would use), and the one newline that separates a marker from
its text is dropped. vLLM joins a message's parts with newlines (it also moves image placeholders
to the front unless told to interleave them), so the usual prompt, a marker then a newline then
the question, arrives as it was written; servers whose chat templates take the parts as a list
(Qwen2-VL's) place their own image tokens.

Failures: 408, 429 and 5xx answers, dropped connections and timeouts are retried with exponential
backoff (a ``Retry-After`` header is honoured); any other error status, or the last failed try,
stops the run with one line naming the server, the prompt and the server's message.
"""

import asyncio
import base64
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

from vltool.constants import IMAGE_TOKEN
from vltool.errors import AnswerError, ConfigError
from vltool.infer.pipeline import GenerationOptions
from vltool.templates.message import Message

RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Answers that say "try again later" (overload, queue full, a restarting worker), as OpenAI's client retries."""

LONGEST_WAIT_S = 60.0
"""Backoff (and any ``Retry-After``) is capped here, so a run never sleeps for minutes between tries."""

PNG_MODES = frozenset({"1", "L", "LA", "I", "P", "RGB", "RGBA"})


@dataclass(frozen=True)
class ApiEndpoint:
    """An OpenAI-compatible server and how hard to push it.

    Attributes:
        base_url: the API root as given (``http://host:8000``, ``.../v1`` or ``.../v1/chat/completions``).
        api_key: sent as ``Authorization: Bearer``; None sends none.
        concurrency: requests in flight at once.
        attempts: tries per request before giving up.
        backoff_s: the wait after the first failed try; it doubles after each.
        timeout_s: the longest wait for one answer (a long generation on a slow server).
    """

    base_url: str
    api_key: str | None = None
    concurrency: int = 8
    attempts: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not re.match(r"https?://[^/]", self.base_url):
            raise ConfigError(f"API base {self.base_url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1.")
        if self.concurrency < 1:
            raise ConfigError(f"--api-concurrency {self.concurrency}: must be at least 1.")

    @property
    def root(self) -> str:
        """The URL that ``/models`` and ``/chat/completions`` hang from.

        A bare host gets ``/v1`` (vLLM, lmdeploy, SGLang and vltool serve all live there); a URL with
        a path is kept as the provider wrote it (``.../v1beta/openai``), minus a trailing
        ``/chat/completions`` copied from a curl example.
        """
        url = self.base_url.rstrip("/").removesuffix("/chat/completions")
        return url + "/v1" if httpx.URL(url).path in ("", "/") else url


class ApiRequestError(AnswerError):
    """A request the server would not answer, after the retries it deserved.

    Attributes:
        position: which of the requests sent together failed.
        transient: whether it failed the way busy servers do (retried statuses, timeouts, dropped
            connections), as opposed to a request the server will never serve (bad key, unknown model).
    """

    def __init__(self, message: str, position: int = 0, transient: bool = False) -> None:
        super().__init__(message, position)
        self.transient = transient


class ChatClient:
    """Chat completions from one server: model listing, bounded concurrency and retries.

    Args:
        endpoint: the server.
        transport: an httpx transport to use instead of the network (tests).
    """

    def __init__(self, endpoint: ApiEndpoint, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.transport = transport
        self.headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}

    def model_ids(self) -> list[str]:
        """The ids ``GET /models`` lists, in the server's order.

        Raises:
            ConfigError: the server cannot be reached or does not answer with a model list.
        """
        url = f"{self.endpoint.root}/models"
        try:
            with httpx.Client(timeout=30, headers=self.headers) as client:
                response = client.get(url)
        except httpx.TransportError as err:
            raise ConfigError(f"{url}: cannot reach the server ({type(err).__name__}: {err}); is it running?") from None
        if response.status_code != 200:
            raise ConfigError(f"{url}: HTTP {response.status_code}: {_server_message(response)}.")
        try:
            return [str(entry["id"]) for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{url}: not an OpenAI model list ({response.text[:200]!r}).") from None

    def resolve_model(self, model: str | None, flag: str = "--model") -> str:
        """``model`` when given, else the first model the server lists (a server usually serves one).

        Raises:
            ConfigError: no model given and the server lists none.
        """
        if model:
            return model
        ids = self.model_ids()
        if not ids:
            raise ConfigError(f"{self.endpoint.root}/models lists no model; name one with {flag}.")
        return ids[0]

    def complete_all(self, payloads: Sequence[dict[str, Any]], raise_first: bool = True) -> list[str | ApiRequestError]:
        """Send every chat completion request, at most ``concurrency`` at once, and return the answers in order.

        Args:
            payloads: request bodies for ``POST /chat/completions``.
            raise_first: raise the first failure (else it takes the failed request's place in the result).

        Raises:
            ApiRequestError: with ``raise_first``, a request that failed after its retries.
        """
        results = asyncio.run(self._complete_all(payloads))
        if raise_first:
            for result in results:
                if isinstance(result, ApiRequestError):
                    raise result
        return results

    async def _complete_all(self, payloads: Sequence[dict[str, Any]]) -> list[str | ApiRequestError]:
        limit = asyncio.Semaphore(self.endpoint.concurrency)
        pool = httpx.Limits(max_connections=self.endpoint.concurrency)
        timeout = httpx.Timeout(self.endpoint.timeout_s, connect=30)
        async with httpx.AsyncClient(
            headers=self.headers, timeout=timeout, limits=pool, transport=self.transport
        ) as client:

            async def one(position: int, payload: dict[str, Any]) -> str | ApiRequestError:
                async with limit:
                    try:
                        return await self._complete(client, payload)
                    except ApiRequestError as err:
                        return ApiRequestError(str(err), position, err.transient)

            return await asyncio.gather(*(one(i, p) for i, p in enumerate(payloads)))

    async def _complete(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> str:
        """One request with retries: the answer's text."""
        url = f"{self.endpoint.root}/chat/completions"
        for attempt in range(1, self.endpoint.attempts + 1):
            retry_after = None
            try:
                response = await client.post(url, json=payload)
            except httpx.TransportError as err:  # refused or dropped connections, timeouts
                problem = f"{type(err).__name__}: {err}".rstrip(": ")
            else:
                if response.status_code == 200:
                    return _answer_text(response, url)
                problem = f"HTTP {response.status_code}: {_server_message(response)}"
                if response.status_code not in RETRIED_STATUSES:
                    raise ApiRequestError(f"{url}: {problem}")
                retry_after = _retry_after(response)
            if attempt < self.endpoint.attempts:
                wait = retry_after if retry_after is not None else self.endpoint.backoff_s * 2 ** (attempt - 1)
                await asyncio.sleep(min(wait, LONGEST_WAIT_S))
        raise ApiRequestError(f"{url}: {problem} (after {self.endpoint.attempts} tries)", transient=True)


def _answer_text(response: httpx.Response, url: str) -> str:
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ApiRequestError(f"{url}: not an OpenAI chat completion ({response.text[:200]!r})") from None
    return content or ""


def _server_message(response: httpx.Response) -> str:
    """The server's own error text: OpenAI's ``{"error": {"message"}}``, FastAPI's ``detail``, else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]:
        return str(body["error"]["message"])
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return response.text.strip()[:200]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):  # absent, or an HTTP date, which these servers do not send
        return None


def image_data_url(image: Image.Image) -> str:
    """The image as a PNG data URL: lossless, so the server decodes the pixels a local run would use."""
    buffer = io.BytesIO()
    (image if image.mode in PNG_MODES else image.convert("RGB")).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def content_parts(text: str, images: list[Image.Image]) -> str | list[dict[str, Any]]:
    """A message's content: plain text without markers, else text and image parts in the prompt's order.

    The newline between a marker and its neighbouring text is left to the server, which joins parts
    with one (module docstring); empty text between markers sends no part.
    """
    if IMAGE_TOKEN not in text:
        return text
    parts: list[dict[str, Any]] = []
    pieces = text.split(IMAGE_TOKEN)
    for number, piece in enumerate(pieces):
        if number > 0:
            piece = piece.removeprefix("\n")
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(images[number - 1])}})
        if number < len(pieces) - 1:
            piece = piece.removesuffix("\n")
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


class ApiPipeline:
    """A served model behind :class:`~vltool.infer.pipeline.Pipeline`'s ``answer``.

    Args:
        client: the server.
        model: the model id to ask for.
    """

    def __init__(self, client: ChatClient, model: str) -> None:
        self.client = client
        self.model = model

    def identity(self) -> dict[str, str]:
        """What the answers depend on besides prompt and length: server and model (for prediction caches)."""
        return {"api_base": self.client.endpoint.root, "api_model": self.model}

    def request_body(self, conversation: list[Message], images: list[Image.Image], options: GenerationOptions) -> dict:
        """The chat completion request of one conversation; its images fill its markers in order."""
        markers = [message.content.count(IMAGE_TOKEN) for message in conversation]
        if sum(markers) != len(images):
            raise ConfigError(f"a prompt has {sum(markers)} {IMAGE_TOKEN} marker(s) but {len(images)} image(s).")
        messages, start = [], 0
        for message, count in zip(conversation, markers, strict=True):
            content = content_parts(message.content, images[start : start + count])
            messages.append({"role": message.role, "content": content})
            start += count
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
        }
        # vLLM's and SGLang's extensions, sent only when they change anything
        if options.top_k:
            body["top_k"] = options.top_k
        if options.repetition_penalty != 1.0:
            body["repetition_penalty"] = options.repetition_penalty
        return body

    def answer(
        self,
        conversations: list[list[Message]],
        images: list[list[Image.Image]],
        options: GenerationOptions | None = None,
    ) -> list[str]:
        """Answer a batch of conversations that each end with a user turn (greedy by default), concurrently.

        Raises:
            ApiRequestError: a request failed after its retries; the message quotes its prompt.
        """
        options = options or GenerationOptions()
        bodies = [self.request_body(c, i, options) for c, i in zip(conversations, images, strict=True)]
        try:
            return [str(text) for text in self.client.complete_all(bodies)]
        except ApiRequestError as err:
            prompt = " ".join(conversations[err.position][-1].content.replace(IMAGE_TOKEN, " ").split())
            shown = prompt[:60] + ("..." if len(prompt) > 60 else "")
            message = f'{err} for the prompt "{shown}"; check the server and rerun.'
            raise ApiRequestError(message, err.position, err.transient) from None


@dataclass(frozen=True)
class ServedModel:
    """The model of a benchmark run through an API: what ``vltool mmbench``/``eval`` use of a local model's choice.

    Attributes:
        client: the server.
        model: the model id (given, or the first the server lists).
    """

    client: ChatClient
    model: str

    ROWS_PER_CONCURRENT_REQUEST = 4
    """Rows per ``answer`` call and per cache write, per request in flight: a batch waits for its slowest
    answer, and four rounds per batch keep the server busy while the cache still saves often."""

    @classmethod
    def connect(cls, endpoint: ApiEndpoint, model: str | None) -> "ServedModel":
        """The server's model: ``model``, or the first it lists (which also checks the server answers).

        Raises:
            ConfigError: the server cannot be reached, or lists no model when none is named.
        """
        client = ChatClient(endpoint)
        return cls(client, client.resolve_model(model))

    @property
    def name(self) -> str:
        """A short name for result files: the model id, with characters a file name cannot hold replaced."""
        return re.sub(r"[^\w.-]+", "_", self.model).strip("_") or "model"

    @property
    def batch_size(self) -> int:
        """Rows per ``answer`` call (:attr:`ROWS_PER_CONCURRENT_REQUEST` per request in flight)."""
        return self.ROWS_PER_CONCURRENT_REQUEST * self.client.endpoint.concurrency

    def identity(self) -> dict[str, str]:
        """What the answers depend on besides prompt and length: server and model (for prediction caches)."""
        return ApiPipeline(self.client, self.model).identity()

    def load(self) -> ApiPipeline:
        """The ``answer``-er that ``answer_requests`` calls: nothing loads, the server already holds the model."""
        return ApiPipeline(self.client, self.model)
