import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from vltool.errors import DatasetError
from vltool.eval.benchmarks.answers import read_answer_records
from vltool.eval.benchmarks.pope import BENCHMARK, load, match_answers, parse_answer, score, split_metrics, split_name
from vltool.eval.evaluate import rescore_eval

OFFICIAL = Path(__file__).parents[2] / "assets" / "benchmarks" / "official" / "pope"
"""Synthetic POPE splits, LLaVA's question and answer files for them, and eval_pope.py's output (see its README)."""
COCO, VAL2014 = OFFICIAL / "coco", OFFICIAL / "val2014"
ANSWERS = OFFICIAL / "answers" / "fixture.jsonl"
EXPECTED = json.loads((OFFICIAL / "expected.json").read_text(encoding="utf-8"))
METRICS = ("f1", "accuracy", "precision", "recall", "yes_ratio")

IMAGES = ("COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg")


def _write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _question(question_id: int, label: str, image: str = IMAGES[0]) -> dict:
    return {
        "question_id": question_id,
        "image": image,
        "text": f"Is there a thing {question_id} in the image?",
        "label": label,
    }


@pytest.fixture
def val2014(tmp_path):
    folder = tmp_path / "val2014"
    folder.mkdir()
    for name in IMAGES:
        Image.new("RGB", (8, 8)).save(folder / name)
    return folder


@pytest.fixture
def annotations(tmp_path):
    """The POPE output/coco folder with two splits (adversarial written first, to check the order)."""
    folder = tmp_path / "coco"
    _write(folder / "coco_pope_adversarial.json", [_question(1, "yes"), _question(2, "no", IMAGES[1])])
    _write(
        folder / "coco_pope_random.json",
        [_question(1, "yes"), _question(2, "yes"), _question(3, "no"), _question(4, "no", IMAGES[1])],
    )
    return folder


def test_load_folder_reads_splits_in_paper_order(annotations, val2014):
    samples = load(annotations, val2014)
    assert [s.key for s in samples] == [
        "random/1",
        "random/2",
        "random/3",
        "random/4",
        "adversarial/1",
        "adversarial/2",
    ]
    first = samples[0]
    assert (
        first.prompt == "<image>\nIs there a thing 1 in the image?\nAnswer the question using a single word or phrase."
    )
    assert first.images == (val2014 / IMAGES[0],)
    assert first.reference == {"split": "random", "question": "Is there a thing 1 in the image?", "label": "yes"}


def test_load_single_file(annotations, val2014):
    samples = load(annotations / "coco_pope_adversarial.json", val2014)
    assert [s.key for s in samples] == ["adversarial/1", "adversarial/2"]


def test_split_name_from_file_name():
    assert split_name(Path("coco_pope_popular.json")) == "popular"
    assert split_name(Path("aokvqa_pope_random.json")) == "aokvqa_pope_random"


@pytest.mark.parametrize(
    ("prediction", "parsed"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No, there is no dog.", "no"),
        ("There is not a dog in the image.", "no"),
        ("Yes. No other animal is visible.", "yes"),  # only the first sentence counts
        ("yes, no", "no"),  # commas are dropped, leaving the word "no"
        ("NO", "yes"),  # LLaVA matches "No", "no" and "not" case-sensitively
        ("Nope", "yes"),
        (" no", "no"),
        ("no\n", "yes"),  # not stripped, as eval_pope.py reads it: the word is "no\n"
        ("", "yes"),
    ],
)
def test_parse_answer_follows_llava_rules(prediction, parsed):
    assert parse_answer(prediction) == parsed


def test_score_matches_hand_computed_values(annotations, val2014):
    samples = load(annotations, val2014)
    # random: labels yes yes no no, answers yes no yes no -> TP 1, FN 1, FP 1, TN 1
    # adversarial: labels yes no, answers yes no -> all right
    answers = ["Yes", "No", "Yes, there is.", "No", "yes", "There is no such thing."]
    scores = score(samples, {s.key: a for s, a in zip(samples, answers, strict=True)})
    table = scores.table
    assert list(table.index) == ["random", "adversarial", "average"]
    assert list(table.columns) == ["f1", "accuracy", "precision", "recall", "yes_ratio", "questions"]
    # random: precision 1/2, recall 1/2, F1 1/2, accuracy 2/4, yes ratio 2/4
    assert table.loc["random"].tolist() == pytest.approx([50.0, 50.0, 50.0, 50.0, 50.0, 4])
    # adversarial: precision 1/1, recall 1/1, accuracy 2/2, yes ratio 1/2
    assert table.loc["adversarial"].tolist() == pytest.approx([100.0, 100.0, 100.0, 100.0, 50.0, 2])
    # average of the two rows; questions is the total (6)
    assert table.loc["average"].tolist() == pytest.approx([75.0, 75.0, 75.0, 75.0, 50.0, 6])
    assert scores.chart == pytest.approx({"random": 50.0, "adversarial": 100.0})
    assert scores.summary == pytest.approx({"f1": 75.0, "accuracy": 75.0, "yes_ratio": 50.0})
    # "There is no such thing." does not start with yes/no
    assert scores.notes == [
        "1 of 6 answers did not start with yes or no (read as 'no' if they contain no/not, else 'yes', as LLaVA does)"
    ]


