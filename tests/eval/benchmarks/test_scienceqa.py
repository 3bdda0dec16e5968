import json
from pathlib import Path

import pytest
from PIL import Image

from vltool.errors import DatasetError
from vltool.eval.benchmarks.scienceqa import BENCHMARK, build_prompt, load, score


def _problem(question: str, choices: list, answer: int, subject: str, grade: str, **overrides) -> dict:
    problem = {
        "question": question,
        "choices": choices,
        "answer": answer,
        "hint": "",
        "image": "image.png",
        "split": "test",
        "subject": subject,
        "grade": grade,
        "lecture": "",
        "solution": "",
    }
    return {**problem, **overrides}


PROBLEMS = {
    "5": _problem("Which is a mammal?", ["frog", "dog"], 1, "natural science", "grade2", hint="Look at the picture."),
    "6": _problem("Which state is farthest north?", ["Ohio", "Texas", "Utah"], 0, "social science", "grade8"),
    "7": _problem("Which word rhymes?", ["cat", "hat"], 0, "language science", "grade3"),
    "8": _problem("Text only?", ["yes", "no"], 0, "natural science", "grade4", image=None),
    "9": _problem("Training?", ["yes", "no"], 0, "natural science", "grade4", split="train"),
}


def _write(path: Path, content) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.fixture
def problems_json(tmp_path):
    """problems.json with the official images/ folder beside it (images/test/<pid>/image.png)."""
    for pid in ("5", "6", "7"):
        folder = tmp_path / "images" / "test" / pid
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "image.png")
    return _write(tmp_path / "problems.json", PROBLEMS)


def test_load_keeps_test_problems_with_an_image(problems_json):
    samples = load(problems_json, None)
    assert [s.key for s in samples] == ["5", "6", "7"]
    assert samples[0].images == (problems_json.parent / "images" / "test" / "5" / "image.png",)
    assert samples[0].reference == {
        "options": {"A": "frog", "B": "dog"},
        "answer": "B",
        "subject": "natural science",
        "grade_band": "G1-6",
    }
    assert samples[1].reference["grade_band"] == "G7-12"


def test_image_folder_may_be_images_or_its_test_folder(problems_json):
    images = problems_json.parent / "images"
    assert load(problems_json, images)[0].images == load(problems_json, images / "test")[0].images


def test_prompt_is_llava_cqm_a_with_single_prediction_instruction(problems_json):
    samples = load(problems_json, None)
    assert samples[0].prompt == (
        "<image>\nContext: Look at the picture.\nQuestion: Which is a mammal?\nOptions: (A) frog (B) dog\n"
        "Answer with the option's letter from the given choices directly."
    )
    # no hint -> "N/A"
    assert samples[1].prompt.startswith("<image>\nContext: N/A\nQuestion: Which state is farthest north?\n")
    assert "Options: (A) Ohio (B) Texas (C) Utah\n" in samples[1].prompt


def test_prompt_collapses_double_spaces_like_llava():
    prompt = build_prompt("Which  one?", {"A": "x", "B": "y"}, "  ")
    assert prompt.splitlines()[1:3] == ["Context: N/A", "Question: Which one?"]


def test_score_matches_hand_computed_values(problems_json):
    samples = load(problems_json, None)
    # 5 (natural, G1-6, answer B): "B" right; 6 (social, G7-12, answer A): "C" wrong;
    # 7 (language, G1-6, answer A): "The answer is A." right
    scores = score(samples, {"5": "B", "6": "C", "7": "The answer is A."})
    table = scores.table
    assert list(table.index) == ["natural science", "social science", "language science", "G1-6", "G7-12", "overall"]
    assert table["accuracy"].tolist() == pytest.approx([100.0, 0.0, 100.0, 100.0, 0.0, 200 / 3])
    assert table["questions"].tolist() == [1, 1, 1, 2, 1, 3]
    assert scores.summary == pytest.approx({"accuracy": 200 / 3})
    assert "overall" not in scores.chart
    assert scores.notes == []


def test_unresolved_answers_are_noted(problems_json):
    samples = load(problems_json, None)
    scores = score(samples, {"5": "a mammal", "6": "A", "7": "A"})
    assert scores.notes == ["1 of 3 answers unresolved (counted wrong)"]
    assert scores.summary == pytest.approx({"accuracy": 200 / 3})  # 6 and 7 right


def test_wrong_top_level_structure(tmp_path):
    path = _write(tmp_path / "problems.json", list(PROBLEMS.values()))
    with pytest.raises(DatasetError, match="expected an object mapping problem ids"):
        load(path, None)


def test_missing_key_names_the_problem(problems_json):
    problems = json.loads(problems_json.read_text())
    del problems["6"]["subject"]
    _write(problems_json, problems)
    with pytest.raises(DatasetError, match=r"problem 6: missing key\(s\) subject"):
        load(problems_json, None)


def test_bad_answer_index_names_the_problem(problems_json):
    problems = json.loads(problems_json.read_text())
    problems["7"]["answer"] = 2
    _write(problems_json, problems)
    with pytest.raises(DatasetError, match=r"problem 7: 'answer' must be a choice index 0-1, got 2"):
        load(problems_json, None)


def test_bad_grade_names_the_problem(problems_json):
    problems = json.loads(problems_json.read_text())
    problems["5"]["grade"] = "college"
    _write(problems_json, problems)
    with pytest.raises(DatasetError, match=r"problem 5: 'grade' must be grade1 ... grade12"):
        load(problems_json, None)


def test_missing_image_names_problem_and_path(problems_json):
    (problems_json.parent / "images" / "test" / "6" / "image.png").unlink()
    with pytest.raises(DatasetError, match=r"problem 6: image .*test/6/image\.png not found"):
        load(problems_json, None)


def test_benchmark_defaults():
    assert BENCHMARK.name == "scienceqa"
    assert BENCHMARK.max_new_tokens == 16
