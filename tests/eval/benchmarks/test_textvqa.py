import json
from pathlib import Path

import pytest
from PIL import Image

from vltool.errors import DatasetError
from vltool.eval.benchmarks.textvqa import BENCHMARK, load, score


def _entry(question_id: int, image_id: str, question: str, answers: list[str]) -> dict:
    return {
        "question_id": question_id,
        "image_id": image_id,
        "question": question,
        "answers": answers,
        "image_classes": ["Sign"],
        "set_name": "val",
    }


def _write(path: Path, content) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.fixture
def textvqa(tmp_path):
    """An official-layout TextVQA_0.5.1_val.json with three questions on two images."""
    images = tmp_path / "train_images"
    images.mkdir()
    for image_id in ("003a8ae2ef43b901", "0054c91397f2fe05"):
        Image.new("RGB", (8, 8)).save(images / f"{image_id}.jpg")
    data = [
        _entry(34602, "003a8ae2ef43b901", "what does the sign say?", ["stop"] * 10),
        _entry(34603, "003a8ae2ef43b901", "what brand is it?", ["coca cola"] * 3 + ["coke"] * 7),
        _entry(34604, "0054c91397f2fe05", "what number is it?", ["7"] * 10),
    ]
    content = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}
    return _write(tmp_path / "TextVQA_0.5.1_val.json", content), images


def test_load_reads_questions_prompts_and_images(textvqa):
    data_path, images = textvqa
    samples = load(data_path, images)
    assert [s.key for s in samples] == ["34602", "34603", "34604"]
    assert samples[0].prompt == "<image>\nwhat does the sign say?\nAnswer the question using a single word or phrase."
    assert samples[0].images == (images / "003a8ae2ef43b901.jpg",)
    assert samples[2].images == (images / "0054c91397f2fe05.jpg",)
    assert samples[1].reference["answers"] == ["coca cola"] * 3 + ["coke"] * 7


def test_score_is_mean_soft_accuracy_in_percent(textvqa):
    samples = load(*textvqa)
    # "Stop." normalises to "stop" (10 of 10 humans -> 1.0); "coca cola" matches 3 of 10 -> 0.9;
    # "eight" -> "8" matches none of the "7"s -> 0.0
    predictions = {"34602": "Stop.", "34603": "coca cola", "34604": "eight"}
    scores = score(samples, predictions)
    # (1.0 + 0.9 + 0.0) / 3 = 63.33 %
    assert list(scores.table.index) == ["overall"]
    assert scores.table.loc["overall", "accuracy"] == pytest.approx(190 / 3)
    assert scores.table.loc["overall", "questions"] == 3
    assert scores.summary == {"accuracy": pytest.approx(190 / 3)}
    assert scores.chart == {"overall": pytest.approx(190 / 3)}


def test_number_words_match_digits(textvqa):
    samples = load(*textvqa)
    # "Seven" -> "7", which all 10 humans gave: 1.0 on the third question, the others wrong -> 33.33 %
    scores = score(samples, {"34602": "go", "34603": "pepsi", "34604": "Seven"})
    assert scores.table.loc["overall", "accuracy"] == pytest.approx(100 / 3)


def test_benchmark_settings():
    assert BENCHMARK.name == "textvqa"
    assert BENCHMARK.max_new_tokens == 16


def test_image_folder_is_required(textvqa):
    with pytest.raises(DatasetError, match="--image-folder"):
        load(textvqa[0], None)


def test_wrong_top_level_structure(tmp_path):
    path = _write(tmp_path / "val.json", [{"question_id": 1}])
    with pytest.raises(DatasetError, match=r'val\.json: expected the official TextVQA layout \{"data"'):
        load(path, tmp_path)


def test_missing_key_names_file_and_entry(tmp_path):
    entry = _entry(1, "img", "q?", ["a"] * 10)
    del entry["answers"]
    path = _write(tmp_path / "val.json", {"data": [_entry(0, "img", "q?", ["a"] * 10), entry]})
    Image.new("RGB", (8, 8)).save(tmp_path / "img.jpg")
    with pytest.raises(DatasetError, match=r"val\.json data\[1\]: missing key\(s\) answers"):
        load(path, tmp_path)


def test_answers_must_be_a_list_of_strings(tmp_path):
    path = _write(tmp_path / "val.json", {"data": [_entry(0, "img", "q?", "stop")]})
    with pytest.raises(DatasetError, match=r"data\[0\]: 'answers' must be a non-empty list"):
        load(path, tmp_path)


def test_missing_image_names_question_and_path(tmp_path):
    path = _write(tmp_path / "val.json", {"data": [_entry(77, "nothere", "q?", ["a"] * 10)]})
    with pytest.raises(DatasetError, match=r"question 77\): image .*nothere\.jpg not found"):
        load(path, tmp_path)


def test_duplicate_question_id_names_both_entries(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "img.jpg")
    path = _write(tmp_path / "val.json", {"data": [_entry(5, "img", "q?", ["a"] * 10)] * 2})
    with pytest.raises(DatasetError, match=r"data\[1\]: question_id 5 already used by data\[0\]"):
        load(path, tmp_path)
