"""The synthetic task behind ``vltool train demo``: coloured shapes at several positions.

Training data is written in the standard LLaVA JSON format with an image folder: free-form
questions (colour, shape, position), MMBench-style multiple-choice questions, multi-turn
conversations and some text-only arithmetic. The held-out set is an MMBench-layout TSV with
fresh images and 4-way questions whose text is the same for every image, so only the pixels
can answer them.
"""

import base64
import io
import json
import random
from pathlib import Path

import pandas as pd
from mmengine.logging import print_log
from PIL import Image, ImageDraw

from vltool.constants import IMAGE_TOKEN
from vltool.templates.multiple_choice import build_prompt

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "ring", "triangle", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
MC_QUESTIONS = {
    "colour": ("What is the colour of the shape?", list(COLOURS), "attribute"),
    "shape": ("What kind of shape is in the picture?", list(SHAPES), "attribute"),
    "position": ("Where is the shape?", list(POSITIONS), "spatial"),
}
FREE_QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape do you see?",
    "position": "In which part of the image is the shape?",
}
MC_WEIGHTS = (0.25, 0.45, 0.3)  # colour, shape, position: shape is the slowest to learn
STAMP = "demo_dataset.json"
VERSION = 3
"""The generator's version, kept in the stamp: a dataset an older one wrote is rewritten.

3: options shuffled, answered with the option's text."""


def draw_shape(colour: str, shape: str, position: str, size: int, rng: random.Random) -> Image.Image:
    """A ``size x size`` image: one shape of ``colour`` in the ``position`` quadrant on a noisy background."""
    grey = rng.randint(200, 250)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    half = size // 2
    radius = rng.randint(size // 5, size // 4)
    row, col = position.split()
    cx = rng.randint(radius, half - radius) + (half if col == "right" else 0)
    cy = rng.randint(radius, half - radius) + (half if row == "bottom" else 0)
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[colour])
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(3, radius // 3))
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        bar = max(2, radius // 4)
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=fill)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=fill)
    return image


def random_attributes(rng: random.Random) -> dict[str, str]:
    """A random colour, shape and position for one picture."""
    return {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES), "position": rng.choice(POSITIONS)}


def _free_answer(kind: str, value: str) -> str:
    return value.capitalize() + "."


def shuffled_options(kind: str, attrs: dict[str, str], rng: random.Random) -> tuple[dict[str, str], str]:
    """The options of a ``kind`` question in a random order (letter -> text) and the right letter.

    Every question lists its options in a fresh order, so the letter says nothing about the
    answer: only reading the options and the picture does.
    """
    _, options, _ = MC_QUESTIONS[kind]
    order = rng.sample(options, len(options))
    return dict(zip("ABCD", order, strict=True)), "ABCD"[order.index(attrs[kind])]


def _mc_turn(kind: str, attrs: dict[str, str], rng: random.Random) -> tuple[str, str]:
    """A multiple-choice question (options shuffled) answered with the right option's text ("Top left.").

    Not with its letter: finding which letter a shuffled option carries is an in-context lookup
    (an induction-style circuit over the option lines) that the demo's random 2-layer LLM does not
    learn within minutes (docs/benchmarks.md). VLMEvalKit's rules read an answer that names
    exactly one option as that option, so the held-out score counts the same.
    """
    letters, _ = shuffled_options(kind, attrs, rng)
    return build_prompt(MC_QUESTIONS[kind][0], letters), _free_answer(kind, attrs[kind])


