import io
import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from vltool.errors import DatasetError
from vltool.eval.benchmarks.answers import read_answer_records
from vltool.eval.benchmarks.textvqa import BENCHMARK, load, match_answers, prompt_question, score
from vltool.eval.benchmarks.vqa_normalize import normalize_answer, vqa_accuracy
from vltool.eval.evaluate import rescore_eval

OFFICIAL = Path(__file__).parents[2] / "assets" / "benchmarks" / "official" / "textvqa"
"""A synthetic TextVQA val file, LLaVA-layout answers and what eval_textvqa.py made of them (see its README)."""
VAL, IMAGES = OFFICIAL / "TextVQA_0.5.1_val.json", OFFICIAL / "train_images"
ANSWERS = OFFICIAL / "answers" / "fixture.jsonl"
EXPECTED = json.loads((OFFICIAL / "expected.json").read_text(encoding="utf-8"))


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


def _rescore(answers: Path, tmp_path: Path, data_path: Path = VAL) -> tuple:
    console = Console(file=io.StringIO(), width=200)
    files = rescore_eval(BENCHMARK, answers, data_path, IMAGES, tmp_path, console)
    return files, console.file.getvalue()


def test_llava_answer_file_reproduces_official_accuracy(tmp_path):
    files, _ = _rescore(ANSWERS, tmp_path)
    # eval_textvqa.py: 100 * (sum / n); vltool: 100 * sum / n (equal but for the last bit)
    assert files.scores.summary["accuracy"] == pytest.approx(100 * EXPECTED["accuracy"], rel=1e-12)
    assert f"Accuracy: {files.scores.summary['accuracy']:.2f}%" in EXPECTED["stdout"]
    assert files.scores.table.loc["overall", "questions"] == len(EXPECTED["items"]) == 45


def test_each_answer_scores_as_the_official_evaluator_scores_it():
    humans = {str(entry["question_id"]): entry["answers"] for entry in json.loads(VAL.read_text())["data"]}
    samples = load(VAL, IMAGES)
    answers = match_answers(VAL, samples, read_answer_records(ANSWERS), ANSWERS)
    for item in EXPECTED["items"]:
        key = str(item["question_id"])
        # the line went to the question eval_textvqa.py matched, and scores exactly as m4c scored it
        assert answers.texts[key] == item["text"]
        assert normalize_answer(item["text"]) == item["normalized"]
        assert vqa_accuracy(item["text"], humans[key]) == item["score"], item["text"]


@pytest.mark.parametrize(
    ("prompt", "question"),
    [
        ("What is it?\nReference OCR token: A, B\nAnswer the question using a single word or phrase.", "what is it?"),
        ("Reference OCR token: A, B\nWhat is it?\nAnswer the question using a single word or phrase.", "what is it?"),
        ("What is it?\nAnswer the question using a single word or phrase.", "what is it?"),
        ("OCR tokens: A, B Question: What is it? Short answer:", "what is it?"),
        ("OCR tokens: A, B", None),  # the script fails here (no question); nothing to match
        # shapes where eval_textvqa.py stops on an assertion: the first line that is not OCR tokens
        ("What is it?", "what is it?"),
        ("Reference OCR token: A\nWhat is it?\nUse the tokens.\nAnswer briefly.", "what is it?"),
    ],
)
def test_prompt_question(prompt, question):
    assert prompt_question(prompt) == question


def test_vltool_predictions_file_scores_the_same(tmp_path):
    samples = load(VAL, IMAGES)
    llava = match_answers(VAL, samples, read_answer_records(ANSWERS), ANSWERS)
    own = tmp_path / "own_textvqa_predictions.jsonl"
    own.write_text("".join(json.dumps({"key": k, "prediction": t}) + "\n" for k, t in llava.texts.items()))
    files, _ = _rescore(own, tmp_path)
    assert files.scores.summary["accuracy"] == pytest.approx(100 * EXPECTED["accuracy"], rel=1e-12)


def _answer_lines() -> list[dict]:
    return [json.loads(line) for line in ANSWERS.read_text(encoding="utf-8").splitlines()]


def _write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_line_matching_no_question_is_named(tmp_path):
    lines = _answer_lines()
    stray = dict(lines[0], prompt="What is the weather?\nAnswer the question using a single word or phrase.")
    path = _write_lines(tmp_path / "answers.jsonl", lines + [stray])
    with pytest.raises(DatasetError, match=r"1 prediction\(s\) match no question \(003a8ae2ef43b901 \(line 46\)\)"):
        _rescore(path, tmp_path)


def test_missing_answers_are_counted(tmp_path):
    # eval_textvqa.py would average over the 43 lines given; vltool refuses
    path = _write_lines(tmp_path / "answers.jsonl", _answer_lines()[2:])
    with pytest.raises(DatasetError, match=r"2 question\(s\) have no prediction \(34602, 34603\)"):
        _rescore(path, tmp_path)


def test_question_answered_twice_is_an_error(tmp_path):
    lines = _answer_lines()
    path = _write_lines(tmp_path / "answers.jsonl", lines + lines[:1])
    with pytest.raises(DatasetError, match=r"answers\.jsonl:46: question 34602 is answered twice"):
        _rescore(path, tmp_path)


def test_questions_sharing_image_and_text_take_lines_in_order(textvqa):
    data_path, images = textvqa
    content = json.loads(data_path.read_text())
    content["data"].append(_entry(34605, "003a8ae2ef43b901", "What does the sign say?", ["go"] * 10))
    data_path.write_text(json.dumps(content))
    samples = load(data_path, images)
    asked = "What does the sign say?\nAnswer the question using a single word or phrase."
    lines = [{"question_id": "003a8ae2ef43b901", "prompt": asked, "text": text} for text in ("stop", "go")]
    lines += [{"question_id": "34603", "text": "coke"}, {"question_id": "34604", "text": "7"}]
    path = _write_lines(data_path.parent / "answers.jsonl", lines)
    answers = match_answers(data_path, samples, read_answer_records(path), path)
    assert answers.texts == {"34602": "stop", "34605": "go", "34603": "coke", "34604": "7"}