def test_single_split_has_no_average_row(annotations, val2014):
    samples = load(annotations / "coco_pope_adversarial.json", val2014)
    scores = score(samples, {s.key: "Yes" for s in samples})
    assert list(scores.table.index) == ["adversarial"]
    # yes to both: TP 1, FP 1 -> precision 50, recall 100, F1 2*.5*1/1.5 = 66.67, accuracy 50, yes ratio 100
    assert scores.summary == pytest.approx({"f1": 200 / 3, "accuracy": 50.0, "yes_ratio": 100.0})
    assert scores.notes == []


def test_no_yes_answer_gives_zero_precision_and_f1():
    # two "no" answers to one yes and one no label: TP 0, FP 0 -> precision and F1 are 0, not a crash
    metrics = split_metrics([("no", "yes"), ("no", "no")])
    assert metrics == pytest.approx(
        {"f1": 0.0, "accuracy": 50.0, "precision": 0.0, "recall": 0.0, "yes_ratio": 0.0, "questions": 2}
    )


def test_image_folder_is_required(annotations):
    with pytest.raises(DatasetError, match="--image-folder"):
        load(annotations, None)


def test_empty_folder_is_an_error(tmp_path, val2014):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .json annotation files"):
        load(tmp_path / "empty", val2014)


def test_missing_key_names_file_and_line(tmp_path, val2014):
    path = _write(tmp_path / "coco_pope_random.json", [_question(1, "yes"), {"question_id": 2, "image": IMAGES[0]}])
    with pytest.raises(DatasetError, match=rf"{path}:2: missing key\(s\) text, label"):
        load(path, val2014)


def test_bad_label_names_file_and_line(tmp_path, val2014):
    path = _write(tmp_path / "coco_pope_random.json", [_question(1, "Yes")])
    with pytest.raises(DatasetError, match=rf"{path}:1: label must be 'yes' or 'no'"):
        load(path, val2014)


def test_repeated_question_id_is_an_error(tmp_path, val2014):
    path = _write(tmp_path / "coco_pope_random.json", [_question(1, "yes"), _question(1, "no")])
    with pytest.raises(DatasetError, match=rf"{path}:2: question_id 1 appears twice"):
        load(path, val2014)


def test_missing_image_names_sample_and_path(tmp_path, val2014):
    path = _write(tmp_path / "coco_pope_random.json", [_question(7, "yes", "COCO_val2014_000000000009.jpg")])
    with pytest.raises(DatasetError, match=r"question random/7\): image .*COCO_val2014_000000000009\.jpg not found"):
        load(path, val2014)


def test_not_json_lines_is_an_error(tmp_path, val2014):
    path = tmp_path / "coco_pope_random.json"
    path.write_text('[{"question_id": 1}]\n')
    with pytest.raises(DatasetError, match=rf"{path}:1: expected a JSON object"):
        load(path, val2014)


def test_benchmark_defaults():
    assert BENCHMARK.name == "pope"
    assert BENCHMARK.max_new_tokens == 16


def _rescore(answers: Path, data_path: Path, tmp_path: Path) -> tuple:
    console = Console(file=io.StringIO(), width=200)
    files = rescore_eval(BENCHMARK, answers, data_path, VAL2014, tmp_path, console)
    return files, console.file.getvalue()


def test_llava_answer_file_reproduces_official_metrics(tmp_path):
    files, output = _rescore(ANSWERS, COCO, tmp_path)
    table = files.scores.table
    assert list(table.index) == ["random", "popular", "adversarial", "average"]
    for split, official in EXPECTED["splits"].items():
        # eval_pope.py prints fractions; vltool percent, computed in the same order (equal to the bit)
        assert [table.loc[split, metric] for metric in METRICS] == [100 * official[metric] for metric in METRICS]
        assert table.loc[split, "questions"] == official["TP"] + official["FP"] + official["TN"] + official["FN"]
    assert "ignored" not in output


def test_parse_answer_reproduces_official_decisions():
    items = [item for official in EXPECTED["splits"].values() for item in official["decisions"]]
    assert len(items) == 54
    assert [parse_answer(item["text"]) for item in items] == [item["decision"] for item in items]


def test_llava_ids_find_their_split_and_question():
    samples = load(COCO, VAL2014)
    answers = match_answers(COCO, samples, read_answer_records(ANSWERS), ANSWERS)
    for split, official in EXPECTED["splits"].items():
        for number, item in enumerate(official["decisions"], start=1):
            # the n-th answer eval_pope.py pairs with the n-th label of coco_pope_<split>.json
            assert answers.texts[f"{split}/{number}"] == item["text"]


