"""``vltool chat`` as users run it: one-shot for scripts, and an interactive session in a pseudo-terminal."""

import os
import re
import shutil
import subprocess
import time

import pexpect
import pytest
from PIL import Image
from rich.console import Console

from tests.engine.train_runs import vltool_command
from vltool.cli.chat import _report_boxes
from vltool.data.formats import load_samples
from vltool.infer.load import load_pipeline
from vltool.infer.pipeline import GenerationOptions
from vltool.infer.session import ChatImage, ChatSession

QUESTION = "What colour is it?"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def pipeline(chat_model):
    return load_pipeline(chat_model)


@pytest.fixture(scope="module")
def pictures(module_tmp):
    folder = module_tmp("pictures")
    paths = {}
    for name, size, colour in (("red", (40, 30), "red"), ("blue", (30, 44), "blue")):
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", size, colour).save(paths[name])
    (folder / "notes.png").write_text("not an image")
    paths["broken"] = folder / "notes.png"
    return paths


def picture(path) -> ChatImage:
    return ChatImage(str(path), Image.open(path).convert("RGB"))


def flat(text: str) -> str:
    """Terminal output without colour codes, carriage returns and runs of blanks."""
    return " ".join(ANSI.sub("", text).replace("\r", "").split())


def chat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``vltool chat``; output decoded without newline translation (answers may hold a bare ``\\r``)."""
    result = subprocess.run(
        vltool_command("chat", *args), input=(stdin or "").encode(), capture_output=True, timeout=300, check=False
    )
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def test_one_shot_prints_only_the_library_answer(chat_model, pipeline, pictures):
    expected = ChatSession(pipeline, GenerationOptions(max_new_tokens=12)).ask(QUESTION, [picture(pictures["red"])])
    by_flag = chat(str(chat_model), "--image", str(pictures["red"]), "--prompt", QUESTION, "--max-new-tokens", "12")
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout == expected + "\n" and len(expected) > 10
    # a prompt on standard input that is not a terminal: the same answer, for pipelines
    by_stdin = chat(str(chat_model), "--image", str(pictures["red"]), "--max-new-tokens", "12", stdin=QUESTION + "\n")
    assert by_stdin.returncode == 0 and by_stdin.stdout == by_flag.stdout


def test_one_shot_reports_bad_input_in_one_line(chat_model, pictures, tmp_path):
    missing = chat(str(chat_model), "--image", str(tmp_path / "gone.png"), "--prompt", QUESTION)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'gone.png'}: image file not found."
    empty = chat(str(chat_model), stdin="  \n")
    assert empty.returncode == 1 and "standard input is empty" in empty.stderr
    broken = tmp_path / "model"
    shutil.copytree(chat_model, broken)
    shutil.rmtree(broken / "projector")
    result = chat(str(broken), "--prompt", QUESTION)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {broken} is missing projector; convert the checkpoint again into an empty folder."
    )
    refused = {
        ("--top-p", "0"): "error: invalid generation option top_p=0.0: max_new_tokens >= 1,",
        ("--device", "cuda:7"): "error: --device cuda:7: no such CUDA GPU here",
        ("--device", "gpu"): "error: unknown --device gpu; use cpu, cuda or cuda:N.",
        ("--torch-dtype", "float64"): "error: unknown --torch-dtype float64; use one of auto, bfloat16,",
        ("--prompt-template", "qwen"): "error: unknown template 'qwen'. Did you mean qwen_vl, qwen_chat",
        ("--visual-encoder", "clip"): "error: --visual-encoder needs --llava DIR",
        ("--draw-boxes", str(tmp_path / "boxes")): f"error: --draw-boxes {tmp_path / 'boxes'}: give an image file",
        ("--draw-boxes", "/no/such/dir/b.jpg"): "error: --draw-boxes /no/such/dir/b.jpg: folder /no/such/dir does",
    }
    for option, message in refused.items():
        result = chat(str(chat_model), "--prompt", QUESTION, *option)
        assert result.returncode == 1 and result.stdout == "", option
        assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
        assert "Traceback" not in result.stderr


def test_bfloat16_weights_answer(chat_model, pictures):
    result = chat(str(chat_model), "--torch-dtype", "bfloat16", "--image", str(pictures["red"]), "--prompt", QUESTION)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


def spawn(*args: str) -> pexpect.spawn:
    command = vltool_command("chat", *args)
    child = pexpect.spawn(command[0], command[1:], encoding="utf-8", timeout=120, dimensions=(40, 1000))
    child.expect_exact(">>> ")
    return child


def say(child: pexpect.spawn, line: str) -> str:
    """Send a line; everything printed until the next prompt, flattened."""
    child.sendline(line)
    child.expect_exact(">>> ")
    return flat(child.before)


def test_interactive_session(chat_model, pipeline, pictures, tmp_path):
    options = GenerationOptions(max_new_tokens=8)
    reference = ChatSession(pipeline, options)
    child = spawn(str(chat_model), "--image", str(pictures["red"]), "--max-new-tokens", "8")

    first = say(child, QUESTION)
    assert flat(reference.ask(QUESTION, [picture(pictures["red"])])) in first
    assert "0 of" in first  # nothing to reuse on the first turn

    assert "1 image(s) attached to your next message" in say(child, f"/image {pictures['blue']}")
    second = say(child, "And this one?")
    assert flat(reference.ask("And this one?", [picture(pictures["blue"])])) in second
    reused = re.search(r"(\d+) of (\d+) prompt tokens reused", second)
    # the history came from the cache, as in the library's session
    assert reused and (int(reused[1]), int(reused[2])) == (reference.stats.reused_tokens, reference.stats.prompt_tokens)
    assert reference.stats.reused_tokens > len(pipeline.prompt_ids(reference.conversation()[:1]))

    history = say(child, "/history")
    assert f"user: [image: {pictures['red']}] {QUESTION}" in history and "assistant:" in history
    saved = tmp_path / "chat.json"
    assert "saved 2 turn(s)" in say(child, f"/save {saved}")
    (sample,) = load_samples(saved)
    assert [(m.role, m.content) for m in sample.messages] == [(m.role, m.content) for m in reference.messages]
    assert sample.images == [str(pictures["red"]), str(pictures["blue"])]

    # bad images: a message, and the session goes on
    assert "image not attached" in say(child, "/image /no/such.png") and "image file not found" in child.before
    assert "not an image" in say(child, f"/image {pictures['broken']}")
    assert "unknown command /colour" in say(child, "/colour")

    assert "conversation cleared" in say(child, "/reset")
    after_reset = say(child, QUESTION)
    assert flat(ChatSession(pipeline, options).ask(QUESTION)) in after_reset
    assert "[image:" not in say(child, "/history")

    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_and_ctrl_d_leaves(chat_model, pictures):
    child = spawn(str(chat_model), "--image", str(pictures["red"]), "--max-new-tokens", "100000")
    child.sendline(QUESTION)
    child.expect_exact(QUESTION)  # the terminal's echo of the line
    child.expect(r"\n[^\r\n]{20}")  # the answer is streaming
    child.sendintr()
    child.expect_exact("stopped")
    child.expect_exact(">>> ")
    history = say(child, "/history")
    answer = history.split("assistant:")[1]
    assert len(answer.split()) > 0
    # a Ctrl-C that lands between the prompt's print and the terminal read is only seen at the next
    # keypress (as in any readline program); a person never presses it within microseconds of the prompt
    time.sleep(0.5)
    child.sendintr()  # Ctrl-C at the prompt only drops the line
    child.expect_exact(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_boxes_are_shown_in_pixels_and_drawn(pipeline, pictures, tmp_path):
    session = ChatSession(pipeline)
    session.images.append(ChatImage("street.jpg", Image.new("RGB", (640, 480), "white")))
    console = Console(record=True, width=200)
    out = tmp_path / "boxes.jpg"
    _report_boxes(session, "<ref>a car</ref><box>(100,200),(500,750)</box> on the left", console, out, True)
    shown = console.export_text()
    assert "in pixels of street.jpg (640x480): a car [64, 96, 320, 360] on the left" in shown
    assert "1 box(es) drawn on street.jpg" in shown
    console = Console(record=True, width=200)
    _report_boxes(session, "<box>(1,2),(3,4)</box>", console, tmp_path / "gone" / "b.jpg", False)
    assert "boxes not drawn:" in console.export_text()  # a message; the session goes on
    drawn = Image.open(out)
    assert drawn.size == (640, 480) and sum(drawn.getpixel((65, 240))) < 600  # the box's left edge is coloured
    assert drawn.getpixel((200, 300)) == (255, 255, 255)  # inside stays white


def test_bits_4_answers_from_a_quantised_llm(chat_model, pictures):
    result = chat(str(chat_model), "--bits", "4", "--prompt", QUESTION, "--max-new-tokens", "4")
    assert result.returncode == 0 and result.stdout.strip()
    assert (
        chat(str(chat_model), "--bits", "3", "--prompt", QUESTION)
        .stderr.strip()
        .endswith("--bits 3 is not supported; use 4 or 8, or leave it out for full precision.")
    )


def test_help_lists_the_options():
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(vltool_command("chat", "--help"), capture_output=True, text=True, check=False, env=env)
    flags = ("--image", "--prompt", "--temperature", "--top-p", "--top-k", "--repetition-penalty", "--bits")
    assert result.returncode == 0 and all(flag in result.stdout for flag in flags), result.stdout


def test_sampling_with_a_seed_repeats_and_matches_the_library(chat_model, pipeline, pictures):
    from transformers import set_seed

    flags = ["--temperature", "0.9", "--top-k", "40", "--top-p", "0.95", "--seed", "3", "--max-new-tokens", "10"]
    args = [str(chat_model), "--image", str(pictures["red"]), "--system", "Be brief.", "--no-stream", *flags]
    first, second = chat(*args, "--prompt", QUESTION), chat(*args, "--prompt", QUESTION)
    assert first.returncode == 0 and first.stdout == second.stdout
    set_seed(3)
    options = GenerationOptions(max_new_tokens=10, temperature=0.9, top_p=0.95, top_k=40)
    expected = ChatSession(pipeline, options, system="Be brief.").ask(QUESTION, [picture(pictures["red"])])
    assert first.stdout == expected + "\n"
    greedy = ChatSession(pipeline, GenerationOptions(max_new_tokens=10), system="Be brief.")
    assert greedy.ask(QUESTION, [picture(pictures["red"])]) != expected
