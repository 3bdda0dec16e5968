"""The OpenAI chat-completions protocol: request validation into a :class:`ChatRequest`, and response shapes.

Requests are accepted as vLLM accepts them: ``messages`` with system, user and assistant roles,
content a string or a list of ``text`` and ``image_url`` parts, and the decoding options vltool
can honour. Anything vltool cannot honour (``n > 1``, tools, logprobs, response formats,
penalties it does not implement) is refused with a 400 that names the parameter, rather than
silently ignored: a client that asked for JSON output must not get prose and believe it JSON.

Images become ``<image>`` markers at the position of their part; parts are joined with a newline,
so ``[image, text]`` renders as ``"<image>" + newline + text``, LLaVA's layout, which ``vltool chat`` and the
benchmarks also use, so a served model sees the prompts it was trained on.
"""

from dataclasses import dataclass, field
from typing import Any

from vltool.constants import IMAGE_TOKEN
from vltool.templates.message import Message

ROLES = ("system", "user", "assistant")
MAX_STOP_WORDS = 16
UNSUPPORTED = {
    "tools": "tools are not supported",
    "tool_choice": "tools are not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "top_logprobs": "logprobs are not supported",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
}
"""Parameters refused whenever they carry a value (``None``, ``[]`` and ``{}`` count as absent)."""


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

    Attributes:
        status: the HTTP status.
        message: one line saying what is wrong and what to do.
        param: the request parameter at fault, or None.
        code: a short machine-readable code, or None.
        headers: extra response headers (``Retry-After`` on 503).
    """

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        """OpenAI's error type: client mistakes are ``invalid_request_error``, the server's ``server_error``."""
        return self.TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        """The JSON error object."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` as OpenAI's API writes it."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@dataclass(frozen=True)
class Sampling:
    """The decoding options a request may set; None leaves the server's default.

    Attributes:
        max_tokens: the longest answer (``max_completion_tokens`` wins over ``max_tokens``).
        temperature, top_p, top_k, repetition_penalty: as :class:`vltool.infer.pipeline.GenerationOptions`.
        seed: seeds sampling so an answer repeats.
        stop: strings that end the answer; they are not part of it.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class ChatRequest:
    """A validated chat-completions request.

    Attributes:
        model: the model name the client asked for.
        messages: the conversation, ``<image>`` markers where images go; it ends with a user turn.
        image_urls: the URL of each image, in marker order.
        sampling: the decoding options the request set.
        stream: answer as server-sent events.
        include_usage: with ``stream``, send a last chunk with the token counts.
    """

    model: str
    messages: list[Message]
    image_urls: list[str] = field(default_factory=list)
    sampling: Sampling = Sampling()
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(body: Any, max_images: int) -> ChatRequest:
    """Validate a request body.

    Args:
        body: the decoded JSON.
        max_images: the most images one request may carry (``--max-images``).

    Raises:
        APIError: 400 naming the parameter at fault.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object.")
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "model is required: give the served model's name (GET /v1/models lists it).", "model")
    messages, urls = _parse_messages(body.get("messages"))
    if len(urls) > max_images:
        raise APIError(
            400,
            f"the request has {len(urls)} images; this server accepts at most {max_images} (--max-images).",
            "messages",
            "too_many_images",
        )
    stream = _typed(body, "stream", bool, False)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, 'stream_options must be an object such as {"include_usage": true}.', "stream_options")
    include_usage = _typed(options, "include_usage", bool, False, "stream_options.include_usage")
    return ChatRequest(model, messages, urls, _parse_sampling(body), stream, stream and include_usage)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """400 for every parameter whose effect vltool cannot give."""
    for name, reason in UNSUPPORTED.items():
        if body.get(name) not in (None, [], {}):
            raise APIError(400, f"{name}: {reason} by vltool serve; remove the parameter.", name, "unsupported")
    n = body.get("n")
    if n not in (None, 1):
        raise APIError(400, f"n={n}: only one answer per request (n=1); send the request again for more.", "n")
    if body.get("logprobs") not in (None, False):
        raise APIError(400, "logprobs are not supported by vltool serve; remove the parameter.", "logprobs")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise APIError(400, "response_format: only plain text answers are supported.", "response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise APIError(400, f"{name} is not supported; use repetition_penalty instead.", name, "unsupported")


def _parse_messages(messages: Any) -> tuple[list[Message], list[str]]:
    """The conversation with ``<image>`` markers, and the image URLs in marker order."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list of {role, content} objects.", "messages")
    parsed: list[Message] = []
    urls: list[str] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object with role and content.", where)
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"{where}.role {role!r}: use system, user or assistant.", f"{where}.role")
        if role == "system" and index > 0:
            raise APIError(400, f"{where}: a system message may only come first.", f"{where}.role")
        content = _parse_content(message.get("content"), where, urls if role == "user" else None)
        parsed.append(Message(role, content))
    if parsed[-1].role != "user":
        raise APIError(400, "the last message must come from the user: it is the one answered.", "messages")
    return parsed, urls


def _parse_content(content: Any, where: str, urls: list[str] | None) -> str:
    """One message's text; image parts become markers (only user messages, ``urls`` not None, take images)."""
    if isinstance(content, str):
        return _checked_text(content, f"{where}.content")
    if not isinstance(content, list) or not content:
        raise APIError(400, f"{where}.content must be a string or a non-empty list of parts.", f"{where}.content")
    pieces = []
    for number, part in enumerate(content):
        at = f"{where}.content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(_checked_text(part["text"], f"{at}.text"))
        elif kind == "image_url" and urls is not None:
            urls.append(_image_url(part.get("image_url"), at))
            pieces.append(IMAGE_TOKEN)
        elif kind == "image_url":
            raise APIError(400, f"{at}: only user messages may hold images.", f"{at}.type")
        else:
            raise APIError(
                400, f"{at}: parts must be {{type: text, text}} or {{type: image_url, image_url: {{url}}}}.", at
            )
    return "\n".join(pieces)


def _checked_text(text: str, where: str) -> str:
    """Text may not spell the image marker: it would become an image without pixels."""
    if IMAGE_TOKEN in text:
        raise APIError(400, f"{where} contains {IMAGE_TOKEN}; send images as image_url parts instead.", where)
    return text


def _image_url(value: Any, at: str) -> str:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise APIError(400, f'{at}.image_url must be {{"url": "data:..." or "https://..."}}.', f"{at}.image_url")
    return url


def _parse_sampling(body: dict[str, Any]) -> Sampling:
    """The decoding options, each type- and range-checked."""
    max_tokens = _number(body, "max_completion_tokens", int, 1)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 1)
    top_k = _number(body, "top_k", int, -1)
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", float, 0.0),
        top_p=_number(body, "top_p", float, 0.0, exclusive_low=True, high=1.0),
        top_k=0 if top_k == -1 else top_k,  # vLLM's -1, like 0, means all tokens
        repetition_penalty=_number(body, "repetition_penalty", float, 0.0, exclusive_low=True),
        seed=_number(body, "seed", int, None),
        stop=_parse_stop(body.get("stop")),
    )


