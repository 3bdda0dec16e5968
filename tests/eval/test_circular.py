"""CircularEval passes as VLMEvalKit's ``vlmutil circular`` builds them, and grouping them back."""

import pandas as pd
import pytest

from vltool.errors import DatasetError
from vltool.eval.circular import OFFSET, add_passes, check_groups, group_hits, has_passes, rotating_count


def table(*questions: tuple[int, list[str], str]) -> pd.DataFrame:
    rows = []
    for index, options, answer in questions:
        padded = dict(zip("ABCD", options + [""] * (4 - len(options)), strict=True))
        rows.append({"index": index, "question": f"q{index}", **padded, "answer": answer, "image_index": index})
    return pd.DataFrame(rows)


def options(row: pd.Series) -> list[str]:
    return [row[letter] for letter in "ABCD"]


def test_four_options_rotate_one_letter_per_pass():
    passes = add_passes(table((7, ["cat", "dog", "bird", "fish"], "A"))).set_index("index")
    assert list(passes.index) == [7, OFFSET + 7, 2 * OFFSET + 7, 3 * OFFSET + 7]
    # pass k shows option L[j]'s text at L[j + k]: A's text "cat" moves to B, then C, then D
    assert options(passes.loc[OFFSET + 7]) == ["fish", "cat", "dog", "bird"]
    assert options(passes.loc[2 * OFFSET + 7]) == ["bird", "fish", "cat", "dog"]
    assert options(passes.loc[3 * OFFSET + 7]) == ["dog", "bird", "fish", "cat"]
    assert list(passes["answer"]) == ["A", "B", "C", "D"]
    assert set(passes["image_index"]) == {7} and set(passes["question"]) == {"q7"}


def test_fewer_options_give_fewer_passes():
    passes = add_passes(table((1, ["yes", "no"], "B"), (2, ["x", "y", "z"], "C")))
    assert list(passes["index"]) == [1, 2, OFFSET + 1, OFFSET + 2, 2 * OFFSET + 2]
    assert list(passes["answer"]) == ["B", "C", "A", "A", "B"]
    assert options(passes.iloc[2])[:2] == ["no", "yes"]


@pytest.mark.parametrize(
    ("texts", "rotating"),
    [
        (["cat", "dog", "bird", "fish"], 4),
        (["cat", "dog", "bird", "None of the above"], 3),  # "none" stays last
        (["cat", "dog", "bird", "All of the above"], 3),
        (["cat", "dog", "bird", "A, B and C"], 3),  # names every other letter
        (["cat", "dog", "bird", "A and B"], 4),  # names only some of A, B, C: it moves
        (["cat", "dog", "A and B"], 2),  # with three options, A and B are all the others
        (["cat", "dog", "all of them", "none of them"], 2),  # checked again one option earlier
        (["none", "all"], 2),  # two options always rotate
    ],
)
def test_options_that_refer_to_the_others_stay_last(texts, rotating):
    assert rotating_count(dict(zip("ABCD", texts, strict=False))) == rotating


def test_a_fixed_last_option_keeps_its_letter_and_answer():
    passes = add_passes(table((3, ["cat", "dog", "bird", "None of the above"], "D"))).set_index("index")
    assert len(passes) == 3
    assert options(passes.loc[OFFSET + 3]) == ["bird", "cat", "dog", "None of the above"]
    assert set(passes["answer"]) == {"D"}


def test_test_split_rows_rotate_without_answers():
    rows = table((5, ["a", "b"], "")).drop(columns="answer")
    passes = add_passes(rows)
    assert list(passes["index"]) == [5, OFFSET + 5] and "answer" not in passes


def test_groups_need_every_pass_right():
    indices = pd.Series([1, OFFSET + 1, 2, OFFSET + 2, 2 * OFFSET + 2])
    assert group_hits(indices, pd.Series([1, 1, 1, 0, 1])) == {1: True, 2: False}
    assert has_passes(pd.DataFrame({"index": indices})) and not has_passes(pd.DataFrame({"index": [1, 2]}))


def test_a_pass_without_its_original_is_refused():
    with pytest.raises(DatasetError, match=r"x.tsv: index 2000009 is a rotated pass of question 9, which is not in"):
        check_groups(pd.DataFrame({"index": [1, OFFSET + 1, 2 * OFFSET + 9]}), "x.tsv")
