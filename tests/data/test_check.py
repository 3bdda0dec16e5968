"""check_dataset lists every problem with its sample, in one or several processes, decoding or not."""

import json

import pytest
from PIL import Image

from vltool.data.check import check_dataset
from vltool.templates import load_template

ASK = {"from": "human", "value": "<image>\nColour?"}


def good(i, image="ok.png"):
    return {"id": f"g{i}", "image": image, "conversations": [ASK, {"from": "gpt", "value": "Blue."}]}


def write_jsonl(folder, bad_every=250, count=3000):
    """A JSONL file with a bad line, a missing image, a broken image or a bad sample every ``bad_every`` lines."""
    Image.new("RGB", (20, 20), "blue").save(folder / "ok.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG broken")
    lines, expected = [], []
    for i in range(count):
        kind = (i // bad_every) % 4 if i % bad_every == bad_every - 1 else None
        if kind == 0:
            lines.append('{"id": "broken json", ')
            expected.append(f"d.jsonl:{i + 1}: invalid JSON")
        elif kind == 1:
            lines.append(json.dumps(good(i, "missing.png")))
            expected.append(f"d.jsonl: sample g{i}: {folder / 'missing.png'}: image file not found")
        elif kind == 2:
            lines.append(json.dumps(good(i, "corrupt.png")))
            expected.append(f"sample g{i}: {folder / 'corrupt.png'}: cannot decode image")
        elif kind == 3:
            lines.append(json.dumps({"id": f"g{i}", "conversations": [{"from": "human", "value": "hi"}]}))
            expected.append(f"sample g{i}: conversation has no assistant turn")
        else:
            lines.append(json.dumps(good(i)))
    (folder / "d.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "d.jsonl", expected


@pytest.mark.parametrize("num_proc", [1, 2])
def test_every_problem_is_listed_with_its_line_or_sample(tmp_path, tokenizer, num_proc):
    path, expected = write_jsonl(tmp_path)
    result = check_dataset(str(path), None, tokenizer, load_template("qwen_chat"), 16, 64, num_proc=num_proc)
    assert result.num_samples == 3000
    assert len(result.problems) == len(expected) == 12
    for problem, want in zip(result.problems, expected, strict=True):
        assert want in problem, (problem, want)
    assert len(result.lengths) == 3000 - 6  # every valid record has a length; bad JSON and structure none
    assert result.num_images == 3000 - 6


def test_no_decode_only_looks_for_the_files(tmp_path, tokenizer):
    path, expected = write_jsonl(tmp_path)
    result = check_dataset(str(path), None, tokenizer, load_template("qwen_chat"), 16, 64, decode=False)
    assert not any("cannot decode" in problem for problem in result.problems)
    assert len(result.problems) == len(expected) - 3
    assert sum(f"image {tmp_path / 'missing.png'} not found" in problem for problem in result.problems) == 3


def test_a_broken_json_list_is_one_problem_naming_its_line(tmp_path, tokenizer):
    records = json.dumps([good(0), good(1)], indent=1).replace('"g1"', '"g1",,')
    (tmp_path / "d.json").write_text(records)
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "ok.png")
    result = check_dataset(str(tmp_path / "d.json"), None, tokenizer, load_template("qwen_chat"), 16, 64)
    (problem,) = result.problems
    assert f"{tmp_path / 'd.json'}:" in problem and "invalid JSON" in problem and "in sample 1" in problem
