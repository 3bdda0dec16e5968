"""CircularEval (MMBench): every question is asked once per rotation of its options.

A question with n options is asked n times; pass k shows the text of option ``L[j]`` at letter
``L[(j + k) % n]`` (so A's text moves to B on pass 1) and its row index is the original's plus
``k * 1e6``. This is how VLMEvalKit's ``vlmutil circular`` tool builds MMBench's TSVs, including
its one exception: a last option that names the other letters ("A, B and C") or says "all" or
"none" ("None of the above") keeps its place, and only the options before it rotate (checked
again on the option before it, down to two). A question counts as right only when every pass is.
"""

import pandas as pd

from vltool.errors import DatasetError
from vltool.eval.mmbench_data import OPTION_LETTERS, is_empty, options_of

OFFSET = 1_000_000
"""Rotated passes' indices are the original's plus ``k * OFFSET``."""


def group_index(index: int) -> int:
    """The original question a row (any pass) belongs to."""
    return index % OFFSET


def has_passes(rows: pd.DataFrame) -> bool:
    """Whether the table already holds rotated passes (VLMEvalKit's published MMBench TSVs do)."""
    return bool((rows["index"] >= OFFSET).any())


def rotating_count(options: dict[str, str]) -> int:
    """How many leading options rotate: all of them, unless trailing ones must keep their place."""
    count = len(options)
    while count > 2 and _stays_last(options[OPTION_LETTERS[count - 1]], count):
        count -= 1
    return count


def _stays_last(text: str, count: int) -> bool:
    """Whether the last of ``count`` options refers to the others, so it must not move."""
    words = text.replace(",", " ").split()
    if all(letter in words for letter in OPTION_LETTERS[: count - 1]):
        return True
    lowered = text.lower().replace(",", " ").split()
    return "all" in lowered or "none" in lowered


def add_passes(rows: pd.DataFrame) -> pd.DataFrame:
    """The table with every rotated pass added, sorted by index.

    Args:
        rows: original questions only (every index below :data:`OFFSET`); option columns A...,
            optional ``answer``; other columns are copied unchanged to the passes.

    Returns:
        Originals and passes; a pass keeps the original's ``image_index``, so its image is the same.
    """
    passes = [rows]
    for _, row in rows.iterrows():
        options = options_of(row)
        count = rotating_count(options)
        for k in range(1, count):
            rotated = row.copy()
            rotated["index"] = row["index"] + k * OFFSET
            for j in range(count):
                rotated[OPTION_LETTERS[(j + k) % count]] = options[OPTION_LETTERS[j]]
            if "answer" in row and not is_empty(row["answer"]) and row["answer"] in OPTION_LETTERS[:count]:
                rotated["answer"] = OPTION_LETTERS[(OPTION_LETTERS.index(row["answer"]) + k) % count]
            passes.append(rotated.to_frame().T)
    table = pd.concat(passes, ignore_index=True)
    table["index"] = table["index"].astype(int)
    table["image_index"] = table["image_index"].astype(int)
    return table.sort_values("index", kind="stable").reset_index(drop=True)


def check_groups(rows: pd.DataFrame, source: str) -> None:
    """Every rotated pass must belong to an original question that is present.

    Raises:
        DatasetError: naming the first pass whose original index is missing.
    """
    originals = set(rows.loc[rows["index"] < OFFSET, "index"])
    for index in rows.loc[rows["index"] >= OFFSET, "index"]:
        if group_index(index) not in originals:
            raise DatasetError(
                f"{source}: index {index} is a rotated pass of question {group_index(index)}, which is not in the file."
            )


def group_hits(indices: pd.Series, hits: pd.Series) -> dict[int, bool]:
    """Per original question: whether every one of its passes is right.

    Args:
        indices: row indices (any pass).
        hits: whether each row's answer is right.

    Returns:
        original index -> circular hit.
    """
    frame = pd.DataFrame({"group": indices.map(group_index), "hit": hits.astype(bool)})
    return frame.groupby("group")["hit"].all().to_dict()
