import io
import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from vltool.errors import DatasetError
from vltool.eval.benchmarks.gqa import BENCHMARK, load, normalize_prediction, score
from vltool.eval.evaluate import rescore_eval

OFFICIAL = Path(__file__).parents[2] / "assets" / "benchmarks" / "official" / "gqa"
"""A synthetic GQA testdev file, LLaVA-layout answers and what LLaVA's conversion and GQA's eval.py made of them."""
QUESTIONS, IMAGES = OFFICIAL / "testdev_balanced_questions.json", OFFICIAL / "images"
ANSWERS = OFFICIAL / "answers" / "fixture.jsonl"
EXPECTED = json.loads((OFFICIAL / "expected.json").read_text(encoding="utf-8"))


def _question(image_id: str, question: str, answer: str, structural: str | None, balanced: bool = True) -> dict:
    entry = {"imageId": image_id, "question": question, "answer": answer, "isBalanced": balanced}
    entry["fullAnswer"] = f"The answer is {answer}."
    if structural is not None:
        entry["types"] = {"structural": structural, "semantic": "attr", "detailed": "x"}
    return entry


def _write(path: Path, content) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.fixture
def gqa(tmp_path):
    """An official-layout testdev_balanced_questions.json: four balanced questions and one unbalanced."""
    images = tmp_path / "images"
    images.mkdir()
    for image_id in ("n161313", "n235859"):
        Image.new("RGB", (8, 8)).save(images / f"{image_id}.jpg")
    questions = {
        "201307251": _question("n161313", "Is it a dog?", "yes", "verify"),
        "201640614": _question("n161313", "What animal is it?", "dog", "query"),
        "202225914": _question("n235859", "What color is the car?", "red", "query"),
        "20968379": _question("n235859", "Is the car on the left or right?", "left", "choose"),
        "20968380": _question("n235859", "Is it sunny?", "no", "verify", balanced=False),
    }
    return _write(tmp_path / "testdev_balanced_questions.json", questions), images


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", "yes"),  # trailing period, lower case
        ("No...", "no"),  # every trailing period
        ("  Yes. ", "  yes. "),  # not stripped, as convert_gqa_for_eval.py does not strip
        ("3.5", "3.5"),  # inner periods stay
        ("U.S.", "u.s"),
        ("Two", "two"),  # no number-word or article rules
        ("The dog", "the dog"),
    ],
)
def test_normalize_prediction(text, expected):
    assert normalize_prediction(text) == expected


def test_load_skips_unbalanced_questions(gqa):
    data_path, images = gqa
    samples = load(data_path, images)
    assert [s.key for s in samples] == ["201307251", "201640614", "202225914", "20968379"]
    assert samples[0].prompt == "<image>\nIs it a dog?\nAnswer the question using a single word or phrase."
    assert samples[0].images == (images / "n161313.jpg",)
    assert samples[3].reference == {"answer": "left", "structural": "choose"}


def test_score_overall_and_per_structural_type(gqa):
    samples = load(*gqa)
    predictions = {
        "201307251": "Yes.",  # -> "yes": right
        "201640614": "the dog",  # articles are not removed: wrong
        "202225914": "red",  # right
        "20968379": "Left..",  # -> "left": right
    }
    scores = score(samples, predictions)
    # overall 3 of 4 = 75; verify 1/1 = 100; query 1/2 = 50; choose 1/1 = 100
    assert list(scores.table.index) == ["overall", "choose", "query", "verify"]
    assert scores.table["accuracy"].to_dict() == {"overall": 75.0, "choose": 100.0, "query": 50.0, "verify": 100.0}
    assert scores.table["questions"].to_dict() == {"overall": 4, "choose": 1, "query": 2, "verify": 1}
    assert scores.summary == {"accuracy": 75.0}
    assert scores.chart == {"choose": 100.0, "query": 50.0, "verify": 100.0}


