"""A length-skewed LLaVA-like dataset for measuring batching: many short answers, some long samples.

LLaVA-Instruct mix665k mixes one-word VQA answers, many-turn VQA conversations about one image,
detailed descriptions, several-image samples and long text-only ShareGPT chats. Padding every
sample of a batch to its longest wastes most of the compute on such data; packing does not.
This writer gives the same mix for the demo's tiny model, with the demo's pictures:

- short (70%): one question about the picture, a one- or two-word answer;
- VQA turns (12%): 5-10 short questions and answers about the same picture;
- detailed (8%): a description of 60-150 words;
- several images (5%): 3-6 pictures, one short answer;
- text-only (5%): a 2-4 turn chat with long messages (ShareGPT-like).
"""

import json
import random
from pathlib import Path

from mmengine.logging import print_log

from vltool.constants import IMAGE_TOKEN
from vltool.data.demo_task import (
    COLOURS,
    FREE_QUESTIONS,
    POSITIONS,
    SHAPES,
    draw_shape,
    is_written,
    random_attributes,
)

STAMP = "length_dataset.json"
KINDS = {"short": 0.70, "vqa_turns": 0.12, "detailed": 0.08, "several_images": 0.05, "text": 0.05}
WORDS = (
    *COLOURS,
    *SHAPES,
    *(word for position in POSITIONS for word in position.split()),
    *"the a shape sits in corner of picture near edge with soft noisy grey background and bright outline".split(),
)


def _prose(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def _turn(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _picture(root: Path, name: str, image_size: int, rng: random.Random) -> dict[str, str]:
    attrs = random_attributes(rng)
    draw_shape(size=image_size, rng=rng, **attrs).save(root / name)
    return attrs


def _record(index: int, kind: str, root: Path, image_size: int, rng: random.Random) -> dict:
    """One sample of ``kind``; its pictures are written under ``root/images``."""
    if kind == "text":
        turns = [_turn(_prose(rng, 50, 150), _prose(rng, 100, 300)) for _ in range(rng.randint(2, 4))]
        return {"id": f"text-{index}", "conversations": [message for turn in turns for message in turn]}
    count = rng.randint(3, 6) if kind == "several_images" else 1
    names = [f"images/{index:06d}_{number}.png" for number in range(count)]
    pictures = [_picture(root, name, image_size, rng) for name in names]
    questions = list(FREE_QUESTIONS)
    if kind == "several_images":
        colour = pictures[0]["colour"]
        listed = "".join(f"Picture {number + 1}: {IMAGE_TOKEN}\n" for number in range(count))
        matching = [str(number + 1) for number, picture in enumerate(pictures) if picture["colour"] == colour]
        turns = _turn(f"{listed}Which pictures show a {colour} shape?", "Pictures " + ", ".join(matching) + ".")
    elif kind == "detailed":
        turns = _turn(f"{IMAGE_TOKEN}\nDescribe the picture in detail.", _prose(rng, 60, 150))
    else:
        asked = rng.choices(questions, k=1 if kind == "short" else rng.randint(5, 10))
        turns = []
        for number, question in enumerate(asked):
            text = FREE_QUESTIONS[question] if number else f"{IMAGE_TOKEN}\n{FREE_QUESTIONS[question]}"
            turns += _turn(text, pictures[0][question].capitalize() + ".")
    return {"id": f"{kind}-{index}", "image": names if count > 1 else names[0], "conversations": turns}


def write_length_dataset(data_root: str, num_train: int = 2000, image_size: int = 64, seed: int = 0) -> None:
    """Write ``train.json`` + ``images/`` under ``data_root`` unless the same dataset is already there."""
    root = Path(data_root)
    settings = {"num_train": num_train, "image_size": image_size, "seed": seed, "kinds": KINDS}
    if is_written(root / STAMP, settings):
        return
    print_log(f"writing the length-skewed dataset to {root} ...", logger="current")
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=num_train)
    records = [_record(index, kind, root, image_size, rng) for index, kind in enumerate(kinds)]
    (root / "train.json").write_text(json.dumps(records, indent=1))
    (root / STAMP).write_text(json.dumps(settings))
