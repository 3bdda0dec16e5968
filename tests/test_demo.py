"""`vltool train demo` end to end: data written, model trained from random weights, held-out accuracy."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


@pytest.mark.slow
def test_demo_learns_and_leaves_mmengine_files(tmp_path):
    work_dir = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "-m", "vltool", "train", "demo", "--work-dir", str(work_dir)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    data = tmp_path / "data" / "vltool_demo"
    records = json.loads((data / "train.json").read_text())
    assert len(records) == 6000
    assert any("image" not in r for r in records)  # text-only samples
    assert any(len(r["conversations"]) > 2 for r in records)  # multi-turn samples
    dev = pd.read_csv(data / "dev.tsv", sep="\t")
    assert list(dev.columns) == [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "l2-category",
        "split",
        "image",
    ]
    assert dev.groupby("category")["question"].nunique().eq(1).all()  # same text for every image

    assert (work_dir / "demo.py").is_file()  # the dumped config
    last = Path((work_dir / "last_checkpoint").read_text().strip())
    assert last.is_file() and last.name == "iter_750.pth"
    scalars = next(work_dir.glob("*/vis_data/scalars.json"))
    rows = [json.loads(line) for line in scalars.read_text().splitlines()]
    assert [r["step"] for r in rows[:3]] == [10, 20, 30] and all("loss" in r for r in rows)
    assert all("tokens_per_sec" in r for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] / 5
    assert (work_dir / "loss_curve.png").stat().st_size > 5000

    accuracy = json.loads((work_dir / "heldout_accuracy.json").read_text())
    assert accuracy["questions"] == 240
    assert accuracy["mode"] == "circular" and 0 <= accuracy["accuracy"] <= accuracy["vanilla_accuracy"]
    # vanilla only: the demo's options come in one order, so circular stays near 0 (issue 15, fault 7 is open)
    assert accuracy["vanilla_accuracy"] >= 0.75, accuracy  # chance is 0.25; the default seed reached 0.97 here
