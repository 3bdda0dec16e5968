"""The demo: its data (options shuffled, a dev set for CircularEval) and `vltool train demo` end to end."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vltool.data.demo_task import COLOURS, MC_QUESTIONS, STAMP, write_demo_dataset
from vltool.eval.circular import add_passes
from vltool.eval.extraction import extract_choice
from vltool.eval.mmbench_data import options_of, read_mmbench_tsv


def picture_colour_and_position(image: Image.Image) -> tuple[str, str]:
    """What the picture shows, read from its pixels: the nearest colour and the quadrant of the shape."""
    pixels = np.asarray(image.convert("RGB"), dtype=float)
    shape = pixels.max(axis=2) - pixels.min(axis=2) > 60  # the background is grey
    mean = pixels[shape].mean(axis=0)
    colour = min(COLOURS, key=lambda name: np.abs(mean - COLOURS[name]).sum())
    rows, cols = np.nonzero(shape)
    half = image.width / 2
    return colour, ("top" if rows.mean() < half else "bottom") + (" left" if cols.mean() < half else " right")


def mc_turns(records: list[dict]) -> list[tuple[str, dict[str, str], str]]:
    """(image, options, answer) of every multiple-choice turn of the training records."""
    turns = []
    for record in records:
        messages = record["conversations"]
        for question, answer in zip(messages[::2], messages[1::2], strict=True):
            lines = question["value"].splitlines()
            options = {line[0]: line[3:] for line in lines if line[1:3] == ". "}
            if options:
                turns.append((record["image"], options, answer["value"]))
    return turns


@pytest.fixture(scope="module")
def demo_data(module_tmp):
    root = module_tmp("demo_data")
    write_demo_dataset(str(root), num_train=800, num_eval=48)
    return root


def test_training_questions_list_their_options_in_a_fresh_order(demo_data):
    turns = mc_turns(json.loads((demo_data / "train.json").read_text()))
    assert len(turns) > 600
    kinds = {frozenset(options): kind for kind, (_, options, _) in MC_QUESTIONS.items()}
    orders = Counter()
    picked = Counter()
    for _, options, answer in turns:
        assert list(options) == list("ABCD") and frozenset(options.values()) in kinds
        choice = extract_choice(answer, options)  # the answer names exactly one option, as the scorer reads it
        assert choice.rule == "option text" and answer == options[choice.choice].capitalize() + "."
        orders[tuple(options.values())] += 1
        picked[choice.choice] += 1
    assert len(orders) > 50  # of 3 x 24 orders
    # the right option sits under every letter equally often: its place says nothing
    assert set(picked) == set("ABCD") and all(abs(n / len(turns) - 0.25) < 0.05 for n in picked.values()), picked
    # the answer names what the picture shows, wherever the shuffle put it
    checked = 0
    for image, options, answer in turns:
        colour, position = picture_colour_and_position(Image.open(demo_data / image))
        if set(options.values()) == set(COLOURS):
            assert answer.lower() == colour + ".", image
            checked += 1
        elif "top left" in options.values():
            assert answer.lower() == position + ".", image
            checked += 1
    assert checked > 300


def test_the_dev_set_is_asked_once_per_rotation(demo_data):
    table = read_mmbench_tsv(demo_data / "dev.tsv")
    rows = table.rows
    assert len(rows) == 48 and rows["answer"].value_counts().size == 4
    for _, row in rows.iterrows():
        colour, position = picture_colour_and_position(table.image(row))
        if row["category"] == "colour":
            assert row[row["answer"]] == colour
        elif row["category"] == "position":
            assert row[row["answer"]] == position
    passes = add_passes(rows)  # what the training hook and `vltool mmbench` ask
    assert len(passes) == 4 * 48
    for index in rows["index"]:
        group = passes[passes["index"] % 1_000_000 == index]
        right = {row[row["answer"]] for _, row in group.iterrows()}
        assert len(right) == 1 and sorted(group["answer"]) == list("ABCD")  # the answer visits every letter
        assert {frozenset(options_of(row).values()) for _, row in group.iterrows()} == {
            frozenset(options_of(group.iloc[0]).values())
        }


def test_a_dataset_from_the_old_generator_is_rewritten(tmp_path):
    write_demo_dataset(str(tmp_path), num_train=10, num_eval=3)
    stamp = json.loads((tmp_path / STAMP).read_text())
    old = {key: value for key, value in stamp.items() if key != "version"}  # what the fixed-order generator wrote
    (tmp_path / STAMP).write_text(json.dumps(old))
    (tmp_path / "train.json").write_text("[]")
    write_demo_dataset(str(tmp_path), num_train=10, num_eval=3)
    assert len(json.loads((tmp_path / "train.json").read_text())) == 10
    assert json.loads((tmp_path / STAMP).read_text()) == stamp


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
    assert last.is_file() and last.name == "iter_700.pth"
    scalars = next(work_dir.glob("*/vis_data/scalars.json"))
    rows = [json.loads(line) for line in scalars.read_text().splitlines()]
    assert [r["step"] for r in rows[:3]] == [10, 20, 30] and all("loss" in r for r in rows)
    assert all("tokens_per_sec" in r for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] / 5
    assert (work_dir / "loss_curve.png").stat().st_size > 5000

    accuracy = json.loads((work_dir / "heldout_accuracy.json").read_text())
    assert accuracy["questions"] == 240 and accuracy["passes"] == 960 and accuracy["mode"] == "circular"
    assert accuracy["circular_chance"] == 0.25**4
    # every option order asked, right only if right every time: reading the picture, not a letter's place
    assert accuracy["accuracy"] >= 0.75, accuracy  # the default seed reached 0.983 on the 2-core VM
    assert accuracy["accuracy"] <= accuracy["vanilla_accuracy"]
    last_line = result.stdout.strip().splitlines()[-1]
    assert "held-out circular accuracy" in last_line and f"{accuracy['accuracy']:.1%}" in last_line
