import json
from pathlib import Path

import pytest
from PIL import Image

from vltool.errors import DatasetError
from vltool.eval.benchmarks.seed import BENCHMARK, load, score

QUESTION_TYPES = {"Scene Understanding": 1, "Instances Counting": 5, "Action Recognition": 10}


def _question(question_id: str, type_id: int, answer: str, data_id: str, data_type: str = "image") -> dict:
    return {
        "question_id": question_id,
        "question": f"Question {question_id}?",
        "choice_a": "red apple",
        "choice_b": "green pear",
        "choice_c": "yellow banana",
        "choice_d": "purple grape",
        "answer": answer,
        "data_type": data_type,
        "data_id": data_id,
        "question_type_id": type_id,
    }


def _write(path: Path, content) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "SEED-Bench-image"
    folder.mkdir()
    for name in ("1_1.jpg", "2_2.jpg", "3_3.jpg"):
        Image.new("RGB", (8, 8)).save(folder / name)
    return folder


@pytest.fixture
def seed_json(tmp_path):
    questions = [
        _question("101", 1, "A", "1_1.jpg"),
        _question("v1", 10, "B", "94328.webm", data_type="video"),
        _question("102", 5, "C", "2_2"),  # a data_id without its suffix
        _question("103", 1, "B", "3_3.jpg"),
    ]
    return _write(tmp_path / "SEED-Bench.json", {"questions": questions, "question_type": QUESTION_TYPES})


def test_load_keeps_image_questions_only(seed_json, images):
    samples = load(seed_json, images)
    assert [s.key for s in samples] == ["101", "102", "103"]
    assert samples[1].images == (images / "2_2.jpg",)
    assert samples[0].reference["dimension"] == "Scene Understanding"
    assert samples[1].reference["dimension"] == "Instances Counting"


def test_prompt_is_llava_multiple_choice(seed_json, images):
    assert load(seed_json, images)[0].prompt == (
        "<image>\nQuestion 101?\nA. red apple\nB. green pear\nC. yellow banana\nD. purple grape\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_score_matches_hand_computed_values(seed_json, images):
    samples = load(seed_json, images)
    # 101 (scene, answer A): "A" right; 102 (counting, answer C): unresolved; 103 (scene, answer B): "C." wrong
    predictions = {"101": "A", "102": "I cannot tell", "103": "C."}
    scores = score(samples, predictions)
    table = scores.table
    # dimensions in id order, then the micro average over all three questions
    assert list(table.index) == ["Scene Understanding", "Instances Counting", "overall"]
    assert table.loc["Scene Understanding"].tolist() == pytest.approx([50.0, 2])  # 1 of 2
    assert table.loc["Instances Counting"].tolist() == pytest.approx([0.0, 1])  # 0 of 1
    assert table.loc["overall"].tolist() == pytest.approx([100 / 3, 3])  # 1 of 3
    assert scores.chart == pytest.approx({"Scene Understanding": 50.0, "Instances Counting": 0.0})
    assert scores.summary == pytest.approx({"accuracy": 100 / 3})
    assert scores.notes == ["1 of 3 answers unresolved (counted wrong)"]


def test_extraction_reads_option_text_and_counts_refusals(seed_json, images):
    samples = load(seed_json, images)
    # 101: the option text "red apple" picks A (right); 102: a refusal; 103: "(B)" picks B (right)
    predictions = {"101": "It is a red apple", "102": "Cannot determine the answer", "103": "(B)"}
    scores = score(samples, predictions)
    assert scores.summary == pytest.approx({"accuracy": 200 / 3})  # 2 of 3
    assert scores.notes == ["1 of 3 answers refused (counted wrong)"]


def test_image_folder_is_required(seed_json):
    with pytest.raises(DatasetError, match="--image-folder"):
        load(seed_json, None)


def test_wrong_top_level_structure(tmp_path, images):
    path = _write(tmp_path / "SEED-Bench.json", [_question("101", 1, "A", "1_1.jpg")])
    with pytest.raises(DatasetError, match="expected an object with a 'questions' list"):
        load(path, images)


def test_missing_key_names_the_question(tmp_path, images):
    question = _question("101", 1, "A", "1_1.jpg")
    del question["choice_c"]
    path = _write(tmp_path / "SEED-Bench.json", {"questions": [question], "question_type": QUESTION_TYPES})
    with pytest.raises(DatasetError, match=r"questions\[0\]: missing key\(s\) choice_c"):
        load(path, images)


def test_bad_answer_names_the_question(tmp_path, images):
    path = _write(
        tmp_path / "SEED-Bench.json",
        {"questions": [_question("101", 1, "E", "1_1.jpg")], "question_type": QUESTION_TYPES},
    )
    with pytest.raises(DatasetError, match=r"question_id 101\): answer must be one of A, B, C, D"):
        load(path, images)


def test_repeated_question_id_is_an_error(tmp_path, images):
    questions = [_question("101", 1, "A", "1_1.jpg"), _question("101", 1, "B", "2_2.jpg")]
    path = _write(tmp_path / "SEED-Bench.json", {"questions": questions, "question_type": QUESTION_TYPES})
    with pytest.raises(DatasetError, match=r"questions\[1\] \(question_id 101\): question_id appears twice"):
        load(path, images)


def test_missing_image_names_question_and_path(tmp_path, images):
    path = _write(
        tmp_path / "SEED-Bench.json",
        {"questions": [_question("101", 1, "A", "9_9.jpg")], "question_type": QUESTION_TYPES},
    )
    with pytest.raises(DatasetError, match=r"question_id 101\): image .*9_9\.jpg not found"):
        load(path, images)


def test_no_image_question_is_an_error(tmp_path, images):
    questions = [_question("v1", 10, "B", "94328.webm", data_type="video")]
    path = _write(tmp_path / "SEED-Bench.json", {"questions": questions, "question_type": QUESTION_TYPES})
    with pytest.raises(DatasetError, match="no question with data_type 'image'"):
        load(path, images)


def test_benchmark_defaults():
    assert BENCHMARK.name == "seed"
    assert BENCHMARK.max_new_tokens == 16
