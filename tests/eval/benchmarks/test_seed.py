import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from vltool.errors import DatasetError
from vltool.eval.benchmarks.seed import BENCHMARK, load, read_letter, score
from vltool.eval.evaluate import rescore_eval

OFFICIAL_FILES = Path(__file__).parents[2] / "assets" / "benchmarks" / "official" / "seed"

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
    # 101 (scene, answer A): "A" right; 102 (counting, answer C): not a letter; 103 (scene, answer B): "C" wrong
    predictions = {"101": "A", "102": "I cannot tell", "103": "C"}
    scores = score(samples, predictions)
    table = scores.table
    # dimensions in id order, then the micro average over all three questions
    assert list(table.index) == ["Scene Understanding", "Instances Counting", "overall"]
    assert table.loc["Scene Understanding"].tolist() == pytest.approx([50.0, 2])  # 1 of 2
    assert table.loc["Instances Counting"].tolist() == pytest.approx([0.0, 1])  # 0 of 1
    assert table.loc["overall"].tolist() == pytest.approx([100 / 3, 3])  # 1 of 3
    assert scores.chart == pytest.approx({"Scene Understanding": 50.0, "Instances Counting": 0.0})
    assert scores.summary == pytest.approx({"accuracy": 100 / 3})
    assert scores.notes == [
        "answers read as scripts/convert_seed_for_submission.py reads them: letter 2, unread 1",
        "1 of 3 answers name no option by scripts/convert_seed_for_submission.py's rules (counted wrong)",
    ]


def test_vlmevalkit_rules_read_option_text_and_count_refusals(seed_json, images):
    samples = load(seed_json, images)
    # 101: the option text "red apple" picks A (right); 102: a refusal; 103: "(B)" picks B (right)
    predictions = {"101": "It is a red apple", "102": "Cannot determine the answer", "103": "(B)"}
    scores = score(samples, predictions, "vlmevalkit")
    assert scores.summary == pytest.approx({"accuracy": 200 / 3})  # 2 of 3
    assert scores.notes == ["1 of 3 answers refused (counted wrong)"]
    assert score(samples, predictions).summary == pytest.approx({"accuracy": 0.0})  # official: none is a letter


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
    assert list(BENCHMARK.rules) == ["official", "vlmevalkit"]
    assert BENCHMARK.rules["official"] == "LLaVA's scripts/convert_seed_for_submission.py"


# --- against the official script's own decisions (tests/assets/benchmarks/official/seed) ---


def _official(name: str):
    return json.loads((OFFICIAL_FILES / name).read_text(encoding="utf-8"))


def _with_images(folder: Path, data: dict) -> tuple[Path, Path]:
    """SEED-Bench.json in ``folder`` and a SEED-Bench-image/ folder with an 8x8 image per image question."""
    (folder / "SEED-Bench-image").mkdir()
    for question in data["questions"]:
        if question["data_type"] == "image":
            Image.new("RGB", (8, 8)).save(folder / "SEED-Bench-image" / question["data_id"])
    return _write(folder / "SEED-Bench.json", data), folder / "SEED-Bench-image"


@pytest.fixture
def official_data(tmp_path):
    """The fixture's SEED-Bench.json, its images, and LLaVA's answer file (copied, so results land in tmp)."""
    shutil.copy(OFFICIAL_FILES / "llava_answers.jsonl", tmp_path / "llava_answers.jsonl")
    return *_with_images(tmp_path, _official("SEED-Bench.json")), tmp_path / "llava_answers.jsonl"