def _training_record(
    index: int, image: str, attrs: dict[str, str], rng: random.Random, mc_fraction: float, free_fraction: float
) -> dict:
    """One multiple-choice question, one free-form question, or a multi-turn conversation.

    The multi-turn one (the rest, after ``mc_fraction`` and ``free_fraction``) is a multiple-choice
    question, then a free-form one about the same image.
    """
    kinds = list(FREE_QUESTIONS)
    style = rng.random()
    if style < mc_fraction:
        turns = [_mc_turn(rng.choices(kinds, weights=MC_WEIGHTS)[0], attrs, rng)]
    elif style < mc_fraction + free_fraction:
        kind = rng.choice(kinds)
        turns = [(f"{IMAGE_TOKEN}\n{FREE_QUESTIONS[kind]}", _free_answer(kind, attrs[kind]))]
    else:
        first, second = rng.sample(kinds, 2)
        turns = [_mc_turn(first, attrs, rng), (FREE_QUESTIONS[second], _free_answer(second, attrs[second]))]
    conversations = []
    for question, answer in turns:
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": f"demo-{index}", "image": image, "conversations": conversations}


def _text_record(index: int, rng: random.Random) -> dict:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    return {
        "id": f"text-{index}",
        "conversations": [{"from": "human", "value": f"What is {a} plus {b}?"}, {"from": "gpt", "value": str(a + b)}],
    }


def is_written(stamp: Path, settings: dict) -> bool:
    """Whether a generated dataset is already on disk, written with these ``settings`` (its stamp file says)."""
    return stamp.is_file() and json.loads(stamp.read_text()) == settings


def write_demo_dataset(
    data_root: str,
    num_train: int = 6000,
    num_eval: int = 240,
    image_size: int = 64,
    text_fraction: float = 0.05,
    seed: int = 0,
    mc_fraction: float = 0.8,
    free_fraction: float = 0.1,
) -> None:
    """Write ``train.json`` + ``images/`` and ``dev.tsv`` under ``data_root`` unless already there.

    A stamp file records the arguments; a dataset written with other arguments is rewritten.

    Args:
        data_root: the folder.
        num_train: training samples.
        num_eval: held-out questions in ``dev.tsv`` (colour, shape and position in turn).
        image_size: pictures are square, this many pixels wide.
        text_fraction: training samples without a picture (arithmetic).
        seed: the generator's seed (``dev.tsv`` uses ``seed + 1``).
        mc_fraction: picture samples that are one multiple-choice question (options shuffled).
        free_fraction: picture samples that are one free-form question; the rest are a
            multiple-choice question followed by a free-form one.
    """
    root = Path(data_root)
    settings = {
        "version": VERSION,
        "num_train": num_train,
        "num_eval": num_eval,
        "image_size": image_size,
        "text_fraction": text_fraction,
        "seed": seed,
        "mc_fraction": mc_fraction,
        "free_fraction": free_fraction,
    }
    if is_written(root / STAMP, settings):
        return
    print_log(f"writing the demo dataset to {root} ...", logger="current")
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(num_train):
        if rng.random() < text_fraction:
            records.append(_text_record(index, rng))
            continue
        attrs = random_attributes(rng)
        name = f"images/{index:06d}.png"
        draw_shape(size=image_size, rng=rng, **attrs).save(root / name)
        records.append(_training_record(index, name, attrs, rng, mc_fraction, free_fraction))
    (root / "train.json").write_text(json.dumps(records, indent=1))
    _write_dev_tsv(root / "dev.tsv", num_eval, image_size, random.Random(seed + 1))
    (root / STAMP).write_text(json.dumps(settings))


def _write_dev_tsv(path: Path, num_eval: int, image_size: int, rng: random.Random) -> None:
    rows = []
    for index in range(num_eval):
        kind = list(MC_QUESTIONS)[index % len(MC_QUESTIONS)]
        question, _, l2 = MC_QUESTIONS[kind]
        attrs = random_attributes(rng)
        letters, answer = shuffled_options(kind, attrs, rng)
        buffer = io.BytesIO()
        draw_shape(size=image_size, rng=rng, **attrs).save(buffer, format="PNG")
        rows.append(
            {
                "index": index,
                "question": question,
                "hint": "",
                **letters,
                "answer": answer,
                "category": kind,
                "l2-category": l2,
                "split": "dev",
                "image": base64.b64encode(buffer.getvalue()).decode(),
            }
        )
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
