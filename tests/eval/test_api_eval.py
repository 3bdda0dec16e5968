"""``vltool mmbench``/``eval`` through an OpenAI-compatible API, and the LLM judge, against servers on 127.0.0.1.

Stand-in servers (``http.server`` in a thread) script the replies for the client and judge checks;
the end-to-end checks run the real ``vltool serve`` of the tiny chat model and compare with the
local run.
"""

import base64
import hashlib
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from tests.eval.mmbench_files import colour_questions, write_tsv
from tests.eval.test_cli import CCBENCH, last_line, vltool
from tests.serving import free_port, served
from vltool.cli.model_options import ModelOptions, refuse_local_model_options
from vltool.errors import ConfigError
from vltool.eval.api_client import ApiEndpoint, ApiPipeline, ApiRequestError, ChatClient
from vltool.eval.extraction import Extraction
from vltool.eval.judge import Judge, VerdictCache, judge_prompt
from vltool.eval.mmbench import rescore_mmbench
from vltool.infer.pipeline import GenerationOptions
from vltool.templates.message import Message

Reply = Callable[[dict], "str | tuple[int, str, dict]"]


@dataclass
class StandIn:
    """A stand-in OpenAI server: ``reply(body)`` gives the answer text, or ``(status, error message, headers)``."""

    url: str
    bodies: list[dict] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    most_in_flight: int = 0


