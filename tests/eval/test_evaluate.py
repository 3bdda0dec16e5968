"""``run_eval`` and rescoring with a scripted model: files, numbers, LLaVA answer files, errors."""

import json

import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from vltool.errors import ConfigError, DatasetError
from vltool.eval.evaluate import check_rules, get_benchmark, rescore_eval, run_eval


class CentrePixel:
    """Says the colour of the first image's centre pixel ("red"/"blue"), or "4" without an image."""

    NAMES = {(255, 0, 0): "Red.", (0, 0, 255): "blue"}

    def __init__(self):
        self.prompts = []

    def answer(self, conversations, images, options=None):
        self.prompts += [c[-1].content for c in conversations]
        return [self.NAMES[i[0].getpixel((5, 5))] if i else "4" for i in images]


@pytest.fixture
def questions(tmp_path):
    for name, colour in (("r.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (10, 10), colour).save(tmp_path / name)
    lines = [
        {"id": "a", "image": "r.png", "question": "Colour?", "answer": "red", "category": "colour"},
        {"id": "b", "image": "b.png", "question": "Colour?", "answer": "green", "category": "colour"},
        {"id": "c", "question": "2 + 2?", "answer": "four", "category": "maths"},  # "4" = "four" after normalising
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path / "q.jsonl"


def test_run_writes_predictions_and_results(questions, tmp_path):
    model = CentrePixel()
    files = run_eval(
        lambda: model,
        get_benchmark("custom"),
        questions,
        None,
        tmp_path / "out",
        "m",
        {"model": "x"},
        console=Console(quiet=True),
    )
    assert files.predictions.name == "m_custom_predictions.jsonl" and model.prompts[0] == "<image>\nColour?"
    lines = [json.loads(line) for line in files.predictions.read_text().splitlines()]
    assert [(line["key"], line["prediction"]) for line in lines] == [("a", "Red."), ("b", "blue"), ("c", "4")]
    table = pd.read_csv(files.results, index_col="name")
    # a and c right, b wrong: 2/3 overall; colour 1/2; maths 1/1
    assert table["accuracy"].round(2).to_dict() == {"overall": 66.67, "colour": 50.0, "maths": 100.0}
    assert files.chart.stat().st_size > 1000
    again = CentrePixel()
    run_eval(
        lambda: again,
        get_benchmark("custom"),
        questions,
        None,
        tmp_path / "out",
        "m",
        {"model": "x"},
        console=Console(quiet=True),
    )
    assert again.prompts == []  # every answer came from the cache


def test_llava_answer_files_rescore(questions, tmp_path):
    answers = [
        {"question_id": "a", "text": "red"},
        {"question_id": "b", "text": "green"},
        {"question_id": "c", "text": "5"},
    ]
    (tmp_path / "llava_answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    files = rescore_eval(
        get_benchmark("custom"), tmp_path / "llava_answers.jsonl", questions, None, None, Console(quiet=True)
    )
    assert files.results == tmp_path / "llava_answers_results.csv"
    assert pd.read_csv(files.results, index_col="name").loc["overall", "accuracy"] == pytest.approx(200 / 3)
    (tmp_path / "bad.jsonl").write_text('{"key": "a"}\n')
    with pytest.raises(DatasetError, match="bad.jsonl:1: needs key and prediction"):
        rescore_eval(get_benchmark("custom"), tmp_path / "bad.jsonl", questions, None, None, Console(quiet=True))


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown benchmark 'vqav2'; choose one of mme, pope, seed, scienceqa,"):
        get_benchmark("vqav2")


def test_rules_are_checked_and_printed(questions, tmp_path):
    with pytest.raises(ConfigError, match=r"--rules 'vlmevalkit': custom scores by official \(default official\)"):
        check_rules(get_benchmark("custom"), "vlmevalkit")
    assert check_rules(get_benchmark("scienceqa"), None) == "official"
    assert check_rules(get_benchmark("scienceqa"), "vlmevalkit") == "vlmevalkit"
    (tmp_path / "answers.jsonl").write_text(
        "".join(json.dumps({"key": k, "prediction": p}) + "\n" for k, p in (("a", "red"), ("b", "x"), ("c", "4")))
    )
    console = Console(record=True, width=200)
    rescore_eval(get_benchmark("custom"), tmp_path / "answers.jsonl", questions, None, None, console)
    assert "scoring rules: official (vltool's: options read by VLMEvalKit's exact matching" in console.export_text()


def test_answer_file_errors_count_and_name_the_questions(questions, tmp_path):
    def rescore(lines: list[dict]) -> None:
        (tmp_path / "p.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        rescore_eval(get_benchmark("custom"), tmp_path / "p.jsonl", questions, None, None, Console(quiet=True))

    with pytest.raises(DatasetError, match=r"p.jsonl: 1 question\(s\) have no prediction \(c\); 1 prediction\(s\) "):
        rescore([{"key": "a", "prediction": "red"}, {"key": "b", "prediction": "x"}, {"key": "zz", "prediction": "y"}])
    with pytest.raises(DatasetError, match=r"p.jsonl:2: question a is answered twice"):
        rescore([{"key": "a", "prediction": "red"}, {"question_id": "a", "text": "blue"}])
