import json
from pathlib import Path

import pytest
from PIL import Image

from vltool.errors import DatasetError
from vltool.eval.benchmarks.custom import BENCHMARK, load, score

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _write(path: Path, *records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def questions(tmp_path):
    """Four questions next to their images: two multiple-choice, two short-answer, one text-only."""
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    return _write(
        tmp_path / "mine.jsonl",
        {
            "id": "pet",
            "image": "a.jpg",
            "question": "What is it?",
            "options": {"A": "cat", "B": "dog"},
            "answer": "A",
            "category": "animals",
        },
        {
            "image": ["a.jpg", "b.jpg"],
            "question": "Which is bigger?",
            "options": ["left", "right"],
            "answer": "right",
            "category": "space",
        },
        {"image": "b.jpg", "question": "How many dogs?", "answer": "2 dogs", "category": "animals"},
        {"question": "What colour is the sky?", "answer": "blue"},
    )


def test_load_prompts_images_and_references(questions, tmp_path):
    samples = load(questions, None)  # images relative to the file's folder by default
    assert [s.key for s in samples] == ["pet", "2", "3", "4"]  # the id, else the line number
    assert samples[0].prompt == f"<image>\nWhat is it?\nA. cat\nB. dog\n{MC_INSTRUCTION}"
    assert samples[0].images == (tmp_path / "a.jpg",)
    # one marker per image; list options are lettered A, B and the answer text maps to its letter
    assert samples[1].prompt == f"<image>\n<image>\nWhich is bigger?\nA. left\nB. right\n{MC_INSTRUCTION}"
    assert samples[1].images == (tmp_path / "a.jpg", tmp_path / "b.jpg")
    assert samples[1].reference == {"category": "space", "options": {"A": "left", "B": "right"}, "answer": "B"}
    assert samples[2].prompt == "<image>\nHow many dogs?"
    assert samples[3].prompt == "What colour is the sky?"  # text-only: no marker
    assert samples[3].images == ()


def test_image_folder_overrides_the_file_folder(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "x.png")
    path = _write(tmp_path / "q" / "mine.jsonl", {"image": "x.png", "question": "q?", "answer": "a"})
    assert load(path, folder)[0].images == (folder / "x.png",)


def test_score_overall_and_per_category(questions):
    samples = load(questions, None)
    predictions = {
        "pet": "A",  # right letter
        "2": "I cannot tell",  # no option read: wrong, and noted
        "3": "Two dogs.",  # normalises to "2 dogs": right
        "4": "grey",  # wrong
    }
    scores = score(samples, predictions)
    # overall 2/4 = 50; animals 2/2 = 100; space 0/1 = 0; no category 0/1 = 0
    assert list(scores.table.index) == ["overall", "(no category)", "animals", "space"]
    assert scores.table["accuracy"].to_dict() == {"overall": 50.0, "(no category)": 0.0, "animals": 100.0, "space": 0.0}
    assert scores.table["questions"].to_dict() == {"overall": 4, "(no category)": 1, "animals": 2, "space": 1}
    assert scores.summary == {"accuracy": 50.0}
    assert scores.chart == {"(no category)": 0.0, "animals": 100.0, "space": 0.0}
    assert scores.notes == ["1 of 4 answers picked no option (counted wrong)"]


def test_multiple_choice_answer_read_by_vlmevalkit_rules(questions):
    samples = load(questions, None)
    # "The answer is B" and the option text "right" both pick B; a wrong letter does not count
    for prediction, expected in (("The answer is B.", 100.0), ("right", 100.0), ("A", 0.0)):
        scores = score(samples[1:2], {"2": prediction})
        assert scores.summary == {"accuracy": expected}, prediction


def test_no_categories_gives_only_overall(tmp_path):
    path = _write(tmp_path / "q.jsonl", {"question": "q?", "answer": "The Cat"}, {"question": "q?", "answer": "3"})
    # "cat" matches "The Cat" after normalisation; "three" -> "3" matches: 2/2 = 100
    scores = score(load(path, None), {"1": "cat", "2": "three"})
    assert list(scores.table.index) == ["overall"]
    assert scores.summary == {"accuracy": 100.0}
    assert scores.notes == []


def test_numeric_answer_is_read_as_text(tmp_path):
    path = _write(tmp_path / "q.jsonl", {"question": "How many?", "answer": 4})
    assert score(load(path, None), {"1": "four"}).summary == {"accuracy": 100.0}


def test_benchmark_settings():
    assert BENCHMARK.name == "custom"
    assert BENCHMARK.max_new_tokens == 64


# --- bad input ---


def test_duplicate_id_names_both_lines(tmp_path):
    path = _write(
        tmp_path / "q.jsonl", {"id": 7, "question": "q", "answer": "a"}, "", {"id": "7", "question": "q", "answer": "b"}
    )
    with pytest.raises(DatasetError, match=r"q\.jsonl:3: id '7' already used on line 1"):
        load(path, None)


def test_answer_that_names_no_option(tmp_path):
    path = _write(tmp_path / "q.jsonl", {"question": "q", "options": ["cat", "dog"], "answer": "C"})
    with pytest.raises(DatasetError, match=r"q\.jsonl:1: answer 'C' is neither an option letter \(A, B\)"):
        load(path, None)


@pytest.mark.parametrize("options", [["only one"], {"a": "x", "b": "y"}, {"AB": "x", "C": "y"}, "A. x B. y", [1, 2]])
def test_malformed_options(tmp_path, options):
    path = _write(tmp_path / "q.jsonl", {"question": "q", "options": options, "answer": "A"})
    with pytest.raises(DatasetError, match=r"q\.jsonl:1: (?:'options'|every option)"):
        load(path, None)


def test_missing_key_names_file_and_line(tmp_path):
    path = _write(tmp_path / "q.jsonl", {"question": "q", "answer": "a"}, {"question": "q"})
    with pytest.raises(DatasetError, match=r"q\.jsonl:2: missing key\(s\) answer"):
        load(path, None)


def test_missing_image_names_line_and_path(tmp_path):
    path = _write(tmp_path / "q.jsonl", {"image": "gone.jpg", "question": "q", "answer": "a"})
    with pytest.raises(DatasetError, match=r"q\.jsonl:1: image .*gone\.jpg not found"):
        load(path, None)


def test_bad_image_field(tmp_path):
    path = _write(tmp_path / "q.jsonl", {"image": {"path": "a.jpg"}, "question": "q", "answer": "a"})
    with pytest.raises(DatasetError, match=r"q\.jsonl:1: 'image' must be a path"):
        load(path, None)


def test_line_that_is_not_an_object(tmp_path):
    path = _write(tmp_path / "q.jsonl", '"just a string"')
    with pytest.raises(DatasetError, match=r"q\.jsonl:1: expected a JSON object"):
        load(path, None)