@contextmanager
def stand_in(reply: Reply, models: tuple[str, ...] = ("stand-in",), delay_s: float = 0.0) -> Iterator[StandIn]:
    lock, in_flight = threading.Lock(), [0]
    record = StandIn("")

    class Handler(BaseHTTPRequestHandler):
        def send(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                record.bodies.append(body)
                record.keys.append(self.headers.get("Authorization"))
                in_flight[0] += 1
                record.most_in_flight = max(record.most_in_flight, in_flight[0])
            time.sleep(delay_s)
            answer = reply(body)
            with lock:
                in_flight[0] -= 1
            if isinstance(answer, tuple):
                status, message, headers = answer
                self.send(
                    status, {"error": {"message": message, "type": "error", "param": None, "code": status}}, headers
                )
            else:
                message = {"role": "assistant", "content": answer}
                self.send(200, {"object": "chat.completion", "choices": [{"index": 0, "message": message}]})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()


def prompt_text(body: dict) -> str:
    """The text parts of the last message, joined as a server joins them (markers where the images were)."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] if p["type"] == "text" else "<image>" for p in content)


def pipeline(url: str, model: str = "m", **endpoint: object) -> ApiPipeline:
    return ApiPipeline(ChatClient(ApiEndpoint(url, **{"backoff_s": 0.01, **endpoint})), model)


def decoded(part: dict) -> Image.Image:
    header, data = part["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


# ---- the client


def test_markers_become_image_parts_in_prompt_order_and_pixels_survive():
    red, noisy = Image.new("RGB", (5, 3), "red"), Image.effect_noise((6, 4), 60).convert("RGB")
    conversation = [Message("user", "<image>\n<image>\nWhich one is red?")]
    body = pipeline("http://127.0.0.1:1").request_body(conversation, [red, noisy], GenerationOptions(7))
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"] and parts[2]["text"] == "Which one is red?"
    assert decoded(parts[0]).tobytes() == red.tobytes()
    assert decoded(parts[1]).tobytes() == noisy.tobytes()  # lossless: the server sees these pixels
    # a server joining parts with newlines (vLLM, vltool serve) rebuilds the prompt as written
    assert prompt_text(body) == conversation[0].content
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p")} == {
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    assert "top_k" not in body and "repetition_penalty" not in body
    text_only = pipeline("http://127.0.0.1:1").request_body([Message("user", "2+2?")], [], GenerationOptions())
    assert text_only["messages"] == [{"role": "user", "content": "2+2?"}]
    with pytest.raises(ConfigError, match=r"2 <image> marker\(s\) but 1 image"):
        pipeline("http://127.0.0.1:1").request_body(conversation[:1], [red], GenerationOptions())


def test_answers_come_back_in_order_with_at_most_concurrency_requests_in_flight():
    with stand_in(lambda body: f"answer to {prompt_text(body)}", delay_s=0.05) as server:
        client = pipeline(server.url, api_key="secret", concurrency=3)
        prompts = [f"question {i}" for i in range(10)]
        answers = client.answer([[Message("user", p)] for p in prompts], [[]] * 10, GenerationOptions(5))
    assert answers == [f"answer to {p}" for p in prompts]
    assert server.most_in_flight == 3
    assert set(server.keys) == {"Bearer secret"} and {b["model"] for b in server.bodies} == {"m"}


def test_a_busy_server_is_retried_and_a_failing_one_named_in_one_line():
    tries: dict[str, int] = {}

    def busy_twice(body: dict) -> str | tuple[int, str, dict]:
        text = prompt_text(body)
        tries[text] = tries.get(text, 0) + 1
        return (503, "queue full", {"Retry-After": "0"}) if tries[text] <= 2 else text.upper()

    with stand_in(busy_twice) as server:
        answers = pipeline(server.url, attempts=3).answer([[Message("user", "a")], [Message("user", "b")]], [[], []])
    assert answers == ["A", "B"] and tries == {"a": 3, "b": 3}

    with stand_in(lambda body: (500, "engine crashed", {})) as server:
        with pytest.raises(ApiRequestError) as failed:
            pipeline(server.url, attempts=2).answer(
                [[Message("user", "<image>\nWhat is shown here?")]], [[Image.new("RGB", (2, 2))]]
            )
    assert str(failed.value) == (
        f"{server.url}/chat/completions: HTTP 500: engine crashed (after 2 tries) "
        'for the prompt "What is shown here?"; check the server and rerun.'
    )
    assert len(server.bodies) == 2

    with stand_in(lambda body: (401, "bad API key", {})) as server:  # retrying cannot fix it: one try
        with pytest.raises(ApiRequestError, match="HTTP 401: bad API key for the prompt"):
            pipeline(server.url, attempts=5).answer([[Message("user", "hi")]], [[]])
    assert len(server.bodies) == 1

    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ApiRequestError, match=r"ConnectError.*\(after 2 tries\)"):
        pipeline(nobody, attempts=2).answer([[Message("user", "hi")]], [[]])


def test_the_model_defaults_to_the_first_one_listed():
    with stand_in(lambda body: "", models=("first", "second")) as server:
        client = ChatClient(ApiEndpoint(server.url.removesuffix("/v1")))  # a bare host gets /v1
        assert client.endpoint.root == server.url
        assert client.resolve_model(None) == "first" and client.resolve_model("second") == "second"
    with pytest.raises(ConfigError, match="cannot reach the server"):
        ChatClient(ApiEndpoint(server.url)).model_ids()
    with pytest.raises(ConfigError, match="give an http"):
        ApiEndpoint("127.0.0.1:8000")


# ---- the judge


def test_judge_prompts_are_vlmevalkits():
    # sha256 of VLMEvalKit's build_prompt / build_prompt_cn with its build_option_str, run on the same inputs
    english = judge_prompt("What colour is the picture", {"A": "red", "B": "green"}, "It looks reddish to me")
    assert (
        hashlib.sha256(english.encode()).hexdigest()
        == "057f3fa9d7b815ced267af8a18dd0f9e8df8c42bb513f68883ca504f41b6b25d"
    )
    chinese = judge_prompt("图中所示建筑名称为？", {"A": "天坛", "B": "故宫"}, "这是一座古老的宫殿建筑")
    assert (
        hashlib.sha256(chinese.encode()).hexdigest()
        == "cedde167474ffb4bd3ffa6b94db21850776f4e45b08994aeef9231ac17d41436"
    )
    assert chinese.startswith("你是一个帮助我匹配答案") and chinese.endswith("答案: 这是一座古老的宫殿建筑\n输出: ")


PREDICTIONS = {
    0: "A",  # exact matching reads it; the judge never sees it
    1: "Honestly it looks like some shade of green to me",  # judged B, after one unusable reply
    2: "There are spiders everywhere in this picture",  # the judge says Z: no option
    3: "I would rather talk about something else today",  # the judge never answers usably: a random pick
    4: "这是一种非常鲜艳的颜色，像火焰一样",  # a Chinese question: the Chinese prompt, judged A
}


def judge_reply(tries: dict[int, int]) -> Reply:
    """Letters by the answer the prompt quotes; "no idea" for the rest (and once for answer 1)."""

    def reply(body: dict) -> str:
        prompt = body["messages"][0]["content"]
        quoted = re.search(r"(?:Answer|答案): (.*)\n(?:Your output|输出): $", prompt).group(1)
        index = next(i for i, text in PREDICTIONS.items() if text == quoted)
        tries[index] = tries.get(index, 0) + 1
        if index == 1:
            return "Let me think." if tries[index] == 1 else "The answer is B."
        if index == 4:
            return "A" if prompt.startswith("你是一个帮助我匹配答案") else "no idea"
        return "Z" if index == 2 else "no idea"

    return reply


@pytest.fixture
def judged_files(tmp_path):
    rows = colour_questions() + [
        {
            **colour_questions()[0],
            "index": 4,
            "question": "图中是什么颜色？",
            "A": "红色",
            "B": "绿色",
            "C": "",
            "D": "",
        }
    ]
    tsv = write_tsv(tmp_path / "judged.tsv", rows)
    predictions = tmp_path / "m_judged.csv"
    pd.DataFrame({"index": list(PREDICTIONS), "prediction": list(PREDICTIONS.values())}).to_csv(
        predictions, index=False
    )
    return tsv, predictions


def rescore_with_judge(tsv, predictions, url: str, work_dir):
    args = ["mmbench", "--predictions", str(predictions), "--data-path", str(tsv), "--work-dir", str(work_dir)]
    return vltool(*args, "--no-circular", "--judge-api-base", url)


def judge(url: str, concurrency: int = 8) -> Judge:
    return Judge(ChatClient(ApiEndpoint(url, concurrency=concurrency, backoff_s=0.01)), "judge-llm")


def test_the_judge_reads_what_exact_matching_cannot(judged_files, tmp_path):
    tsv, predictions = judged_files
    tries: dict[int, int] = {}
    with stand_in(judge_reply(tries), models=("judge-llm",)) as server:
        result = rescore_with_judge(tsv, predictions, server.url, tmp_path / "a")
        assert result.returncode == 0, result.stderr[-3000:]
        # answer 1 asked twice (one unusable reply), answer 3 three times, then the random pick; 0 never
        assert tries == {1: 2, 2: 1, 3: 3, 4: 1}
        # the random pick is seeded by the question: the same with one request at a time
        one_by_one = rescore_mmbench(predictions, tsv, tmp_path / "b", False, Console(quiet=True), judge(server.url, 1))
    assert {b["model"] for b in server.bodies} == {"judge-llm"}
    scored = pd.read_excel(tmp_path / "a" / "m_judged_scored.xlsx").set_index("index")
    assert scored["rule"].to_dict() == {
        0: "letter",
        1: "judge",
        2: "judge: no option",
        3: "judge failed: random",
        4: "judge",
    }
    assert scored.loc[[0, 1, 2, 4], "choice"].fillna("").tolist() == ["A", "B", "", "A"]
    assert scored.loc[[0, 1, 2, 4], "hit"].tolist() == [1, 1, 0, 1]
    random_pick = one_by_one.scored.rows.set_index("index").loc[3, "choice"]
    assert random_pick in ("A", "B", "") and str(scored.loc[3, "choice"]).replace("nan", "") == random_pick
    assert f"then the LLM judge judge-llm at {server.url} for the 4 answers they left unresolved" in result.stderr
    assert "By rule: letter 1, judge 2, judge: no option 1, judge failed: random 1." in result.stderr


def test_judge_verdicts_are_kept_and_a_rescore_asks_only_what_is_missing(judged_files, tmp_path):
    tsv, predictions = judged_files
    tries: dict[int, int] = {}
    with stand_in(judge_reply(tries), models=("judge-llm",)) as server:
        first = rescore_mmbench(predictions, tsv, tmp_path, False, Console(quiet=True), judge(server.url))
        kept = tmp_path / "m_judged_judge.jsonl"
        assert [json.loads(line)["rule"] for line in kept.read_text().splitlines()] == [
            "judge: no option",  # answer 2, on the first round
            "judge",  # answer 4, on the first round
            "judge",  # answer 1, on the second
        ]  # answer 3's random pick is not kept: the next run asks again
        with kept.open("a") as file:
            file.write('{"rule": "judge"}\n[1, 2]\n\xff\n')  # lines edited by hand: no verdict in them
            file.write('{"key": "cut short by a cra')  # a crash mid-line
        tries.clear()
        console = Console(record=True, width=500)
        second = rescore_mmbench(predictions, tsv, tmp_path, False, console, judge(server.url))
    assert tries == {3: 3}
    assert kept.read_text().endswith('{"key": "cut short by a cra')  # nothing new to keep: untouched
    columns = ["choice", "rule"]
    pd.testing.assert_frame_equal(second.scored.rows[columns], first.scored.rows[columns])
    assert f"3 verdict(s) reused from {kept}." in console.export_text()


def test_a_verdict_after_a_cut_line_starts_a_line_of_its_own(tmp_path):
    path = tmp_path / "judge.jsonl"
    path.write_text('{"key": "cut short')
    body = {"model": "judge-llm", "messages": [{"role": "user", "content": "which option?"}]}
    VerdictCache(path).put(body, Extraction("B", "judge"))
    assert VerdictCache(path).get(body) == Extraction("B", "judge")
    assert VerdictCache(path).get({**body, "model": "other"}) is None


def test_a_judge_that_refuses_every_request_stops_the_run(judged_files, tmp_path):
    tsv, predictions = judged_files
    with stand_in(lambda body: (401, "invalid key", {})) as server:
        with pytest.raises(ApiRequestError) as refused:
            rescore_mmbench(predictions, tsv, tmp_path, False, Console(quiet=True), judge(server.url))
    assert str(refused.value) == (
        f"LLM judge: {server.url}/chat/completions: HTTP 401: invalid key; "
        "check --judge-api-base, --judge-model and the key."
    )
    assert len(server.bodies) == 4  # one try each: retrying cannot fix a refused key


# ---- the command line


def test_local_model_arguments_beside_api_base_are_refused(monkeypatch):
    def refusal(model=None, batch_size=None, **options) -> str:
        with pytest.raises(ConfigError) as refused:
            refuse_local_model_options(model, batch_size, ModelOptions(**options))
        return str(refused.value)

    assert refusal("model_dir") == "give MODEL (a local model) or --api-base URL (a server), not both."
    assert refusal(bits=4, device="cpu") == (
        "--bits, --device: model-loading options, but --api-base asks a server that loaded its own model."
    )
    assert "--api-concurrency sets the requests in flight" in refusal(batch_size=2)
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    assert "unset NPROC_PER_NODE" in refusal()


def test_an_unreachable_server_is_one_line():
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    result = vltool("mmbench", "--data-path", str(CCBENCH), "--api-base", nobody)
    assert last_line(result).startswith(f"error: {nobody}/models: cannot reach the server (ConnectError")


@pytest.mark.slow
def test_mmbench_and_eval_through_vltool_serve_match_the_local_run(chat_model, tmp_path):
    tsv_args = ["--data-path", str(CCBENCH), "--no-circular", "--max-new-tokens", "4"]
    local = vltool("mmbench", str(chat_model), *tsv_args, "--batch-size", "1", "--work-dir", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    custom = write_custom(tmp_path)
    eval_args = ["eval", "--benchmark", "custom", "--data-path", str(custom), "--max-new-tokens", "6"]
    local_eval = vltool(*eval_args, str(chat_model), "--batch-size", "1", "--work-dir", str(tmp_path / "local"))
    assert local_eval.returncode == 0, local_eval.stderr[-3000:]
    with served(chat_model) as server:
        api = ["--api-base", f"{server}/v1", "--api-concurrency", "3"]
        remote = vltool("mmbench", *tsv_args, *api, "--work-dir", str(tmp_path / "api"))
        assert remote.returncode == 0, remote.stderr[-3000:] + server.log()[-3000:]
        remote_eval = vltool(*eval_args, *api, "--work-dir", str(tmp_path / "api"))
        assert remote_eval.returncode == 0, remote_eval.stderr[-3000:] + server.log()[-3000:]
    name = chat_model.name  # vltool serve names the model after its folder, as the local run names its files
    local_xlsx = pd.read_excel(tmp_path / "local" / f"{name}_ccbench_samples.xlsx")
    pd.testing.assert_frame_equal(pd.read_excel(tmp_path / "api" / f"{name}_ccbench_samples.xlsx"), local_xlsx)
    assert local_xlsx["prediction"].nunique() > 3  # varied answers, so matching them means something
    for stem, suffix in ((f"{name}_ccbench_samples", "_acc.csv"), (f"{name}_custom", "_results.csv")):
        assert (tmp_path / "api" / f"{stem}{suffix}").read_text() == (
            tmp_path / "local" / f"{stem}{suffix}"
        ).read_text()
    local_lines = (tmp_path / "local" / f"{name}_custom_predictions.jsonl").read_text()
    assert (tmp_path / "api" / f"{name}_custom_predictions.jsonl").read_text() == local_lines
    settings = json.loads((tmp_path / "api" / f"{name}_ccbench_samples_cache" / "settings.json").read_text())
    assert settings == {"api_base": f"{server}/v1", "api_model": name, "max_new_tokens": 4}
    # the server is gone: a rerun naming the model answers every row from the cache
    rerun = vltool("mmbench", *tsv_args, *api, "--model", name, "--work-dir", str(tmp_path / "api"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]


def write_custom(folder):
    for name, colour in (("red.png", "red"), ("blue.png", "blue")):
        Image.new("RGB", (40, 30), colour).save(folder / name)
    lines = [
        {"id": "q1", "image": "red.png", "question": "What colour is it?", "answer": "red"},
        {
            "id": "q2",
            "image": ["red.png", "blue.png"],
            "question": "Which one is blue?",
            "options": ["1", "2"],
            "answer": "B",
        },
        {"id": "q3", "question": "What is 2 plus 2?", "answer": "4"},
    ]
    (folder / "mine.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / "mine.jsonl"
