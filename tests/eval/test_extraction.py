"""Reading the option an answer picks: VLMEvalKit's exact-matching rules, case by case."""

import pytest

from vltool.eval.extraction import extract_choice

ANIMALS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    ("answer", "choice", "rule"),
    [
        ("B", "B", "letter"),
        ("B.", "B", "letter"),
        ("(C) bird", "C", "letter"),
        ("**D**", "D", "letter"),
        ("I think it's B", "B", "letter"),
        # a capital letter inside a word is not a letter word
        ("Absolutely", None, "unresolved"),
        ("Bird", "C", "option text"),  # "bird" is option C's text
        # the letter must start within the last five words...
        ("B is wrong because dogs bark so the right one must be something else", None, "unresolved"),
        # ...unless the answer says "the answer is X"
        ("The answer is B because the animal barks and has four legs unlike a cat", "B", "answer is"),
        ("Correct answer is **C**, since it flies over the sea and sings at dawn in spring", "C", "answer is"),
        # two letters: neither rule 2 nor 3 decides, and no single option text is inside
        ("A or B", None, "unresolved"),
        # VLMEvalKit's known quirk, kept for faithful scores: a capitalised article is a letter word
        ("A dog", "A", "letter"),
    ],
)
def test_letters_and_answer_is(answer, choice, rule):
    result = extract_choice(answer, ANIMALS)
    assert (result.choice, result.rule) == (choice, rule)


@pytest.mark.parametrize(
    ("answer", "choice", "rule"),
    [
        ("It is a dog", "B", "option text"),
        ("the answer is a dog", "B", "option text"),  # lowercase "a" is an article, not option A
        ("a cat and a dog", None, "unresolved"),  # two options' texts
        ("it looks like a dog to me, doesn't it? yes.", None, "unresolved"),  # 44 chars > 2 x 14 option chars
        ("Cannot determine the answer", None, "refused"),
        ("I can't process this file.", None, "refused"),
        ("Z", None, "refused"),
        ("", None, "unresolved"),
    ],
)
def test_option_text_and_refusals(answer, choice, rule):
    result = extract_choice(answer, ANIMALS)
    assert (result.choice, result.rule) == (choice, rule)
    assert result.resolved == (choice is not None)


def test_chinese_answers():
    places = {"A": "天坛", "B": "故宫", "C": "黄鹤楼", "D": "少林寺"}
    assert extract_choice("故宫", places).choice == "B"
    assert extract_choice("B. 故宫", places).choice == "B"
    assert extract_choice("答案 C", places).choice == "C"
    # full-width punctuation is not a separator to VLMEvalKit: no standalone letter, no option text
    assert extract_choice("答案：C", places).rule == "unresolved"
    assert extract_choice("答案是B", places).rule == "unresolved"
    assert extract_choice("天坛和故宫", places).rule == "unresolved"  # two options' texts


def test_only_the_rows_letters_count():
    two = {"A": "yes", "B": "no"}
    assert extract_choice("C", two).rule == "unresolved"  # C is not an option of this question
    assert extract_choice("E. none", {**ANIMALS, "E": "none"}).choice == "E"
