"""The prepared-dataset cache: reused while nothing changes, rebuilt when anything does, written atomically."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import tiny_image_processor
from PIL import Image

import vltool.data.dataset as dataset_module
import vltool.data.storage as storage_module
from vltool.data.cache import tokenization_key
from vltool.data.dataset import VisionLanguageDataset
from vltool.model.tokenizer import add_image_token, load_qwen2_tokenizer
from vltool.templates import load_template


def write_data(folder, answers=("Red.", "Blue.", "Green.")):
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")
    ask = {"from": "human", "value": "<image>\nColour?"}
    records = [
        {"id": f"s{i}", "image": "a.png", "conversations": [ask, {"from": "gpt", "value": answer}]}
        for i, answer in enumerate(answers)
    ]
    (folder / "d.json").write_text(json.dumps(records))


@pytest.fixture
def counted(monkeypatch):
    """Counts preparations and collects log lines while the dataset is built."""
    seen = {"prepared": 0, "log": []}
    original = dataset_module._prepare

    def counting(*args, **kwargs):
        seen["prepared"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "_prepare", counting)
    monkeypatch.setattr(dataset_module, "print_log", lambda message, **kwargs: seen["log"].append(message))
    return seen


def build(folder, tokenizer, template="qwen_chat", **kwargs):
    return VisionLanguageDataset(
        str(folder / "d.json"),
        None,
        tokenizer,
        load_template(template),
        tiny_image_processor(32),
        image_seq_length=16,
        cache_dir=str(folder / "cache"),
        **kwargs,
    )


def items(dataset):
    return [(dataset[i]["input_ids"].tolist(), dataset[i]["labels"].tolist()) for i in range(len(dataset))]


def test_second_build_maps_the_cache(tmp_path, tokenizer, counted):
    write_data(tmp_path)
    first = build(tmp_path, tokenizer)
    assert counted["prepared"] == 1 and (first.store_path / "tokens.bin").is_file()
    second = build(tmp_path, tokenizer)
    assert counted["prepared"] == 1  # nothing tokenised again
    assert f"loaded 3 prepared samples from {first.store_path}" in counted["log"]
    assert second.store_path == first.store_path and items(second) == items(first)
    assert isinstance(second.store.tokens, np.memmap)  # mapped, not read into memory
    assert second.report.summary(2048, "truncate") == first.report.summary(2048, "truncate")
    assert second[0]["pixel_values"].shape == (1, 3, 32, 32)
    assert not list((tmp_path / "cache").glob("*.pkl")) and not list(first.store_path.glob("*.pkl"))


def test_rewriting_the_same_content_still_hits(tmp_path, tokenizer, counted):
    write_data(tmp_path)
    build(tmp_path, tokenizer)
    write_data(tmp_path)  # same bytes, newer mtime: the content decides
    build(tmp_path, tokenizer)
    assert counted["prepared"] == 1


def test_changed_data_tokenizer_template_or_max_length_rebuilds(tmp_path, tokenizer, counted):
    write_data(tmp_path)
    first = build(tmp_path, tokenizer)
    write_data(tmp_path, answers=("Red.", "Blue.", "Yellow."))
    edited = build(tmp_path, tokenizer)
    assert counted["prepared"] == 2 and edited.store_path != first.store_path
    assert items(edited)[2] != items(first)[2]
    shorter = build(tmp_path, tokenizer, max_length=60)
    assert counted["prepared"] == 3 and max(shorter.lengths) <= 60
    vicuna = build(tmp_path, tokenizer, template="vicuna")
    other_tokenizer = load_qwen2_tokenizer()
    add_image_token(other_tokenizer)
    other_tokenizer.add_tokens(["<box>"], special_tokens=True)
    retokenised = build(tmp_path, other_tokenizer)
    assert counted["prepared"] == 5
    folders = {d.store_path for d in (first, edited, shorter, vicuna, retokenised)}
    assert len(folders) == 5 and all(folder.is_dir() for folder in folders)


def test_key_covers_every_tokenisation_input(tmp_path, tokenizer):
    write_data(tmp_path)
    template = load_template("qwen_chat")
    args = dict(image_seq_length=16, max_length=2048, truncation="truncate", dataset_format="auto")
    base = tokenization_key(tmp_path / "d.json", tokenizer, template, **args)
    assert tokenization_key(tmp_path / "d.json", tokenizer, template, **args) == base
    other_tokenizer = load_qwen2_tokenizer()
    add_image_token(other_tokenizer)
    assert tokenization_key(tmp_path / "d.json", other_tokenizer, template, **args) == base
    other_tokenizer.add_tokens(["<box>"], special_tokens=True)
    changed = [
        tokenization_key(tmp_path / "d.json", other_tokenizer, template, **args),
        tokenization_key(tmp_path / "d.json", tokenizer, load_template("vicuna"), **args),
        tokenization_key(tmp_path / "d.json", tokenizer, dataclasses.replace(template, default_system="Hi."), **args),
    ]
    for name, value in [("image_seq_length", 17), ("truncation", "drop"), ("dataset_format", "llava")]:
        changed.append(tokenization_key(tmp_path / "d.json", tokenizer, template, **{**args, name: value}))
    assert base not in changed and len(set(changed)) == len(changed)


def test_failed_write_leaves_nothing_to_read(tmp_path, tokenizer, counted, monkeypatch):
    write_data(tmp_path)
    original = np.save

    def disk_full(path, array):
        if str(path).endswith("spans.npy"):
            raise OSError(28, "No space left on device")
        original(path, array)

    monkeypatch.setattr(storage_module.np, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        build(tmp_path, tokenizer)
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written folder, not even a temporary one
    monkeypatch.setattr(storage_module.np, "save", original)
    assert len(build(tmp_path, tokenizer)) == 3 and counted["prepared"] == 2


def test_damaged_cache_is_prepared_again(tmp_path, tokenizer, counted):
    write_data(tmp_path)
    first = build(tmp_path, tokenizer)
    expected = items(first)
    del first
    (build(tmp_path, tokenizer).store_path / "tokens.bin").write_bytes(b"\0" * 12)  # truncated by hand
    again = build(tmp_path, tokenizer)
    assert counted["prepared"] == 2 and items(again) == expected
    assert any("preparing again" in line and "tokens.bin" in line for line in counted["log"])


KILLED_PREPARATION = """
import sys, json
from conftest import tiny_image_processor
from vltool.data.dataset import VisionLanguageDataset
from vltool.model.tokenizer import add_image_token, load_qwen2_tokenizer
from vltool.templates import load_template
import vltool.data.parallel as parallel

