import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from vltool.errors import DatasetError
from vltool.eval.benchmarks.answers import read_answer_records
from vltool.eval.benchmarks.mme import BENCHMARK, load, match_answers, parse_answer, score
from vltool.eval.evaluate import rescore_eval

OFFICIAL = Path(__file__).parents[2] / "assets" / "benchmarks" / "official" / "mme"
"""A synthetic MME release, LLaVA-layout answers and what MME's official chain made of them (see its README)."""
RELEASE = OFFICIAL / "MME_Benchmark_release_version"
ANSWERS = OFFICIAL / "answers" / "fixture.jsonl"
EXPECTED = json.loads((OFFICIAL / "expected.json").read_text(encoding="utf-8"))


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
    assert artwork.reference == {
        "subtask": "artwork",
        "image": "10002.jpg",
        "question": "Is this a painting?",
        "answer": "yes",
    }
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
        (" No.\n", "no"),  # " no." holds "no" within the first four characters
        ("   no", "other"),  # not stripped, as calculation.py reads it: "   n"
        ("Yes\tthere is", "yes"),  # a tab or line break breaks the official chain; read as any answer
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


def _rescore(answers: Path, release: Path, tmp_path: Path) -> tuple:
    console = Console(file=io.StringIO(), width=200)
    files = rescore_eval(BENCHMARK, answers, release, None, tmp_path, console)
    return files, console.file.getvalue()


def test_llava_answer_file_reproduces_official_scores(tmp_path):
    files, output = _rescore(ANSWERS, RELEASE, tmp_path)
    table = files.scores.table
    for subtask, official in EXPECTED["subtasks"].items():
        # calculation.py's printed score (acc + acc+) and its acc, to the bit
        assert table.loc[subtask, "score"] == official["score"], subtask
        assert table.loc[subtask, "acc"] == 100 * official["acc"], subtask
    assert files.scores.summary["perception"] == EXPECTED["totals"]["Perception"]
    assert files.scores.summary["cognition"] == EXPECTED["totals"]["Cognition"]
    assert files.results == tmp_path / "fixture_results.csv" and files.results.is_file()
    assert "ignored" not in output


def test_parse_answer_reproduces_official_decisions():
    items = [item for official in EXPECTED["subtasks"].values() for item in official["items"]]
    assert len(items) == 64
    assert {item["parsed"] for item in items} == {"yes", "no", "other"}
    assert [parse_answer(item["answer"]) for item in items] == [item["parsed"] for item in items]


def test_llava_lines_find_the_question_convert_answer_to_mme_finds():
    samples = load(RELEASE, None)
    answers = match_answers(RELEASE, samples, read_answer_records(ANSWERS), ANSWERS)
    by_question = {
        (s.reference["subtask"], Path(s.reference["image"]).stem + ".txt", s.reference["question"]): s.key
        for s in samples
    }
    for subtask, official in EXPECTED["subtasks"].items():
        for item in official["items"]:
            # the release's question, with its "Please answer yes or no." (one or two spaces before it)
            question = item["question"].replace("Please answer yes or no.", "").strip()
            assert answers.texts[by_question[(subtask, item["file"], question)]] == item["answer"]
    assert answers.ignored == 0


def test_vltool_predictions_file_scores_the_same(tmp_path):
    samples = load(RELEASE, None)
    llava = match_answers(RELEASE, samples, read_answer_records(ANSWERS), ANSWERS)
    own = tmp_path / "own_mme_predictions.jsonl"
    own.write_text("".join(json.dumps({"key": k, "prediction": t}) + "\n" for k, t in llava.texts.items()))
    files, _ = _rescore(own, RELEASE, tmp_path)
    assert files.scores.summary["total"] == EXPECTED["totals"]["Perception"] + EXPECTED["totals"]["Cognition"]


def test_lines_for_absent_subtasks_are_counted_and_ignored(tmp_path):
    release = tmp_path / "release"
    shutil.copytree(RELEASE, release)
    for subtask in ("artwork", "code_reasoning"):
        shutil.rmtree(release / subtask)
    files, output = _rescore(ANSWERS, release, tmp_path)
    # artwork has 4 answers, code_reasoning 6
    assert "10 answer(s) to MME subtasks not under --data-path ignored" in output
    assert files.scores.table.loc["existence", "score"] == EXPECTED["subtasks"]["existence"]["score"]
    assert "artwork" not in files.scores.table.index
    assert "12 of 14 subtasks present: totals are not comparable with full-MME scores" in files.scores.notes


def _answer_lines() -> list[str]:
    return ANSWERS.read_text(encoding="utf-8").splitlines(keepends=True)


def test_line_matching_no_question_is_named(tmp_path):
    stray = {"question_id": "existence/000000999999.jpg", "prompt": "Is there a cow?\nAnswer.", "text": "Yes"}
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(_answer_lines()) + json.dumps(stray) + "\n")
    with pytest.raises(
        DatasetError, match=r"1 prediction\(s\) match no question \(existence/000000999999\.jpg \(line 65\)\)"
    ):
        _rescore(path, RELEASE, tmp_path)


def test_missing_answers_are_counted(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(_answer_lines()[3:]))
    with pytest.raises(DatasetError, match=r"3 question\(s\) have no prediction \(existence/000000006040\.jpg#1, "):
        _rescore(path, RELEASE, tmp_path)


def test_question_answered_twice_is_an_error(tmp_path):
    lines = _answer_lines()
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(lines + lines[:1]))
    with pytest.raises(DatasetError, match=rf"{path}:65: question existence/000000006040\.jpg#1 is answered twice"):
        _rescore(path, RELEASE, tmp_path)


def test_subtask_with_no_yes_or_no_answer_scores_zero(release):
    # calculation.py stops here (scikit-learn: empty yes/no list); vltool scores the subtask 0
    samples = load(release, None)
    predictions = {s.key: ("Maybe" if s.reference["subtask"] == "existence" else "Yes") for s in samples}
    table = score(samples, predictions).table
    assert table.loc["existence", ["acc", "acc+", "score"]].tolist() == [0.0, 0.0, 0.0]
