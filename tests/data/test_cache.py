"""The pre-tokenisation cache: reused while nothing changes, rebuilt when anything does, written atomically."""

import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import tiny_image_processor
from PIL import Image

import vltool.data.cache as cache_module
import vltool.data.dataset as dataset_module
from vltool.data.cache import cache_file, load_cached, save_cached, tokenization_key
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
    """Counts tokenised conversations and collects log lines while the dataset is built."""
    seen = {"tokenized": 0, "log": []}
    original = dataset_module.tokenize_conversation

    def counting(*args, **kwargs):
        seen["tokenized"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "tokenize_conversation", counting)
    monkeypatch.setattr(dataset_module, "print_log", lambda message, logger=None: seen["log"].append(message))
    return seen


def build(folder, tokenizer, **kwargs):
    return VisionLanguageDataset(
        str(folder / "d.json"),
        None,
        tokenizer,
        load_template("qwen_chat"),
        tiny_image_processor(32),
        image_seq_length=16,
        cache_dir=str(folder / "cache"),
        **kwargs,
    )


def test_second_build_loads_the_cache(tmp_path, tokenizer, counted):
    write_data(tmp_path)
    first = build(tmp_path, tokenizer)
    assert counted["tokenized"] == 3 and first.cache_file.is_file()
    assert counted["log"][0] == f"wrote 3 tokenised samples to {first.cache_file}"
    second = build(tmp_path, tokenizer)
    assert counted["tokenized"] == 3  # nothing tokenised again
    assert counted["log"][2] == f"loaded 3 tokenised samples from {first.cache_file}"
    assert second.cache_file == first.cache_file
    assert [c.input_ids for c in second.tokenized] == [c.input_ids for c in first.tokenized]
    assert [c.labels for c in second.tokenized] == [c.labels for c in first.tokenized]
    assert second.report == first.report and second[0]["pixel_values"].shape == (1, 3, 32, 32)


def test_rewriting_the_same_content_still_hits(tmp_path, tokenizer, counted):
    write_data(tmp_path)
    build(tmp_path, tokenizer)
    write_data(tmp_path)  # same bytes, newer mtime: the content decides
    build(tmp_path, tokenizer)
    assert counted["tokenized"] == 3


def test_changed_data_or_max_length_rebuilds(tmp_path, tokenizer, counted):
    write_data(tmp_path)
    first = build(tmp_path, tokenizer)
    write_data(tmp_path, answers=("Red.", "Blue.", "Yellow."))
    edited = build(tmp_path, tokenizer)
    assert counted["tokenized"] == 6 and edited.cache_file != first.cache_file
    assert edited.tokenized[2].input_ids != first.tokenized[2].input_ids
    shorter = build(tmp_path, tokenizer, max_length=60)
    assert counted["tokenized"] == 9 and shorter.cache_file not in (first.cache_file, edited.cache_file)
    assert max(shorter.lengths) <= 60


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


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = cache_file(tmp_path, "d.json", "k" * 64)
    save_cached(path, "k" * 64, {"old": True})

    def dump_half(value, file, protocol):
        file.write(b"\x80\x05partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.pickle, "dump", dump_half)
    with pytest.raises(OSError, match="No space left"):
        save_cached(path, "k" * 64, {"new": True})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert load_cached(path, "k" * 64) == {"old": True}  # the previous cache is intact


def test_unreadable_or_foreign_cache_is_a_miss(tmp_path, tokenizer, counted):
    write_data(tmp_path)
    first = build(tmp_path, tokenizer)
    first.cache_file.write_bytes(b"not a pickle")
    assert load_cached(first.cache_file, "any") is None
    build(tmp_path, tokenizer)
    assert counted["tokenized"] == 6
    assert load_cached(first.cache_file, "another key") is None


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
    written = list((tmp_path / "cache").glob("d-*.pkl"))
    assert len(written) == 1
    out = " ".join(result.stdout.split())
    assert f"tokenised dataset: {written[0]}" in out and "d.json: 3 samples; tokens min" in out
    assert f"train with --cfg-options train_dataloader.dataset.cache_dir={tmp_path / 'cache'}" in out


def test_prepare_dataset_errors_are_one_line(tmp_path):
    unknown = vltool("prepare-dataset", "demoo", "--cache-dir", str(tmp_path), cwd=tmp_path)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert (
        unknown.stderr.strip()
        .splitlines()[-1]
        .startswith("error: config 'demoo' is neither a file nor a shipped config name.")
    )
    no_cache = vltool("prepare-dataset", "demo", cwd=tmp_path)
    assert no_cache.returncode == 1
    assert no_cache.stderr.strip().splitlines()[-1] == (
        "error: no cache folder: pass --cache-dir DIR or set train_dataloader.dataset.cache_dir."
    )