original = parallel.ChunkPreparer.__call__
def slow(self, records):
    open(sys.argv[2], "a").write("chunk\\n")
    import time; time.sleep(30)
    return original(self, records)
parallel.ChunkPreparer.__call__ = slow
tokenizer = load_qwen2_tokenizer(); add_image_token(tokenizer)
VisionLanguageDataset(sys.argv[1], None, tokenizer, load_template("qwen_chat"), tiny_image_processor(32),
                      image_seq_length=16, cache_dir=sys.argv[3], num_proc=1)
"""


def test_killed_preparation_is_never_read(tmp_path, tokenizer, counted):
    write_data(tmp_path)
    started, cache = tmp_path / "started", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["tests", "."])}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_PREPARATION, str(tmp_path / "d.json"), str(started), str(cache)], env=env
    )
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)  # mid-preparation: tokens.bin is open, nothing renamed yet
    child.wait()
    (leftover,) = cache.iterdir()
    assert leftover.name.startswith(".d-") and leftover.name.endswith(".tmp")
    dataset = build(tmp_path, tokenizer)
    assert counted["prepared"] == 1 and len(dataset) == 3
    assert [p.name for p in cache.iterdir()] == [dataset.store_path.name]  # the dead run's folder is gone


def vltool(*args, cwd):
    return subprocess.run([sys.executable, "-m", "vltool", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_prepare_dataset_command(tmp_path):
    write_data(tmp_path)
    options = [
        "--cfg-options",
        f"train_dataloader.dataset.data_path={tmp_path / 'd.json'}",
        f"train_dataloader.dataset.image_folder={tmp_path}",
        "data_preparation=None",
    ]
    result = vltool("prepare-dataset", "demo", *options, "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (written,) = (tmp_path / "cache").glob("d-*")
    assert (written / "manifest.json").is_file()
    out = " ".join(result.stdout.split())
    assert f"prepared dataset: {written}" in out and "d.json: 3 samples; tokens min" in out
    assert f"train with --cfg-options train_dataloader.dataset.cache_dir={tmp_path / 'cache'}" in out
    default = vltool("prepare-dataset", "demo", *options, cwd=tmp_path)  # no --cache-dir: the default cache
    assert default.returncode == 0, default.stderr
    assert f"prepared dataset: {os.environ['VLTOOL_CACHE_DIR']}/{written.name}" in " ".join(default.stdout.split())


def test_prepare_dataset_errors_are_one_line(tmp_path):
    unknown = vltool("prepare-dataset", "demoo", "--cache-dir", str(tmp_path), cwd=tmp_path)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert (
        unknown.stderr.strip()
        .splitlines()[-1]
        .startswith("error: config 'demoo' is neither a file nor a shipped config name.")
    )
