"""Small MMBench-layout TSVs and a scripted stand-in for the model, shared by the MMBench tests."""

import base64
import io
from pathlib import Path

import pandas as pd
from PIL import Image


def image_base64(colour: str, size: tuple[int, int] = (96, 64)) -> str:
    """A base64 PNG (longer than 64 characters, so it is data, not a reference)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def colour_questions() -> list[dict]:
    """Four dev questions about a picture's colour; the picture answers each."""
    rows = []
    for index, (colour, options, answer, category, l2) in enumerate(
        [
            ("red", ["red", "green", "blue", "yellow"], "A", "colour", "attribute_reasoning"),
            ("green", ["red", "green", "blue"], "B", "colour", "attribute_reasoning"),
            ("blue", ["red", "green", "blue", "None of the above"], "C", "hue", "coarse_perception"),
            ("yellow", ["yellow", "blue"], "A", "hue", "coarse_perception"),
        ]
    ):
        row = {"index": index, "question": "What colour is the picture?", "hint": "Look closely." if index == 0 else ""}
        row.update(dict(zip("ABCD", options + [""] * (4 - len(options)), strict=True)))
        row.update(answer=answer, category=category, **{"l2-category": l2}, split="dev", image=image_base64(colour))
        rows.append(row)
    return rows


def write_tsv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


class ColourPipeline:
    """Answers a colour question from the image's centre pixel, with the letter of that colour.

    Args:
        avoid: a letter it never says (it says "A" instead): right on pass 0 but not on every rotation.
        fail_after: raise after this many batches, as a run killed half way.
        style: the answer's wording, with ``{letter}`` and ``{colour}``.
    """

    NAMES = {(255, 0, 0): "red", (0, 128, 0): "green", (0, 0, 255): "blue", (255, 255, 0): "yellow"}

    def __init__(self, avoid: str | None = None, fail_after: int | None = None, style: str = "{letter}"):
        self.avoid, self.fail_after, self.style = avoid, fail_after, style
        self.batches, self.prompts = 0, []

    def answer(self, conversations, images, options=None):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt
        self.batches += 1
        answers = []
        for conversation, (image,) in zip(conversations, images, strict=True):
            text = conversation[-1].content
            self.prompts.append(text)
            colour = self.NAMES[image.getpixel((image.width // 2, image.height // 2))]
            letters = {line[3:]: line[0] for line in text.splitlines() if line[1:3] == ". "}
            letter = letters.get(colour, "Z")
            answers.append(self.style.format(letter="A" if letter == self.avoid else letter, colour=colour))
        return answers
