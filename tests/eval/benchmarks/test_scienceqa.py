import json
import shutil
from pathlib import Path
from string import ascii_uppercase

import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from vltool.errors import DatasetError
from vltool.eval.benchmarks.scienceqa import BENCHMARK, build_prompt, load, read_letter, score
from vltool.eval.evaluate import rescore_eval

OFFICIAL_FILES = Path(__file__).parents[2] / "assets" / "benchmarks" / "official" / "scienceqa"


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


def test_prompt_is_llava_released_cqm_a_with_single_prediction_instruction(problems_json):
    samples = load(problems_json, None)
    assert samples[0].prompt == (
        "<image>\nContext: Look at the picture.\nWhich is a mammal?\nA. frog\nB. dog\n"
        "Answer with the option's letter from the given choices directly."
    )
    # no hint: no Context line
    assert samples[1].prompt == (
        "<image>\nWhich state is farthest north?\nA. Ohio\nB. Texas\nC. Utah\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_prompt_keeps_the_hint_lines_and_strips_the_ends_like_model_vqa_science():
    prompt = build_prompt("Which one? ", {"A": "x", "B": "y "}, " Read this.\n\nFigure: a ramp.")
    assert prompt == (
        "<image>\nContext:  Read this.\n\nFigure: a ramp.\nWhich one? \nA. x\nB. y\n"
        "Answer with the option's letter from the given choices directly."
    )


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
    assert scores.notes == ["answers read as llava/eval/eval_science_qa.py reads them: letter 2, the answer is 1"]


def test_answers_naming_no_option_are_noted_per_rule_set(problems_json):
    samples = load(problems_json, None)
    predictions = {"5": "a dog", "6": "E", "7": "A."}  # 5 answers with 5's option text
    official = score(samples, predictions)
    assert official.summary == pytest.approx({"accuracy": 0.0})
    assert official.notes == [
        "answers read as llava/eval/eval_science_qa.py reads them: letter 1, unread 2",
        "2 of 3 answers name no option by llava/eval/eval_science_qa.py's rules (counted wrong)",
        "1 of 3 answers name a letter that is not an option (counted wrong)",  # E: three options only
    ]
    lenient = score(samples, predictions, "vlmevalkit")
    assert lenient.summary == pytest.approx({"accuracy": 200 / 3})  # "a dog" -> B and "A." -> A right
    assert lenient.notes == ["1 of 3 answers unresolved (counted wrong)"]


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
    assert list(BENCHMARK.rules) == ["official", "vlmevalkit"]
    assert BENCHMARK.rules["official"] == "LLaVA's llava/eval/eval_science_qa.py"


# --- against the official script's own decisions (tests/assets/benchmarks/official/scienceqa) ---


def _official(name: str):
    return json.loads((OFFICIAL_FILES / name).read_text(encoding="utf-8"))


def _with_images(folder: Path, problems: dict) -> Path:
    """problems.json in ``folder`` with an 8x8 image for every problem that names one."""
    for pid, problem in problems.items():
        if problem["image"]:
            (folder / "images" / "test" / pid).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(folder / "images" / "test" / pid / problem["image"])
    return _write(folder / "problems.json", problems)


@pytest.fixture
def official_data(tmp_path):
    """The fixture's problems.json, its images, and LLaVA's answer file (copied, so results land in tmp)."""
    shutil.copy(OFFICIAL_FILES / "llava_answers.jsonl", tmp_path / "llava_answers.jsonl")
    return _with_images(tmp_path, _official("problems.json")), tmp_path / "llava_answers.jsonl"


def _answers(path: Path) -> dict[str, dict]:
    return {str(line["question_id"]): line for line in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def test_prompts_are_the_ones_in_llava_answer_file(official_data):
    problems_json, answers = official_data
    lines = _answers(answers)
    for sample in load(problems_json, None):
        assert sample.prompt == lines[sample.key]["prompt"]


def test_official_rules_reproduce_every_decision_and_the_img_accuracy(official_data):
    problems_json, answers = official_data
    expected = _official("official_decisions.json")
    samples = load(problems_json, None)
    texts = {key: line["text"] for key, line in _answers(answers).items()}
    for sample in samples:
        letter, _ = read_letter(texts[sample.key], sample.reference, "official")
        item = expected["items"][sample.key]
        assert (letter or "FAILED", letter == sample.reference["answer"]) == (item["parsed_ans"], item["correct"])
    assert len(samples) == expected["img_total"] == 50
    accuracy = score(samples, texts).summary["accuracy"]
    assert accuracy == pytest.approx(100 * expected["img_correct"] / expected["img_total"])
    assert f"IMG-Accuracy: {accuracy:.2f}%" in expected["printed"]  # 36.00


def test_vlmevalkit_rules_differ_where_lenient_or_blind_to_long_answers(official_data):
    problems_json, answers = official_data
    texts = {key: line["text"] for key, line in _answers(answers).items()}
    right = {
        rules: {
            s.key
            for s in load(problems_json, None)
            if read_letter(texts[s.key], s.reference, rules)[0] == s.reference["answer"]
        }
        for rules in ("official", "vlmevalkit")
    }
    # "B.", "(B)", "**B**", "Answer: B", "The answer is B" (at the end), "the answer is B.", the option's
    # text, " B", "B\n", "A.frog", "The answer is (B).", "The answer is" twice, "The answer is C\n":
    # only VLMEvalKit credits them
    lenient_only = {"10", "11", "12", "14", "16", "18", "19", "24", "25", "26", "36", "41", "48"}
    assert right["vlmevalkit"] - right["official"] == lenient_only
    # "X. ..." answers with more than five words, or naming other letters, and "The answer is BC"
    assert right["official"] - right["vlmevalkit"] == {"8", "28", "35", "38"}
    assert score(load(problems_json, None), texts, "vlmevalkit").summary["accuracy"] == pytest.approx(100 * 27 / 50)


def test_llava_answer_file_rescores_with_text_only_lines_ignored(official_data, tmp_path):
    problems_json, answers = official_data
    console = Console(record=True, width=200)
    files = rescore_eval(BENCHMARK, answers, problems_json, None, None, console)
    expected = _official("official_decisions.json")
    table = pd.read_csv(files.results, index_col="name")
    assert table.loc["overall", "accuracy"] == pytest.approx(100 * expected["img_correct"] / expected["img_total"])
    assert table.loc["overall", "questions"] == 50
    output = console.export_text()
    assert f"{answers}: 4 answer(s) to text-only questions ignored" in output
    assert "scoring rules: official (LLaVA's llava/eval/eval_science_qa.py)" in output
    unread = sum(item["parsed_ans"] == "FAILED" for item in expected["items"].values() if item["is_multimodal"])
    assert f"{unread} of 50 answers name no option by llava/eval/eval_science_qa.py's rules (counted wrong)" in output
    assert "3 of 50 answers name a letter that is not an option (counted wrong)" in output  # E, D and F


@pytest.mark.parametrize("bogus", ["9999", "201"])  # no problem at all; a training problem
def test_answer_line_for_no_test_question_is_an_error_naming_it(official_data, bogus):
    problems_json, answers = official_data
    with answers.open("a", encoding="utf-8") as file:
        file.write(json.dumps({"question_id": bogus, "prompt": "<image>\nQ?", "text": "A"}) + "\n")
    with pytest.raises(DatasetError, match=rf"llava_answers.jsonl: 1 prediction\(s\) match no question \({bogus}\)"):
        rescore_eval(BENCHMARK, answers, problems_json, None, None, Console(quiet=True))


def test_image_question_answered_without_its_image_is_an_error(official_data):
    problems_json, answers = official_data
    lines = answers.read_text(encoding="utf-8").splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "prompt": "Which is a mammal?\nA. frog\nB. dog"})
    answers.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"llava_answers.jsonl:2: question 2 has an image but its prompt has no"):
        rescore_eval(BENCHMARK, answers, problems_json, None, None, Console(quiet=True))


def test_six_options_where_the_script_crashes_still_get_a_score(tmp_path):
    crash = _official("crash_six_choices.json")
    assert crash["error"] == "IndexError: list index out of range"
    problems_json = _with_images(tmp_path, crash["problems"])
    (pid,) = crash["problems"]
    assert ascii_uppercase[crash["problems"][pid]["answer"]] == crash["answers"][0]["text"] == "F"
    scores = score(load(problems_json, None), {pid: "F"})
    assert scores.summary == pytest.approx({"accuracy": 100.0})
