"""``vltool serve`` guards: API key, CORS, allowed media hosts, a full queue, departed clients, time limits, batches."""

import functools
import http.server
import json
import re
import threading
import time

import httpx
import openai
import pytest
from PIL import Image

from tests.serve.test_api import expected, sse_events, user
from tests.serving import served
from vltool.infer.load import load_pipeline
from vltool.infer.pipeline import GenerationOptions
from vltool.templates.message import Message

KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = 900  # tokens: several seconds on the tiny model, so the engine is surely busy


@pytest.fixture(scope="module")
def pipeline(chat_model):
    return load_pipeline(chat_model)


@pytest.fixture(scope="module")
def server(chat_model):
    args = ("--max-queue", "1", "--allowed-media-domains", "127.0.0.1", "--allow-origin", "http://page.example")
    with served(chat_model, *args, env={"VLTOOL_API_KEY": KEY}) as running:
        yield running


@pytest.fixture(scope="module")
def picture_url(module_tmp):
    """An http URL on a local ``http.server`` (127.0.0.1 only)."""
    folder = module_tmp("www")
    Image.new("RGB", (36, 48), "purple").save(folder / "purple.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/purple.png"
    httpd.shutdown()


def body(model, text="Hi", tokens=8, **more):
    return {"model": model.name, "messages": user(text), "max_tokens": tokens} | more


def test_every_endpoint_but_health_needs_the_key(server, chat_model):
    assert httpx.get(f"{server}/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        models = httpx.get(f"{server}/v1/models", headers=headers)
        chat = httpx.post(f"{server}/v1/chat/completions", json=body(chat_model), headers=headers)
        missing = httpx.get(f"{server}/v1/nothing", headers=headers)  # no route list for strangers either
        for response in (models, chat, missing):
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server}/v1/models", headers=AUTH).status_code == 200
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    assert client.chat.completions.create(**body(chat_model)).usage.completion_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="nope", max_retries=0).models.list()


def test_cors_only_for_allowed_origins(server):
    def preflight(origin):
        headers = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        }
        return httpx.options(f"{server}/v1/chat/completions", headers=headers)

    allowed = preflight("http://page.example")
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://page.example"
    other = preflight("http://evil.example")
    assert "access-control-allow-origin" not in other.headers


def test_http_image_from_an_allowed_host(server, chat_model, pipeline, picture_url):
    messages = user("What colour is it?", picture_url)
    response = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": chat_model.name, "messages": messages, "max_tokens": 16},
        headers=AUTH,
        timeout=60,
    )
    purple = Image.new("RGB", (36, 48), "purple")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == expected(pipeline, "What colour is it?", [purple], 16)


def test_full_queue_is_503_and_a_departed_client_stops_its_generation(server, chat_model):
    with httpx.Client(headers=AUTH, timeout=120) as long_client:
        with long_client.stream(
            "POST", f"{server}/v1/chat/completions", json=body(chat_model, "Go on.", LONG, stream=True)
        ) as busy:
            lines = busy.iter_lines()
            generating = next(line for line in lines if '"content": "' in line and '"content": ""' not in line)
            first_id = json.loads(generating.removeprefix("data: "))["id"]
            waiting = {}
            queued = threading.Thread(
                target=lambda: waiting.update(
                    r=httpx.post(f"{server}/v1/chat/completions", json=body(chat_model), headers=AUTH, timeout=120)
                )
            )
            queued.start()
            time.sleep(0.5)  # the second request now waits in the queue of one
            refused = httpx.post(f"{server}/v1/chat/completions", json=body(chat_model), headers=AUTH)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "queue_full"
        # leaving the stream closes the connection: the engine stops that answer and takes the queued one
        queued.join(timeout=60)
    assert waiting["r"].status_code == 200
    stopped = re.search(rf"{first_id}: stopped after (\d+) of at most {LONG} tokens", server.log())
    assert stopped and int(stopped.group(1)) < LONG


@pytest.fixture(scope="module")
def hurried_server(chat_model):
    with served(chat_model, "--request-timeout", "1.5") as running:
        yield running


def test_time_limit_is_504_or_an_error_event_once_streaming(hurried_server, chat_model):
    late = httpx.post(f"{hurried_server}/v1/chat/completions", json=body(chat_model, tokens=LONG), timeout=60)
    assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
    request = body(chat_model, tokens=LONG, stream=True)
    with httpx.stream("POST", f"{hurried_server}/v1/chat/completions", json=request, timeout=60) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
    assert len(events) > 3  # some content came before the error
    assert re.search(rf"stopped after \d+ of at most {LONG} tokens", hurried_server.log())


@pytest.fixture(scope="module")
def batching_server(chat_model):
    with served(chat_model, "--max-batch-size", "4") as running:
        yield running


def test_batches_group_queued_requests_and_match_the_library_batch(batching_server, chat_model, pipeline):
    questions = ["What is this?", "Describe the picture in detail.", "Count."]
    url = f"{batching_server}/v1/chat/completions"
    replies: dict[str, dict] = {}
    with httpx.stream(
        "POST", url, json=body(chat_model, "Go on.", LONG, stream=True, temperature=0.5, seed=0), timeout=60
    ) as busy:
        lines = busy.iter_lines()  # held: a dropped iterator closes the stream, and the server stops the answer
        next(line for line in lines if line.startswith("data: "))  # the engine is busy with it
        threads = [
            threading.Thread(
                target=lambda q=q: replies.update(
                    {q: httpx.post(url, json=body(chat_model, q, 12), timeout=120).json()}
                )
            )
            for q in questions
        ]
        for thread in threads:
            thread.start()
        # all three queued behind the sampling request (other options: not in its batch)
        deadline = time.monotonic() + 60
        while httpx.get(f"{batching_server}/health").json()["waiting"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=120)
    ids = {reply["id"]: question for question, reply in replies.items()}
    order = [
        ids[m.group(1)] for m in re.finditer(r"(chatcmpl-\w+): \d+ prompt tokens.*batch of 3", batching_server.log())
    ]
    assert sorted(order) == sorted(questions)  # one batch of the three, in queue order
    want = pipeline.answer([[Message("user", q)] for q in order], [[]] * 3, GenerationOptions(max_new_tokens=12))
    assert [replies[q]["choices"][0]["message"]["content"] for q in order] == want
