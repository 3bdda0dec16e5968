"""MMBench-layout TSV files (MMBench dev/test EN/CN v1.0 and v1.1, CCBench): read, check, resolve images.

Columns: ``index``, ``question``, ``hint``, ``A``, ``B``, ... (up to the last option present),
``answer`` (absent or empty on test splits), ``category``, ``l2-category``, ``split`` and ``image``.
``image`` holds a base64-encoded image or, in VLMEvalKit's layout, the index of another row whose
image to reuse (any value of at most 64 characters is such a reference, as VLMEvalKit reads it).
"""

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from vltool.data.images import load_image
from vltool.errors import DatasetError

REQUIRED_COLUMNS = ("index", "question", "A", "B", "image")
OPTION_LETTERS = "ABCDEFGHI"
IMAGE_REFERENCE_MAX_LENGTH = 64
"""An ``image`` value this short is another row's index, not image data (VLMEvalKit's rule)."""


@dataclass
class MMBenchTable:
    """An MMBench TSV, checked.

    Attributes:
        path: the TSV file.
        rows: one row per question: the TSV's columns except ``image`` (strings, ``index`` an int),
            plus ``image_index``: the row whose image data the question shows.
        images: index -> base64 image data, for the rows that hold image data.
        has_answers: whether the questions have answers (dev splits) or not (test splits).
    """

    path: Path
    rows: pd.DataFrame
    images: dict[int, str]
    has_answers: bool

    def image(self, row: pd.Series) -> Image.Image:
        """Decode the image of a question row.

        Raises:
            DatasetError: the data is not base64 or not an image (the TSV and index named).
        """
        name = f"{self.path}: image of index {row['index']}"
        try:
            data = base64.b64decode(self.images[int(row["image_index"])], validate=False)
        except (binascii.Error, ValueError):
            raise DatasetError(f"{name}: not base64 image data; fix or remove the row.") from None
        return load_image(io.BytesIO(data), name=name)

    def image_id(self, row: pd.Series) -> str:
        """A short hash of a row's image data (the prediction cache's check that the image is unchanged)."""
        return hashlib.sha1(self.images[int(row["image_index"])].encode()).hexdigest()[:16]


def options_of(row: pd.Series) -> dict[str, str]:
    """The row's options, ``{"A": text, ...}``, from A up to the last non-empty letter column."""
    options = {}
    for letter in OPTION_LETTERS:
        text = row.get(letter, "")
        if not isinstance(text, str) or is_empty(text):
            break
        options[letter] = text
    return options


def is_empty(value: str) -> bool:
    """Whether a TSV cell is empty (blank, or a string pandas reads as missing)."""
    return not value.strip()


def read_mmbench_tsv(path: str | Path) -> MMBenchTable:
    """Read and check an MMBench-layout TSV.

    Raises:
        DatasetError: a missing file or columns (named), a non-integer or repeated index, options
            with a gap or fewer than two, an answer that is not one of the row's options, a
            missing answer on a dev split, or an image reference to an index that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: TSV file not found.")
    try:
        # pandas' missing-value strings ("", "NA", "N/A", "None", "nan", "null" ...) count as empty,
        # as in VLMEvalKit and LLaVA, which read these files with pandas' defaults
        table = pd.read_csv(path, sep="\t", dtype=str).fillna("")
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not a readable TSV ({err}).") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; an MMBench TSV has index, question, hint, A, B, ..., "
            "answer, category, l2-category, split and image."
        )
    table["index"] = _indices(path, table["index"])
    has_answers = "answer" in table.columns and any(not is_empty(a) for a in table["answer"])
    for position, row in table.iterrows():
        _check_row(path, int(position), row, has_answers)
    images, table["image_index"] = _resolve_images(path, table)
    rows = table.drop(columns="image").sort_values("index", kind="stable").reset_index(drop=True)
    return MMBenchTable(path, rows, images, has_answers)


def _indices(path: Path, column: pd.Series) -> list[int]:
    indices = []
    for position, value in enumerate(column):
        try:
            indices.append(int(float(value)))
        except ValueError:
            raise DatasetError(f"{path}: row {position + 1}: index {value!r} is not an integer.") from None
    seen: dict[int, int] = {}
    for position, index in enumerate(indices):
        if index in seen:
            raise DatasetError(f"{path}: rows {seen[index] + 1} and {position + 1} share index {index}.")
        seen[index] = position
    return indices


def _check_row(path: Path, position: int, row: pd.Series, has_answers: bool) -> None:
    where = f"{path}: row {position + 1} (index {row['index']})"
    options = options_of(row)
    present = [letter for letter in OPTION_LETTERS if letter in row and not is_empty(row[letter])]
    if present != list(options):
        gap = OPTION_LETTERS[len(options)]
        raise DatasetError(f"{where}: option {gap} is empty but {present[-1]} is not; options must run A, B, C ...")
    if len(options) < 2:
        raise DatasetError(f"{where}: needs at least options A and B.")
    if not has_answers:
        return
    answer = row.get("answer", "").strip()
    if answer not in options:
        expected = ", ".join(options)
        raise DatasetError(f"{where}: answer {answer!r} is not one of its options ({expected}).")


def _resolve_images(path: Path, table: pd.DataFrame) -> tuple[dict[int, str], list[int]]:
    """Image data by index, and for every row the index whose data it shows."""
    images = {
        int(index): value
        for index, value in zip(table["index"], table["image"], strict=True)
        if len(value) > IMAGE_REFERENCE_MAX_LENGTH
    }
    sources = []
    for index, value in zip(table["index"], table["image"], strict=True):
        if len(value) > IMAGE_REFERENCE_MAX_LENGTH:
            sources.append(int(index))
            continue
        try:
            target = int(float(value))
        except ValueError:
            target = None
        if target not in images:
            reason = "is empty" if not value.strip() else f"refers to index {value.strip()}, which has no image data"
            raise DatasetError(
                f"{path}: index {index}: image {reason}; give base64 data or the index of a row with it."
            )
        sources.append(target)
    return images, sources