def _answers(path: Path) -> dict[str, dict]:
    return {str(line["question_id"]): line for line in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def test_prompts_are_llava_seed_bench_lines_after_the_image_marker(official_data):
    seed_json, images, answers = official_data
    lines = _answers(answers)
    for sample in load(seed_json, images):
        assert sample.prompt == "<image>\n" + lines[sample.key]["prompt"]


def test_official_rules_reproduce_every_decision_and_the_printed_accuracies(official_data):
    seed_json, images, answers = official_data
    expected = _official("official_decisions.json")
    samples = load(seed_json, images)
    texts = {key: line["text"] for key, line in _answers(answers).items()}
    decisions = {
        s.key: read_letter(texts[s.key], s.reference["options"], "official")[0] == s.reference["answer"]
        for s in samples
    }
    assert decisions == expected["items"] and len(decisions) == 44
    table = score(samples, {key: texts[key] for key in decisions}).table
    printed = expected["accuracies"]
    assert {name: round(value, 2) for name, value in table["accuracy"].items()} == {
        **{name: printed[name] for name in table.index if name != "overall"},
        "overall": printed["image accuracy"],  # 22.73
    }


def test_vlmevalkit_rules_credit_what_the_official_script_does_not(official_data):
    seed_json, images, answers = official_data
    texts = {key: line["text"] for key, line in _answers(answers).items()}
    samples = load(seed_json, images)
    lenient = {
        s.key
        for s in samples
        if read_letter(texts[s.key], s.reference["options"], "vlmevalkit")[0] == s.reference["answer"]
    }
    official = {key for key, right in _official("official_decisions.json")["items"].items() if right}
    assert official <= lenient
    # "A.", "(A)", "**A**", "Answer: A", "The answer is A(.)", "A. red apple" (short or long), the option's
    # text alone or in a sentence, " A", "A ", "A\n", "I think it is A.", "D.", "(C) yellow banana",
    # "Option B", "B) green pear", "The correct answer is D.", "Two"
    assert lenient - official == {
        str(number) for number in (*range(112, 121), 126, 127, 128, 133, 134, *range(137, 142), 144)
    }


def test_llava_answer_file_rescores_with_video_lines_ignored(official_data):
    seed_json, images, answers = official_data
    console = Console(record=True, width=200)
    files = rescore_eval(BENCHMARK, answers, seed_json, images, None, console)
    table = pd.read_csv(files.results, index_col="name")
    assert (
        round(table.loc["overall", "accuracy"], 2)
        == _official("official_decisions.json")["accuracies"]["image accuracy"]
    )
    assert table.loc["overall", "questions"] == 44
    output = console.export_text()
    assert f"{answers}: 3 answer(s) to video questions ignored" in output
    assert "scoring rules: official (LLaVA's scripts/convert_seed_for_submission.py)" in output


def test_answer_line_for_no_question_is_an_error_naming_it(official_data):
    seed_json, images, answers = official_data
    with answers.open("a", encoding="utf-8") as file:
        file.write(json.dumps({"question_id": 424242, "prompt": "Q?", "text": "A"}) + "\n")
    with pytest.raises(DatasetError, match=r"llava_answers.jsonl: 1 prediction\(s\) match no question \(424242\)"):
        rescore_eval(BENCHMARK, answers, seed_json, images, None, Console(quiet=True))


def test_image_question_without_an_answer_is_an_error_naming_it(official_data):
    seed_json, images, answers = official_data
    lines = answers.read_text(encoding="utf-8").splitlines()
    answers.write_text("\n".join(line for line in lines if json.loads(line)["question_id"] != 105) + "\n")
    with pytest.raises(DatasetError, match=r"1 question\(s\) have no prediction \(105\)"):
        rescore_eval(BENCHMARK, answers, seed_json, images, None, Console(quiet=True))


def _crash(case: str) -> dict:
    """One of the inputs the script crashes on, with what it printed first and its error."""
    return next(crash for crash in _official("crashes.json") if crash["case"] == case)


def _printed_accuracies(stdout: str) -> dict[str, float]:
    """The script's ``name: 12.34%`` lines."""
    return {name: float(value.rstrip("%")) for name, value in (line.rsplit(": ", 1) for line in stdout.splitlines())}


def test_a_dimension_with_no_right_answer_scores_zero_where_the_script_crashes(tmp_path):
    crash = _crash("a dimension with no right answer")
    assert crash["error"] == "KeyError: 1"  # dimension 1 never counted a right answer
    seed_json, images = _with_images(tmp_path, crash["data"])
    texts = {str(line["question_id"]): line["text"] for line in crash["answers"]}
    table = score(load(seed_json, images), texts).table
    # 301 "B" and 302 "B." wrong, 303 "C" right
    assert table["accuracy"].to_dict() == {"Scene Understanding": 0.0, "Instance Identity": 100.0, "overall": 100 / 3}


def test_a_file_without_video_questions_scores_its_images_where_the_script_crashes(tmp_path):
    crash = _crash("no video question")
    assert crash["error"] == "ZeroDivisionError: division by zero"  # its video pass, after the image figures
    seed_json, images = _with_images(tmp_path, crash["data"])
    texts = {str(line["question_id"]): line["text"] for line in crash["answers"]}
    table = score(load(seed_json, images), texts).table
    printed = _printed_accuracies(crash["printed"])
    assert {name: round(value, 2) for name, value in table["accuracy"].items()} == {
        "Scene Understanding": printed["Scene Understanding"],  # 50.00
        "Instance Identity": printed["Instance Identity"],  # 100.00
        "overall": printed["image accuracy"],  # 66.67
    }
