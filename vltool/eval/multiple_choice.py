"""Multiple-choice questions in MMBench's TSV layout: read, prompt, answer, score."""

import base64
import io
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from vltool.constants import IMAGE_TOKEN
from vltool.data.sample import Message
from vltool.errors import DatasetError
from vltool.infer.pipeline import GenerationOptions, Pipeline

OPTION_LETTERS = "ABCDEFGHI"
REQUIRED_COLUMNS = ("index", "question", "A", "B")
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass
class Question:
    """One multiple-choice row: ``options`` maps letters to option text."""

    index: int
    question: str
    hint: str
    options: dict[str, str]
    answer: str | None
    category: str
    image: Image.Image | None


def build_prompt(question: str, options: dict[str, str], hint: str = "", with_image: bool = True) -> str:
    """The LLaVA-family MMBench prompt: image, hint, question, ``A. ...`` lines, instruction."""
    lines = ([hint] if hint else []) + [question]
    lines += [f"{letter}. {text}" for letter, text in options.items()]
    lines.append(ANSWER_INSTRUCTION)
    return (IMAGE_TOKEN + "\n" if with_image else "") + "\n".join(lines)


def decode_base64_image(data: str) -> Image.Image:
    """Decode a base64-encoded image to RGB."""
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def read_questions(path: str | Path) -> list[Question]:
    """Read an MMBench-layout TSV (``index``, ``question``, ``hint``, ``A``..., ``answer``, ``image``).

    Raises:
        DatasetError: the file is missing or lacks required columns (named).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: TSV file not found.")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}.")
    questions = []
    for _, row in table.iterrows():
        options = {L: row[L] for L in OPTION_LETTERS if L in table.columns and row[L] != ""}
        image = decode_base64_image(row["image"]) if row.get("image", "") else None
        questions.append(
            Question(
                int(row["index"]),
                row["question"],
                row.get("hint", ""),
                options,
                row.get("answer") or None,
                row.get("category", ""),
                image,
            )
        )
    return questions


def extract_letter(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an answer names: a standalone letter, else exactly one option's text."""
    letters = set(re.findall(rf"\b([{''.join(options)}])\b", answer))
    if len(letters) == 1:
        return letters.pop()
    named = [letter for letter, text in options.items() if text.lower() in answer.lower()]
    return named[0] if len(named) == 1 else None


@dataclass
class EvalResult:
    """Per-question outcomes of a multiple-choice run."""

    categories: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    num_options: list[int] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Fraction of questions answered correctly (unresolved answers count as wrong)."""
        return sum(self.correct) / max(len(self.correct), 1)

    @property
    def chance(self) -> float:
        """Expected accuracy of guessing uniformly."""
        return sum(1 / n for n in self.num_options) / max(len(self.num_options), 1)

    def per_category(self) -> dict[str, float]:
        """Accuracy of each category."""
        groups: dict[str, list[bool]] = defaultdict(list)
        for category, ok in zip(self.categories, self.correct, strict=True):
            groups[category].append(ok)
        return {category: sum(oks) / len(oks) for category, oks in sorted(groups.items())}

    def to_dict(self) -> dict[str, object]:
        """Summary for JSON."""
        return {
            "accuracy": self.accuracy,
            "chance": self.chance,
            "questions": len(self.correct),
            "per_category": self.per_category(),
        }


def evaluate_questions(
    pipeline: Pipeline, questions: list[Question], batch_size: int = 32, max_new_tokens: int = 8
) -> EvalResult:
    """Answer every question greedily and score the extracted letters against ``answer``."""
    result = EvalResult()
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        conversations = [
            [Message("user", build_prompt(q.question, q.options, q.hint, with_image=q.image is not None))]
            for q in batch
        ]
        images = [[q.image] if q.image is not None else [] for q in batch]
        for question, answer in zip(batch, pipeline.answer(conversations, images, options), strict=True):
            result.categories.append(question.category)
            result.answers.append(answer)
            result.correct.append(extract_letter(answer, question.options) == question.answer)
            result.num_options.append(len(question.options))
    return result
