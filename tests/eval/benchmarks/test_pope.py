import json
from pathlib import Path

import pytest
from PIL import Image

from vltool.errors import DatasetError
from vltool.eval.benchmarks.pope import BENCHMARK, load, parse_answer, score, split_metrics, split_name

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
    assert first.reference == {"split": "random", "label": "yes"}


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
        (" no\n", "no"),  # stripped as LLaVA's answers are
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
