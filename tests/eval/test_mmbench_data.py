"""Reading MMBench TSVs: both image layouts, and one clear error per kind of bad file."""

import pandas as pd
import pytest

from tests.eval.mmbench_files import colour_questions, image_base64, write_tsv
from vltool.errors import DatasetError
from vltool.eval.mmbench_data import options_of, read_mmbench_tsv


def test_image_references_resolve_like_repeated_images(tmp_path):
    rows = colour_questions()
    legacy = read_mmbench_tsv(write_tsv(tmp_path / "legacy.tsv", rows))
    # VLMEvalKit's layout: a row names the index of the row holding the image data
    rows[1]["image"] = "0"
    referenced = read_mmbench_tsv(write_tsv(tmp_path / "referenced.tsv", rows))
    row = referenced.rows.iloc[1]
    assert row["image_index"] == 0 and referenced.image_id(row) == legacy.image_id(legacy.rows.iloc[0])
    assert referenced.image(row).getpixel((0, 0)) == (255, 0, 0)  # the red picture of index 0
    assert legacy.image(legacy.rows.iloc[1]).getpixel((0, 0)) == (0, 128, 0)
    assert "image" not in referenced.rows and referenced.has_answers


def test_options_and_test_splits(tmp_path):
    rows = colour_questions()
    for row in rows:
        del row["answer"]
    rows[0]["C"] = "None"  # pandas (so VLMEvalKit and LLaVA) read "None" as missing: the options end at B
    rows[0]["D"] = ""
    table = read_mmbench_tsv(write_tsv(tmp_path / "test.tsv", rows))
    assert not table.has_answers
    assert options_of(table.rows.iloc[0]) == {"A": "red", "B": "green"}
    assert options_of(table.rows.iloc[1]) == {"A": "red", "B": "green", "C": "blue"}


def bad_file(tmp_path, edit) -> str:
    rows = colour_questions()
    edit(rows)
    path = write_tsv(tmp_path / "bad.tsv", rows)
    with pytest.raises(DatasetError) as caught:
        table = read_mmbench_tsv(path)
        table.image(table.rows.iloc[0])
    return str(caught.value).replace(str(path), "bad.tsv")


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "few.tsv"
    pd.DataFrame(colour_questions()).drop(columns=["question", "image"]).to_csv(path, sep="\t", index=False)
    with pytest.raises(DatasetError, match="missing column\\(s\\) question, image; an MMBench TSV has index,"):
        read_mmbench_tsv(path)
    with pytest.raises(DatasetError, match="gone.tsv: TSV file not found"):
        read_mmbench_tsv(tmp_path / "gone.tsv")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[2].update(image="7"), "bad.tsv: index 2: image refers to index 7, which has no image data"),
        (lambda rows: rows[2].update(image=""), "bad.tsv: index 2: image is empty"),
        (lambda rows: rows[1].update(index="one"), "bad.tsv: row 2: index 'one' is not an integer."),
        (lambda rows: rows[3].update(index=0), "bad.tsv: rows 1 and 4 share index 0."),
        (lambda rows: rows[0].update(C=""), "bad.tsv: row 1 (index 0): option C is empty but D is not"),
        (lambda rows: rows[3].update(B=""), "bad.tsv: row 4 (index 3): needs at least options A and B."),
        (lambda rows: rows[1].update(answer="D"), "bad.tsv: row 2 (index 1): answer 'D' is not one of its options"),
        (lambda rows: rows[1].update(answer=""), "bad.tsv: row 2 (index 1): answer '' is not one of its options"),
        (lambda rows: rows[0].update(image="x" * 80), "bad.tsv: image of index 0: cannot decode image"),
    ],
)
def test_bad_rows_name_the_row(tmp_path, edit, message):
    assert bad_file(tmp_path, edit).startswith(message)


def test_a_row_can_reuse_an_image_that_comes_later(tmp_path):
    rows = colour_questions()
    rows[0]["image"], rows[3]["image"] = "3", image_base64("red")
    table = read_mmbench_tsv(write_tsv(tmp_path / "later.tsv", rows))
    assert table.rows.iloc[0]["image_index"] == 3
