"""``vltool mmbench`` and ``vltool eval`` as users run them, on a tiny random-weight model."""

import json
import os
import subprocess

import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from tests.conftest import ASSETS
from tests.engine.train_runs import vltool_command
from vltool.eval.circular import OFFSET
from vltool.eval.mmbench import load_questions, mmbench_requests
from vltool.infer.load import load_pipeline
from vltool.infer.pipeline import GenerationOptions
from vltool.templates.message import Message

CCBENCH = ASSETS / "benchmarks" / "ccbench_samples.tsv"


def vltool(*args: str, nproc: int = 1, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NPROC_PER_NODE")}
    if nproc > 1:
        env["NPROC_PER_NODE"] = str(nproc)
    return subprocess.run(vltool_command(*args), env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


def last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def ccbench_run(chat_model, module_tmp):
    work_dir = module_tmp("ccbench")
    args = ["mmbench", str(chat_model), "--data-path", str(CCBENCH), "--work-dir", str(work_dir)]
    result = vltool(*args, "--max-new-tokens", "4", "--batch-size", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return work_dir, result


def test_ccbench_sample_end_to_end(chat_model, ccbench_run):
    work_dir, result = ccbench_run
    stem = f"{chat_model.name}_ccbench_samples"
    predictions = pd.read_excel(work_dir / f"{stem}.xlsx")
    assert len(predictions) == 14 * 4 and set(predictions["index"] // OFFSET) == {0, 1, 2, 3}
    accuracy = pd.read_csv(work_dir / f"{stem}_acc.csv")
    assert list(accuracy.columns[:2]) == ["split", "Overall"] and len(accuracy.columns) == 2 + 7  # 7 categories
    assert (work_dir / f"{stem}_acc.png").stat().st_size > 1000
    assert "14 questions (CircularEval: 56 passes, built here)" in result.stderr
    assert "answers unresolved" in result.stderr and result.stdout == ""
    # the CLI's answers are the one inference path's: the batched pipeline on the same Chinese prompt
    pipeline = load_pipeline(chat_model)
    table, rows = load_questions(CCBENCH, True, Console(quiet=True))
    request = mmbench_requests(table, rows)[5]
    assert request.text.endswith("\n请直接回答选项字母。")
    expected = pipeline.answer([[Message("user", request.text)]], [request.images()], GenerationOptions(4))
    assert predictions.set_index("index").loc[int(request.key), "prediction"] == expected[0]


def test_rescoring_the_saved_file_gives_the_same_scores(chat_model, ccbench_run, tmp_path):
    work_dir, _ = ccbench_run
    stem = f"{chat_model.name}_ccbench_samples"
    result = vltool(
        "mmbench",
        "--predictions",
        str(work_dir / f"{stem}.xlsx"),
        "--data-path",
        str(CCBENCH),
        "--work-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert pd.read_csv(tmp_path / f"{stem}_acc.csv").equals(pd.read_csv(work_dir / f"{stem}_acc.csv"))


def test_two_processes_share_the_rows(chat_model, ccbench_run, tmp_path):
    work_dir, _ = ccbench_run
    args = ["mmbench", str(chat_model), "--data-path", str(CCBENCH), "--work-dir", str(tmp_path)]
    result = vltool(*args, "--max-new-tokens", "4", "--batch-size", "1", nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    stem = f"{chat_model.name}_ccbench_samples"
    caches = sorted(p.name for p in (tmp_path / f"{stem}_cache").glob("rank*.jsonl"))
    assert caches == ["rank0.jsonl", "rank1.jsonl"]
    pd.testing.assert_frame_equal(pd.read_excel(tmp_path / f"{stem}.xlsx"), pd.read_excel(work_dir / f"{stem}.xlsx"))


def test_mmbench_bad_input(chat_model, tmp_path):
    table = pd.read_csv(CCBENCH, sep="\t").drop(columns=["question"])
    table.to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    result = vltool("mmbench", str(chat_model), "--data-path", str(tmp_path / "bad.tsv"))
    assert last_line(result).startswith(f"error: {tmp_path / 'bad.tsv'}: missing column(s) question;")
    both = vltool("mmbench", str(chat_model), "--predictions", "p.xlsx", "--data-path", str(CCBENCH))
    assert "not both" in last_line(both)
    assert "missing MODEL" in last_line(vltool("mmbench", "--data-path", str(CCBENCH)))


@pytest.fixture
def custom_data(tmp_path):
    for name, colour in (("red.png", "red"), ("blue.png", "blue")):
        Image.new("RGB", (40, 30), colour).save(tmp_path / name)
    lines = [
        {"id": "q1", "image": "red.png", "question": "What colour is it?", "answer": "red", "category": "colour"},
        {"id": "q2", "image": "blue.png", "question": "Which colour?", "options": ["red", "blue"], "answer": "B"},
        {"id": "q3", "question": "What is 2 plus 2?", "answer": "4", "category": "text"},
    ]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path / "mine.jsonl"


def test_eval_custom_end_to_end_and_rescoring(chat_model, custom_data, tmp_path):
    work_dir = tmp_path / "out"
    args = ["eval", str(chat_model), "--benchmark", "custom", "--data-path", str(custom_data)]
    result = vltool(*args, "--work-dir", str(work_dir), "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr[-3000:]
    stem = f"{chat_model.name}_custom"
    lines = [json.loads(line) for line in (work_dir / f"{stem}_predictions.jsonl").read_text().splitlines()]
    assert [line["key"] for line in lines] == ["q1", "q2", "q3"] and lines[2]["images"] == []
    table = pd.read_csv(work_dir / f"{stem}_results.csv", index_col="name")
    assert table.loc["overall", "questions"] == 3 and (work_dir / f"{stem}_results.png").stat().st_size > 1000
    # the tiny model answers noise; a predictions file with the right answers scores 100
    for line, answer in zip(lines, ["Red.", "B", "4"], strict=True):
        line["prediction"] = answer
    (tmp_path / "right.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    rescored = vltool(
        "eval", "--benchmark", "custom", "--predictions", str(tmp_path / "right.jsonl"), "--data-path", str(custom_data)
    )
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    assert pd.read_csv(tmp_path / "right_results.csv", index_col="name").loc["overall", "accuracy"] == 100.0


def test_eval_bad_input(chat_model, custom_data, tmp_path):
    unknown = vltool("eval", str(chat_model), "--benchmark", "mmmu", "--data-path", str(custom_data))
    assert last_line(unknown) == (
        "error: unknown benchmark 'mmmu'; choose one of mme, pope, seed, scienceqa, textvqa, gqa, refcoco, custom."
    )
    (tmp_path / "short.jsonl").write_text(json.dumps({"key": "q1", "prediction": "red"}) + "\n")
    mismatch = vltool(
        "eval", "--benchmark", "custom", "--predictions", str(tmp_path / "short.jsonl"), "--data-path", str(custom_data)
    )
    assert last_line(mismatch) == (
        f"error: {tmp_path / 'short.jsonl'}: 2 question(s) have no prediction (q2, q3); "
        "score it against the data it was made from."
    )
