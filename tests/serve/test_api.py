"""``vltool serve`` through the official openai client and raw httpx: answers, streams, usage, refusals.

One real server (a subprocess on 127.0.0.1) for the module; expected answers come from the
library (``Pipeline.answer``) on the same model.
"""

import base64
import io
import json
import socket
import threading

import httpx
import openai
import pytest
from PIL import Image

from tests.serving import served
from vltool.infer.load import load_pipeline
from vltool.infer.pipeline import GenerationOptions, cut_at_stop_words
from vltool.templates.message import Message

TOKENS = 24
MAX_REQUEST_MB = 1


@pytest.fixture(scope="module")
def pipeline(chat_model):
    return load_pipeline(chat_model)


@pytest.fixture(scope="module")
def server(chat_model):
    with served(chat_model, "--max-images", "2", "--max-request-mb", str(MAX_REQUEST_MB)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def png_data_url(colour: str, size=(40, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def expected(pipeline, text: str, images=(), tokens: int = TOKENS) -> str:
    content = "<image>\n" * len(images) + text
    return pipeline.answer([[Message("user", content)]], [list(images)], GenerationOptions(max_new_tokens=tokens))[0]


def user(text: str, *urls: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_health_and_models(server, chat_model):
    assert httpx.get(f"{server}/health").json() == {"status": "ok", "waiting": 0}
    models = httpx.get(f"{server}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [chat_model.name]
    assert models["data"][0]["max_model_len"] == 1024  # the tiny Qwen2's max_position_embeddings


def test_plain_streamed_and_library_answers_agree(server, client, pipeline, chat_model):
    red = Image.new("RGB", (40, 30), "red")
    want = expected(pipeline, "What colour is it?", [red])
    messages = user("What colour is it?", png_data_url("red"))
    reply = client.chat.completions.create(model=chat_model.name, messages=messages, max_tokens=TOKENS)
    assert reply.choices[0].message.content == want and len(want) > 10
    prompt_ids = pipeline.prompt_ids([Message("user", "<image>\nWhat colour is it?")])
    text_only = pipeline.prompt_ids([Message("user", "What colour is it?")])
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.prompt_tokens - len(text_only) >= pipeline.model.image_seq_length  # image tokens counted
    assert reply.usage.completion_tokens == TOKENS and reply.choices[0].finish_reason == "length"
    assert reply.usage.total_tokens == len(prompt_ids) + TOKENS

    stream = client.chat.completions.create(
        model=chat_model.name,
        messages=messages,
        max_tokens=TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == want and len([p for p in pieces if p]) > 1  # really streamed, in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(prompt_ids)
    assert chunks[-1].usage.completion_tokens == TOKENS


def test_raw_stream_ends_with_done(server, chat_model, pipeline):
    body = {"model": chat_model.name, "messages": user("Say hello."), "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("usage" not in c for c in chunks)  # no usage chunk unless asked
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected(
        pipeline, "Say hello.", (), 8
    )


def test_stop_strings_cut_the_answer(client, chat_model, pipeline):
    full = expected(pipeline, "Tell me a story.", (), 40)
    word = full.split()[len(full.split()) // 2]
    reply = client.chat.completions.create(
        model=chat_model.name, messages=user("Tell me a story."), max_tokens=40, stop=[word]
    )
    assert reply.choices[0].message.content == cut_at_stop_words(full, (word,))
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens < 40


def test_four_concurrent_clients_each_get_their_solo_answer(server, chat_model, pipeline):
    questions = ["What is this?", "Describe the picture.", "Count the objects.", "Which colour dominates?"]
    colours = ["red", "blue", "green", "yellow"]
    wanted = [expected(pipeline, q, [Image.new("RGB", (40, 30), c)]) for q, c in zip(questions, colours, strict=True)]
    answers: dict[int, str] = {}

    def ask(index: int) -> None:
        body = {"model": chat_model.name, "messages": user(questions[index], png_data_url(colours[index]))}
        reply = httpx.post(f"{server}/v1/chat/completions", json=body | {"max_tokens": TOKENS}, timeout=120)
        answers[index] = reply.json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answers[i] for i in range(4)] == wanted and len(set(wanted)) == 4


def test_multi_turn_reuses_the_previous_turn_from_the_cache(server, client, chat_model, pipeline):
    first = user("What colour is it?", png_data_url("blue"))
    answer = client.chat.completions.create(model=chat_model.name, messages=first, max_tokens=TOKENS)
    history = [*first, {"role": "assistant", "content": answer.choices[0].message.content}]
    second = client.chat.completions.create(
        model=chat_model.name, messages=[*history, *user("Are you sure?")], max_tokens=TOKENS
    )
    blue = Image.new("RGB", (40, 30), "blue")
    conversation = [
        Message("user", "<image>\nWhat colour is it?"),
        Message("assistant", answer.choices[0].message.content),
        Message("user", "Are you sure?"),
    ]
    want = pipeline.answer([conversation], [[blue]], GenerationOptions(max_new_tokens=TOKENS))[0]
    assert second.choices[0].message.content == want
    # the first turn's prompt came from the cache (its answer too, where re-tokenising the text gives the same ids)
    assert _reused(server.log(), second.id) >= len(pipeline.prompt_ids(conversation[:1]))


def _reused(log: str, request_id: str) -> int:
    for line in log.splitlines():
        if f"{request_id}: " in line and "reused from the cache" in line:
            return int(line.split(f"{request_id}: ")[1].split()[0])
    return 0


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("change", "param", "fragment"),
    [
        ({"n": 2}, "n", "only one answer per request"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "tools are not supported"),
        ({"logprobs": True}, "logprobs", "logprobs are not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "only plain text"),
        ({"temperature": -1}, "temperature", "temperature=-1: must be at least 0.0"),
        ({"max_tokens": 5000}, "max_tokens", "the model's context is 1024"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "use system, user or assistant"),
        ({"messages": [{"role": "user", "content": "a <image> b"}]}, "messages[0].content", "image_url parts"),
    ],
)
def test_unsupported_or_invalid_options_are_400_naming_the_parameter(server, chat_model, change, param, fragment):
    body = {"model": chat_model.name, "messages": user("Hi")} | change
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param and fragment in error["message"] and error["type"] == "invalid_request_error"


def test_unknown_model_is_404(server, client, chat_model):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user("Hi"))
    assert caught.value.status_code == 404
    assert caught.value.body["code"] == "model_not_found" and chat_model.name in caught.value.body["message"]


def test_image_errors(server, chat_model):
    def post(*urls: str) -> httpx.Response:
        body = {"model": chat_model.name, "messages": user("Hi", *urls), "max_tokens": 4}
        return httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)

    bad = post(png_data_url("red"), "data:image/png;base64,not-base64!!")
    assert bad.status_code == 400 and error_of(bad)["param"] == "messages"
    assert error_of(bad)["message"].startswith("image 2: ") and "bad base64" in error_of(bad)["message"]
    too_many = post(*[png_data_url("red")] * 3)
    assert too_many.status_code == 400 and "at most 2 (--max-images)" in error_of(too_many)["message"]
    # loopback addresses are refused unless --allowed-media-domains names the host (this server has none)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        refused = post(f"http://127.0.0.1:{port}/secret.png")
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()  # the server never even connected
    assert refused.status_code == 400 and "127.0.0.1" in error_of(refused)["message"]


def test_body_over_the_limit_is_413(server, chat_model):
    big = "x" * (MAX_REQUEST_MB * 2**20 + 10)
    body = {"model": chat_model.name, "messages": user(big)}
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 413 and "--max-request-mb" in error_of(response)["message"]


def test_the_limit_is_checked_while_reading_the_body(server):
    """A chunked body without a length that never ends: 413 comes while the client is still sending."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 65536
        for _ in range(MAX_REQUEST_MB * 16 + 2):  # a little over the limit, and the body is not finished
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        reply = b""
        while b'"}}' not in reply and (data := sock.recv(65536)):
            reply += data
    head, _, body = reply.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413") and json.loads(body)["error"]["code"] == "request_too_large"