def _number(
    body: dict[str, Any],
    name: str,
    kind: type,
    low: float | None,
    exclusive_low: bool = False,
    high: float | None = None,
) -> Any:
    """``body[name]`` as ``kind`` within its range, or None when absent."""
    value = body.get(name)
    if value is None:
        return None
    ok_type = isinstance(value, int | float) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type:
        raise APIError(400, f"{name} must be {'a number' if kind is float else 'an integer'}, not {value!r}.", name)
    too_low = low is not None and (value <= low if exclusive_low else value < low)
    if too_low or (high is not None and value > high):
        bound = f"{'above' if exclusive_low else 'at least'} {low}" + (f" and at most {high}" if high else "")
        raise APIError(400, f"{name}={value}: must be {bound}.", name)
    return kind(value)


def _parse_stop(stop: Any) -> tuple[str, ...]:
    words = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(words, list) or not all(isinstance(word, str) and word for word in words):
        raise APIError(400, "stop must be a non-empty string or a list of them.", "stop")
    if len(words) > MAX_STOP_WORDS:
        raise APIError(400, f"stop has {len(words)} strings; at most {MAX_STOP_WORDS}.", "stop")
    return tuple(words)


def _typed(body: dict[str, Any], name: str, kind: type, default: Any, param: str | None = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise APIError(400, f"{param or name} must be {kind.__name__}, not {value!r}.", param or name)
    return value


# ---- responses


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """Token counts; the prompt's include every image's visual tokens, as the model reads them."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    request_id: str, created: int, model: str, text: str, finish_reason: str, token_usage: dict[str, int]
) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": token_usage,
    }


def chunk(
    request_id: str,
    created: int,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
    token_usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; with ``token_usage`` the usage chunk, which has no choices."""
    choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if token_usage is not None else choices,
    }
    if token_usage is not None:
        body["usage"] = token_usage
    return body
