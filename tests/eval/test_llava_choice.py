"""LLaVA's answer-reading rules, each on its own and against eval_science_qa.py's own decisions."""

import json
from collections import Counter
from pathlib import Path

import pytest

from vltool.eval.llava_choice import Reading, read_scienceqa, read_seed, reading_notes, scienceqa_letters

SCIENCEQA = Path(__file__).parents[1] / "assets" / "benchmarks" / "official" / "scienceqa"


@pytest.mark.parametrize(
    ("text", "letter", "rule"),
    [
        ("B", "B", "letter"),
        ("E", "E", "letter"),  # read, whatever the question's options (E on two options is scored wrong)
        ("F", None, "unread"),  # past the script's A-E
        ("AB", None, "unread"),  # not one letter
        ("", None, "unread"),
        ("b", None, "unread"),
        (" B", None, "unread"),  # never stripped
        ("B.", None, "unread"),  # a full stop needs a space after it
        ("B. ", "B", "letter and text"),
        ("B. a long sentence that goes on well past five words", "B", "letter and text"),
        ("B.dog", None, "unread"),
        ("The answer is B.", "B", "the answer is"),
        ("Because of the fur, The answer is C!", "C", "the answer is"),
        ("The answer is BC", "B", "the answer is"),  # any one character may follow the letter
        ("The answer is Z.", "Z", "the answer is"),  # any capital (scored wrong)
        ("The answer is B", None, "unread"),  # nothing after the letter
        ("The answer is B\n", None, "unread"),  # a newline is not "any character"
        ("the answer is B.", None, "unread"),  # case-sensitive
        ("The answer is A. The answer is B.", None, "unread"),  # found twice
        ("A. The answer is B.", "A", "letter and text"),  # rules are tried in order
        ("F. The answer is B.", "B", "the answer is"),  # F is no letter of the script's
    ],
)
def test_scienceqa_rules(text, letter, rule):
    assert read_scienceqa(text) == Reading(letter, rule)


def test_letters_widen_only_where_the_answer_is_past_e():
    assert scienceqa_letters(3, "B") == scienceqa_letters(7, "E") == ("A", "B", "C", "D", "E")
    assert scienceqa_letters(7, "F") == ("A", "B", "C", "D", "E", "F", "G")  # the script would crash here
    assert read_scienceqa("F", scienceqa_letters(6, "F")) == Reading("F", "letter")
    assert read_scienceqa("F. steam", scienceqa_letters(6, "F")) == Reading("F", "letter and text")


def test_scienceqa_reader_reproduces_every_parsed_answer_of_the_official_script():
    expected = json.loads((SCIENCEQA / "official_decisions.json").read_text())["items"]
    problems = json.loads((SCIENCEQA / "problems.json").read_text())
    letters = {pid: scienceqa_letters(len(p["choices"]), "ABCDE"[p["answer"]]) for pid, p in problems.items()}
    parsed = {pid: read_scienceqa(item["pred"], letters[pid]).letter or "FAILED" for pid, item in expected.items()}
    # every test question the script scored, text-only ones included: 54 answers in many forms
    assert len(parsed) == 54
    assert parsed == {pid: item["parsed_ans"] for pid, item in expected.items()}


@pytest.mark.parametrize(
    ("text", "letter"),
    [("A", "A"), ("D", "D"), ("E", None), ("", None), ("AB", None), ("a", None), ("A.", None), (" A", None)],
)
def test_seed_accepts_exactly_one_letter(text, letter):
    assert read_seed(text) == Reading(letter, "letter" if letter else "unread")


def test_notes_count_each_rule_and_the_answers_naming_no_option():
    counts = Counter({"letter": 7, "the answer is": 2, "unread": 3})
    assert reading_notes(counts, 1, 12, "eval.py") == [
        "answers read as eval.py reads them: letter 7, the answer is 2, unread 3",
        "3 of 12 answers name no option by eval.py's rules (counted wrong)",
        "1 of 12 answers name a letter that is not an option (counted wrong)",
    ]
    assert reading_notes(Counter({"letter": 4}), 0, 4, "eval.py") == ["answers read as eval.py reads them: letter 4"]
