from pathlib import Path

import pytest
from PIL import Image

from vltool.errors import DatasetError
from vltool.eval.benchmarks.mme import BENCHMARK, load, parse_answer, score


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def _questions(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def release(tmp_path):
    """A partial MME release: two flat-layout subtasks and one images/ + questions_answers_YN/ subtask."""
    root = tmp_path / "MME_Benchmark_release_version"
    existence = root / "existence"
    _image(existence / "1.jpg")
    _questions(
        existence / "1.txt",
        "Is there a dog? Please answer yes or no.\tYes",
        "Is there a cat?  Please answer yes or no.\tNo",
    )
    _image(existence / "2.png")
    _questions(
        existence / "2.txt",
        "Is there a car? Please answer yes or no.\tYes",
        "Is there a bus? Please answer yes or no.\tNo",
        "",
    )
    artwork = root / "artwork"
    _image(artwork / "images" / "10002.jpg")
    _questions(
        artwork / "questions_answers_YN" / "10002.txt",
        "Is this a painting? Please answer yes or no.\tYes",
        "Is this glassware? Please answer yes or no.\tNo",
    )
    code = root / "code_reasoning"
    _image(code / "0001.png")
    _questions(
        code / "0001.txt",
        "Does it print 3? Please answer yes or no.\tYes",
        "Does it print 4? Please answer yes or no.\tNo",
    )
    (root / "not_a_subtask").mkdir()
    return root


def test_load_reads_both_layouts_in_official_order(release):
    samples = load(release, None)
    assert [s.key for s in samples] == [
        "existence/1.jpg#1",
        "existence/1.jpg#2",
        "existence/2.png#1",
        "existence/2.png#2",
        "artwork/10002.jpg#1",
        "artwork/10002.jpg#2",
        "code_reasoning/0001.png#1",
        "code_reasoning/0001.png#2",
    ]
    artwork = samples[4]
    assert artwork.images == (release / "artwork" / "images" / "10002.jpg",)
    assert artwork.reference == {"subtask": "artwork", "image": "10002.jpg", "answer": "yes"}
    assert samples[1].reference["answer"] == "no"


def test_prompt_drops_yes_no_suffix_and_adds_llava_instruction(release):
    samples = load(release, None)
    assert samples[0].prompt == "<image>\nIs there a dog?\nAnswer the question using a single word or phrase."
    # the double space before the suffix (present in the release) is stripped too
    assert samples[1].prompt == "<image>\nIs there a cat?\nAnswer the question using a single word or phrase."


def test_load_accepts_the_nested_mme_benchmark_folder(release, tmp_path):
    outer = tmp_path / "download"
    outer.mkdir()
    release.rename(outer / "MME_Benchmark")
    assert len(load(outer, None)) == 8


@pytest.mark.parametrize(
    ("prediction", "parsed"),
    [
        ("Yes", "yes"),
        ("no", "no"),
        (" No.\n", "no"),  # stripped, then "no" within the first four characters
        ("Yes, there is a dog.", "yes"),
        ("Not really", "no"),  # "not " holds "no"
        ("There is no dog.", "other"),  # "no" only after the first four characters
        ("I think yes", "other"),
        ("", "other"),
    ],
)
def test_parse_answer_follows_official_rules(prediction, parsed):
    assert parse_answer(prediction) == parsed


def test_score_matches_hand_computed_values(release):
    samples = load(release, None)
    answers = ["Yes", "No", "Yes", "Yes", "There is", "No", "yes", "no"]
    scores = score(samples, {s.key: a for s, a in zip(samples, answers, strict=True)})
    table = scores.table
    assert list(table.index) == ["existence", "artwork", "code_reasoning", "perception", "cognition"]
    # existence: 3 of 4 questions right -> 75; image 1 both right, image 2 not -> 50; score 125
    assert table.loc["existence", "acc"] == pytest.approx(75.0)
    assert table.loc["existence", "acc+"] == pytest.approx(50.0)
    assert table.loc["existence", "score"] == pytest.approx(125.0)
    # artwork: "There is" reads as "other" (wrong), "No" right -> acc 50, acc+ 0, score 50
    assert table.loc["artwork", ["acc", "acc+", "score"]].tolist() == pytest.approx([50.0, 0.0, 50.0])
    # perception: score 125 + 50 = 175; pooled acc 4 of 6 = 66.67, acc+ 1 of 3 images = 33.33
    assert table.loc["perception", "score"] == pytest.approx(175.0)
    assert table.loc["perception", "acc"] == pytest.approx(400 / 6)
    assert table.loc["perception", "acc+"] == pytest.approx(100 / 3)
    assert table.loc["perception", "questions"] == 6
    assert table.loc["cognition", "score"] == pytest.approx(200.0)
    assert scores.summary == pytest.approx({"perception": 175.0, "cognition": 200.0, "total": 375.0})
    assert scores.chart == pytest.approx({"existence": 125.0, "artwork": 50.0, "code_reasoning": 200.0})
    assert scores.notes == [
        "3 of 14 subtasks present: totals are not comparable with full-MME scores",
        "1 of 8 answers were neither yes nor no (counted wrong)",
    ]


def test_group_without_subtasks_has_no_total_row(release):
    samples = [s for s in load(release, None) if s.reference["subtask"] == "existence"]
    scores = score(samples, {s.key: "yes" for s in samples})
    assert list(scores.table.index) == ["existence", "perception"]
    # "yes" everywhere: 2 of 4 right -> 50, no image fully right -> 0
    assert scores.summary == pytest.approx({"perception": 50.0, "total": 50.0})


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="no MME subtask folder"):
        load(tmp_path, None)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        load(tmp_path / "absent", None)


def test_malformed_line_names_file_and_line(release):
    path = release / "existence" / "2.txt"
    _questions(path, "Is there a car?\tYes", "Is there a bus? Maybe")
    with pytest.raises(DatasetError, match=rf"{path}:2: expected 'question<TAB>Yes'"):
        load(release, None)


def test_answer_other_than_yes_no_is_an_error(release):
    path = release / "existence" / "1.txt"
    _questions(path, "Is there a dog?\tMaybe")
    with pytest.raises(DatasetError, match=rf"{path}:1:"):
        load(release, None)


def test_missing_image_names_question_file_and_path(release):
    (release / "artwork" / "images" / "10002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"10002\.txt: no image .*images/10002\.jpg"):
        load(release, None)


def test_benchmark_defaults():
    assert BENCHMARK.name == "mme"
    assert BENCHMARK.max_new_tokens == 16
