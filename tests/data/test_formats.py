import json

import pytest

from vltool.data.formats import load_samples
from vltool.errors import DatasetError


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_three_formats_read_to_one_form(tmp_path):
    llava = {
        "id": "a",
        "image": "x.jpg",
        "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}],
    }
    qwen_vl = {
        "id": "b",
        "conversations": [
            {"from": "user", "value": "Picture 1: <img>y.jpg</img>\nWhere is the dog?"},
            {"from": "assistant", "value": "<ref>the dog</ref><box>(219,424),(576,896)</box>"},
        ],
    }
    messages = {
        "id": "c",
        "images": ["z1.jpg", "z2.jpg"],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<image><image>Same?"},
            {"role": "assistant", "content": "No."},
        ],
    }
    text_only = {"id": "d", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}
    samples = load_samples(write(tmp_path, "d.json", [llava, qwen_vl, messages, text_only]))
    assert [s.images for s in samples] == [["x.jpg"], ["y.jpg"], ["z1.jpg", "z2.jpg"], []]
    assert samples[1].messages[0].content == "<image>\nWhere is the dog?"
    assert samples[1].messages[1].content == "<ref>the dog</ref><box>(219,424),(576,896)</box>"
    assert [m.role for m in samples[2].messages] == ["system", "user", "assistant"]


def test_jsonl(tmp_path):
    lines = [json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})] * 3
    assert len(load_samples(write(tmp_path, "d.jsonl", "\n".join(lines) + "\n\n"))) == 3


def test_malformed_jsonl_names_the_line(tmp_path):
    good = json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
    path = write(tmp_path, "d.jsonl", f"{good}\n{good}\n{{bad json\n")
    with pytest.raises(DatasetError, match=r"d\.jsonl:3: invalid JSON"):
        load_samples(path)


def test_malformed_json_names_the_line(tmp_path):
    path = write(tmp_path, "d.json", '[\n {"conversations": []},\n {"id": 1,,}\n]')
    with pytest.raises(DatasetError, match=r"d\.json:3: invalid JSON"):
        load_samples(path)


def test_tag_count_must_match_images(tmp_path):
    record = {
        "id": "s7",
        "image": ["a.jpg", "b.jpg"],
        "conversations": [{"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "x"}],
    }
    with pytest.raises(DatasetError, match=r"d\.json: sample s7: 1 '<image>' tag\(s\) but 2 image\(s\)"):
        load_samples(write(tmp_path, "d.json", [record]))


def test_no_assistant_turn(tmp_path):
    record = {"conversations": [{"from": "human", "value": "hello?"}]}
    with pytest.raises(DatasetError, match=r"sample 0: conversation has no assistant turn"):
        load_samples(write(tmp_path, "d.json", [record]))


def test_bad_box(tmp_path):
    record = {
        "conversations": [
            {"from": "user", "value": "Picture 1: <img>a.jpg</img>\nfind it"},
            {"from": "assistant", "value": "<ref>it</ref><box>(1,2),(3000,4)</box>"},
        ]
    }
    with pytest.raises(DatasetError, match="0-1000 grid"):
        load_samples(write(tmp_path, "d.json", [record]))


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="dataset file not found"):
        load_samples(tmp_path / "nope.json")