def test_one_split_file_scores_that_split_and_ignores_the_others(tmp_path):
    files, output = _rescore(ANSWERS, COCO / "coco_pope_random.json", tmp_path)
    official = EXPECTED["splits"]["random"]
    assert list(files.scores.table.index) == ["random"]
    assert [files.scores.table.loc["random", metric] for metric in METRICS] == [100 * official[m] for m in METRICS]
    assert "36 answer(s) to POPE splits not under --data-path ignored" in output


def test_vltool_predictions_file_scores_the_same(tmp_path):
    samples = load(COCO, VAL2014)
    llava = match_answers(COCO, samples, read_answer_records(ANSWERS), ANSWERS)
    own = tmp_path / "own_pope_predictions.jsonl"
    own.write_text("".join(json.dumps({"key": k, "prediction": t}) + "\n" for k, t in llava.texts.items()))
    files, _ = _rescore(own, COCO, tmp_path)
    assert files.scores.table.loc["popular", "f1"] == 100 * EXPECTED["splits"]["popular"]["f1"]


def test_annotations_of_another_pope_version_are_refused(tmp_path):
    # the POPE files after commit e3e3926 ask other questions under the same ids
    coco = tmp_path / "coco"
    shutil.copytree(COCO, coco)
    path = coco / "coco_pope_popular.json"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[4]["text"] = "Is there a giraffe in the image?"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(
        DatasetError, match=r"fixture\.jsonl:41: question 20000005 asks 'Is there a person in the image\?'"
    ):
        _rescore(ANSWERS, coco, tmp_path)


def test_pope_spelling_fix_is_accepted(tmp_path):
    # POPE's later commits spell "imange" as "image" in adversarial and popular and change nothing else
    coco = tmp_path / "coco"
    shutil.copytree(COCO, coco)
    path = coco / "coco_pope_adversarial.json"
    path.write_text(path.read_text().replace(" image?", " imange?"))
    files, _ = _rescore(ANSWERS, coco, tmp_path)
    assert files.scores.table.loc["adversarial", "f1"] == 100 * EXPECTED["splits"]["adversarial"]["f1"]


def _answer_lines() -> list[dict]:
    return [json.loads(line) for line in ANSWERS.read_text(encoding="utf-8").splitlines()]


def test_id_matching_no_question_is_named(tmp_path):
    lines = _answer_lines()
    stray = [dict(lines[0], question_id=30000001), dict(lines[0], question_id=10000099)]
    path = _write(tmp_path / "answers.jsonl", lines + stray)
    with pytest.raises(DatasetError, match=r"2 prediction\(s\) match no question \(30000001, 10000099\)"):
        _rescore(path, COCO, tmp_path)


def test_missing_answers_are_counted(tmp_path):
    path = _write(tmp_path / "answers.jsonl", _answer_lines()[:-2])
    with pytest.raises(DatasetError, match=r"2 question\(s\) have no prediction \(popular/17, popular/18\)"):
        _rescore(path, COCO, tmp_path)


def test_question_answered_twice_is_an_error(tmp_path):
    lines = _answer_lines()
    path = _write(tmp_path / "answers.jsonl", lines + lines[20:21])
    with pytest.raises(DatasetError, match=r"answers\.jsonl:55: question random/3 is answered twice"):
        _rescore(path, COCO, tmp_path)


@pytest.mark.parametrize("answer", ["No", "it is not"])
def test_split_without_yes_answers_scores_zero_instead_of_crashing(tmp_path, answer):
    # no "yes" answer in the adversarial split: eval_pope.py divides by zero for precision there
    lines = [dict(line, text=answer) if line["question_id"] < 10_000_000 else line for line in _answer_lines()]
    files, _ = _rescore(_write(tmp_path / "answers.jsonl", lines), COCO, tmp_path)
    row = files.scores.table.loc["adversarial"]
    # 18 questions, the 9 "yes" labels answered "no": accuracy 50, yes ratio 0; the rest 0
    assert row[["f1", "precision", "recall", "accuracy", "yes_ratio"]].tolist() == [0.0, 0.0, 0.0, 50.0, 0.0]
    assert files.scores.table.loc["random", "f1"] == 100 * EXPECTED["splits"]["random"]["f1"]


def test_no_right_yes_gives_zero_f1_instead_of_crashing():
    # "yes" only where the label is "no": precision 0 and recall 0, F1 = 0/0 in eval_pope.py
    metrics = split_metrics([("yes", "no"), ("no", "yes")])
    assert (metrics["precision"], metrics["recall"], metrics["f1"], metrics["yes_ratio"]) == (0.0, 0.0, 0.0, 50.0)