def test_no_types_field_gives_only_overall(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "n1.jpg")
    path = _write(
        tmp_path / "q.json", {"1": _question("n1", "q?", "yes", None), "2": _question("n1", "q?", "no", None)}
    )
    scores = score(load(path, tmp_path), {"1": "yes", "2": "yes"})
    # 1 of 2 right -> 50
    assert list(scores.table.index) == ["overall"]
    assert scores.table.loc["overall", "accuracy"] == 50.0
    assert scores.chart == {"overall": 50.0}


def test_benchmark_settings():
    assert BENCHMARK.name == "gqa"
    assert BENCHMARK.max_new_tokens == 16


def test_image_folder_is_required(gqa):
    with pytest.raises(DatasetError, match="--image-folder"):
        load(gqa[0], None)


def test_wrong_top_level_structure(tmp_path):
    path = _write(tmp_path / "q.json", [{"imageId": "n1"}])
    with pytest.raises(DatasetError, match=r"q\.json: expected GQA's layout"):
        load(path, tmp_path)


def test_missing_key_names_file_and_question(tmp_path):
    entry = _question("n1", "q?", "yes", "verify")
    del entry["answer"]
    path = _write(tmp_path / "q.json", {"123": entry})
    with pytest.raises(DatasetError, match=r"q\.json question 123: missing key\(s\) answer"):
        load(path, tmp_path)


def test_missing_image_names_question_and_path(tmp_path):
    path = _write(tmp_path / "q.json", {"123": _question("n404", "q?", "yes", "verify")})
    with pytest.raises(DatasetError, match=r"question 123: image .*n404\.jpg not found"):
        load(path, tmp_path)


def _rescore(answers: Path, tmp_path: Path) -> tuple:
    console = Console(file=io.StringIO(), width=200)
    files = rescore_eval(BENCHMARK, answers, QUESTIONS, IMAGES, tmp_path, console)
    return files, console.file.getvalue()


def test_llava_answer_file_reproduces_official_accuracies(tmp_path):
    files, output = _rescore(ANSWERS, tmp_path)
    table = files.scores.table
    # eval.py prints two decimals (its accuracies are k/n of 45 questions, so two decimals decide them)
    assert f"{table.loc['overall', 'accuracy']:.2f}" == EXPECTED["figures"]["accuracy"] == "57.78"
    assert list(table.index) == ["overall", *sorted(EXPECTED["structural"])]
    for structural, official in EXPECTED["structural"].items():
        assert f"{table.loc[structural, 'accuracy']:.2f}" == official["accuracy"], structural
        assert table.loc[structural, "questions"] == official["questions"], structural
    # the answers to the two unbalanced questions, which eval.py passes over too
    assert "2 answer(s) to unbalanced questions (eval.py scores balanced ones) ignored" in output


def test_normalize_prediction_reproduces_convert_gqa_for_eval():
    texts = {line["question_id"]: line["text"] for line in map(json.loads, ANSWERS.read_text().splitlines())}
    converted = EXPECTED["converted"]
    assert len(converted) == 47
    assert [normalize_prediction(texts[item["questionId"]]) for item in converted] == [
        item["prediction"] for item in converted
    ]


def _answer_lines() -> list[dict]:
    return [json.loads(line) for line in ANSWERS.read_text(encoding="utf-8").splitlines()]


def _write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_line_matching_no_question_is_named(tmp_path):
    lines = _answer_lines()
    path = _write_lines(tmp_path / "answers.jsonl", lines + [dict(lines[0], question_id="999999")])
    with pytest.raises(DatasetError, match=r"1 prediction\(s\) match no question \(999999\)"):
        _rescore(path, tmp_path)


def test_missing_answers_are_counted(tmp_path):
    path = _write_lines(tmp_path / "answers.jsonl", _answer_lines()[3:])
    with pytest.raises(DatasetError, match=r"3 question\(s\) have no prediction \(201307251, 201315170, 201323089\)"):
        _rescore(path, tmp_path)


def test_question_answered_twice_is_an_error(tmp_path):
    # eval.py would keep the last answer; vltool names the line
    lines = _answer_lines()
    path = _write_lines(tmp_path / "answers.jsonl", lines + [dict(lines[1], text="man")])
    with pytest.raises(DatasetError, match=r"answers\.jsonl:48: question 201315170 is answered twice"):
        _rescore(path, tmp_path)
