"""A synthetic ``llava_v1_5_mix665k.json``: LLaVA-1.5's instruction-tuning mix, same shape, made-up text.

One JSON list in the LLaVA format, written streaming (one sample in memory at a time), with
the mix's components in their real proportions (LLaVA-1.5 paper, table 7) and turn counts and
answer lengths like theirs: LLaVA-Instruct conversations, detailed descriptions and complex
reasoning; VQAv2, GQA and OKVQA short answers over many turns; OCR-VQA book-cover questions;
A-OKVQA multiple choice; TextCaps captions; RefCOCO and Visual Genome region captions and
grounding with ``[x1, y1, x2, y2]`` boxes; and ~6% text-only ShareGPT chats of up to several
thousand tokens (some past 2048, a few in Chinese, accented European words or with emoji).

Text is drawn from a Zipf distribution over English function words, the space-prefixed
alphabetic words of the Qwen2 vocabulary (in id order, which roughly follows frequency),
numbers and rare made-up words that BPE has to split. Images are a pool of 64 small JPEGs
under ``<out>/images`` (COCO, GQA, OCR-VQA, TextVQA and VG folder layouts) that every
sample reuses, so each referenced file exists. The same seed writes the same bytes.

    .venv/bin/python tools/mix665k.py --samples 665298 --out /tmp/vltool_data_bench
"""

import argparse
import json
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image

from vltool.constants import QWEN2_TOKENIZER_DIR

FULL_SIZE = 665_298
CHUNK = 8192
"""Samples per generation task; each chunk has its own random streams."""
# samples per component in LLaVA-1.5's mix (paper table 7; A-OKVQA there is multiple choice)
COMPONENTS = {
    "llava_conversation": 57_669,
    "llava_detail": 23_240,
    "llava_complex": 76_643,
    "sharegpt": 40_688,
    "vqav2": 82_783,
    "gqa": 72_140,
    "okvqa": 8_998,
    "ocrvqa": 80_000,
    "aokvqa_choice": 66_160,
    "textcaps": 21_953,
    "refcoco": 48_447,
    "vg": 86_577,
}
IMAGE_POOLS = {  # folder under the image root: (file name pattern, files)
    "coco/train2017": ("{:012d}.jpg", 24),
    "gqa/images": ("{}.jpg", 10),
    "ocr_vqa/images": ("{:010d}.jpg", 10),
    "textvqa/train_images": ("{:016x}.jpg", 8),
    "vg/VG_100K": ("{}.jpg", 12),
}
SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
CHOICE_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
DETAIL_PROMPTS = [
    "Describe the following image.",
    "What do you see happening in this image?",
    "Can you elaborate on the elements of the picture provided?",
    "Explain the visual content of the image in great detail.",
    "Write a detailed description of the given image.",
    "What is this photo about?",
    "Analyze the image in a comprehensive and detailed manner.",
    "Can you describe the main features of this image for me?",
]
QUESTION_WORDS = ["What", "Is", "How many", "Where", "Which", "Who", "Are", "Does", "Why", "What color is", "Is the"]
COLOURS = ["white", "black", "red", "blue", "green", "brown", "yellow", "gray", "orange", "pink", "silver"]
GENRES = ["Travel", "Cookbooks, Food & Wine", "Children's Books", "History", "Reference", "Romance", "Comics"]
EMOJI = ["😀", "😂", "👍", "🎉", "🔥", "🤔", "🙏", "✨", "🚀", "❤️", "📷", "🐱", "🌍", "✅"]
FUNCTION_WORDS = (
    "the of and to a in is that it for on with as was be by this are or at from an not have but which you "
    "they we his her can their has more one all there been if were its also will would into other some what "
    "about than only when so these two such may no like most then them any many over out up time each new "
    "people first very do could after our used where those because through between both while during under "
    "image shows man woman white small large left right top front people picture"
).split()


def _qwen_words(vocab_path: Path) -> tuple[list[str], list[str], list[str]]:
    """English-ish words, CJK words and accented Latin words from the Qwen2 vocabulary, in id order."""
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    byte_of = _byte_decoder()
    english, cjk, accented = [], [], []
    for entry, _ in sorted(vocab.items(), key=lambda item: item[1]):
        try:
            text = bytes(byte_of[char] for char in entry).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        word = text[1:] if text.startswith(" ") else ""
        if word.isascii() and word.isalpha() and (len(word) > 2 or word in ("a", "I")) and not word.isupper():
            english.append(word)
        elif word.isalpha() and not word.isascii() and all(char < "\u0250" for char in word):
            accented.append(word)
        elif text and all("\u4e00" <= char <= "\u9fff" for char in text):
            cjk.append(text)
    return english, cjk, accented


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (which Qwen2 uses), character to byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    decoder = {chr(byte): byte for byte in printable}
    decoder.update({chr(256 + number): byte for number, byte in enumerate(others)})
    return decoder


def _made_up_words(rng: random.Random, count: int) -> list[str]:
    onsets = ["b", "br", "c", "cl", "d", "dr", "f", "fl", "g", "gr", "k", "l", "m", "n", "p", "pl", "qu", "r", "s"]
    onsets += ["sk", "st", "t", "tr", "v", "w", "z", "zh", "x"]
    vowels = ["a", "e", "i", "o", "u", "ae", "ou", "y"]
    codas = ["", "n", "r", "l", "x", "st", "nd", "rk", "m", "ph"]
    return [
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(2, 4)))
        for _ in range(count)
    ]


class WordStream:
    """Pseudo-natural text: Zipf-distributed words with commas, full stops, capitals and numbers.

    Words are drawn a million at a time with numpy and joined with ``str.join``, so a gigabyte
    of text takes seconds, not minutes.
    """

    def __init__(self, words: list[str], rng: np.random.Generator, exponent: float = 1.0, sep: str = " ") -> None:
        self.rng, self.sep = rng, sep
        size = len(words)
        capitals = [word[:1].upper() + word[1:] for word in words]
        full_stop = "。" if sep == "" else "."
        comma = "，" if sep == "" else ","
        # index = word + size * variant; variants: plain, comma, stop, then the same capitalised
        variants = [[word + end for word in forms] for forms in (words, capitals) for end in ("", comma, full_stop)]
        self.table = np.array([word for variant in variants for word in variant], dtype=object)
        weights = 1.0 / (np.arange(size) + 2.7) ** exponent
        self.cdf = np.cumsum(weights / weights.sum())
        self.size, self.full_stop = size, full_stop
        self.buffer: list[str] = []
        self.position = 0

    def reseed(self, rng: np.random.Generator) -> None:
        """Draw from ``rng`` from now on, forgetting words already drawn."""
        self.rng, self.buffer, self.position = rng, [], 0

    def _refill(self, count: int) -> None:
        words = np.searchsorted(self.cdf, self.rng.random(count)).clip(max=self.size - 1)
        punctuation = self.rng.choice(3, size=count, p=[0.86, 0.06, 0.08])
        capital = np.zeros(count, dtype=np.int64)
        capital[1:] = punctuation[:-1] == 2
        # a list, not an array: most texts are a few words, where numpy's per-call overhead dominates
        self.buffer = self.table[words + self.size * (punctuation + 3 * capital)].tolist()
        self.position = 0

    def text(self, count: int, sentence: bool = True) -> str:
        """``count`` words; as a sentence (capitalised, ending with a full stop) unless told otherwise."""
        count = max(1, count)
        if self.position + count > len(self.buffer):
            self._refill(max(1 << 18, count))
        text = self.sep.join(self.buffer[self.position : self.position + count])
        self.position += count
        if not sentence:
            return text.rstrip(".,。，")
        text = text[:1].upper() + text[1:]
        return text if text.endswith(self.full_stop) else text.rstrip(",，") + self.full_stop


class MixWriter:
    """Builds one sample of each component; every random choice comes from the two seeded generators."""

    def __init__(self, seed: int, image_files: dict[str, list[str]]) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        numpy_rng = np.random.default_rng(seed)
        english, cjk, accented = _qwen_words(QWEN2_TOKENIZER_DIR / "vocab.json")
        rare = _made_up_words(self.rng, 3000)
        numbers = [str(self.rng.choice([self.rng.randint(0, 99), self.rng.randint(1900, 2030)])) for _ in range(600)]
        numbers += [f"{self.rng.uniform(0, 100):.{self.rng.randint(1, 2)}f}" for _ in range(300)]
        numbers += [f"${self.rng.randint(1, 999)}.{self.rng.randint(0, 99):02d}" for _ in range(100)]
        vocabulary = FUNCTION_WORDS + [w for w in english if w not in FUNCTION_WORDS]
        # rare words and numbers scattered through the tail, so they come at realistic frequencies
        for word in rare + numbers:
            vocabulary.insert(self.rng.randint(300, len(vocabulary)), word)
        self.english = WordStream(vocabulary, numpy_rng)
        self.chinese = WordStream(cjk, numpy_rng, sep="")
        self.accented = WordStream(accented[:2000] + vocabulary[:3000], numpy_rng)
        self.images = image_files
        self.builders: dict[str, Callable[[int], dict[str, Any]]] = {
            name: getattr(self, f"_{name}") for name in COMPONENTS
        }

    def reseed(self, chunk: int) -> None:
        """Start chunk ``chunk``'s random streams, so a chunk's samples do not depend on who wrote the others."""
        self.rng = random.Random(self.seed * 1_000_003 + chunk)
        numpy_rng = np.random.default_rng([self.seed, chunk])
        for stream in (self.english, self.chinese, self.accented):
            stream.reseed(numpy_rng)

    def sample(self, component: str, index: int) -> dict[str, Any]:
        """One LLaVA-format record of ``component``; ``index`` makes its id unique."""
        return self.builders[component](index)

    # -- helpers ---------------------------------------------------------------------------------
    def _words(self, low: int, high: int) -> str:
        return self.english.text(self.rng.randint(low, high))

    def _long(self, median: float, sigma: float, cap: int) -> str:
        """A reply of lognormally many words, in paragraphs."""
        count = min(cap, max(5, int(self.rng.lognormvariate(np.log(median), sigma))))
        parts = []
        while count > 0:
            size = min(count, self.rng.randint(25, 70))
            parts.append(self.english.text(size))
            count -= size
        return "\n\n".join(parts)

    def _question(self) -> str:
        return f"{self.rng.choice(QUESTION_WORDS)} {self.english.text(self.rng.randint(2, 7), sentence=False)}?"

    def _short_answer(self) -> str:
        roll = self.rng.random()
        if roll < 0.38:
            return self.rng.choice(["Yes", "No"])
        if roll < 0.5:
            return str(self.rng.choice([0, 1, 2, 2, 3, 4, 5, 6, 10, 12]))
        if roll < 0.65:
            return self.rng.choice(COLOURS)
        return self.english.text(self.rng.choice([1, 1, 1, 2, 2, 3]), sentence=False)

    def _box(self) -> str:
        x1, y1 = self.rng.uniform(0, 0.7), self.rng.uniform(0, 0.7)
        return f"[{x1:.2f}, {y1:.2f}, {self.rng.uniform(x1 + 0.05, 1):.2f}, {self.rng.uniform(y1 + 0.05, 1):.2f}]"

    def _image_record(self, sample_id: str, pool: str, turns: list[tuple[str, str]]) -> dict[str, Any]:
        first = turns[0][0]
        first = f"<image>\n{first}" if self.rng.random() < 0.7 else f"{first}\n<image>"
        conversations = []
        for number, (question, answer) in enumerate(turns):
            conversations.append({"from": "human", "value": first if number == 0 else question})
            conversations.append({"from": "gpt", "value": answer})
        return {"id": sample_id, "image": self.rng.choice(self.images[pool]), "conversations": conversations}

    def _short_turns(self, count: int, suffix: str) -> list[tuple[str, str]]:
        return [(self._question() + suffix, self._short_answer()) for _ in range(count)]

    def _regions(self, count: int) -> list[tuple[str, str]]:
        turns = []
        for _ in range(count):
            phrase = self.english.text(self.rng.randint(2, 6), sentence=False)
            if self.rng.random() < 0.5:
                turns.append((f"Please provide a short description for this region: {self._box()}", phrase))
            else:
                prompt = "Please provide the bounding box coordinate of the region this sentence describes: "
                turns.append((f"{prompt}{phrase}.", self._box()))
        return turns

    # -- components --------------------------------------------------------------------------------
    def _llava_conversation(self, index: int) -> dict[str, Any]:
        turns = [(self._question(), self._long(70, 0.6, 300)) for _ in range(self.rng.choice([1, 2, 2, 3, 3, 4, 5]))]
        return self._image_record(f"{index:012d}", "coco/train2017", turns)

    def _llava_detail(self, index: int) -> dict[str, Any]:
        turns = [(self.rng.choice(DETAIL_PROMPTS), self._long(110, 0.35, 300))]
        return self._image_record(f"{index:012d}", "coco/train2017", turns)

    def _llava_complex(self, index: int) -> dict[str, Any]:
        turns = [(self._words(10, 28)[:-1] + "?", self._long(120, 0.4, 350))]
        return self._image_record(f"{index:012d}", "coco/train2017", turns)

    def _vqav2(self, index: int) -> dict[str, Any]:
        turns = self._short_turns(self.rng.randint(1, 10), SHORT_SUFFIX)
        return self._image_record(f"vqav2_{index:012d}", "coco/train2017", turns)

    def _gqa(self, index: int) -> dict[str, Any]:
        turns = self._short_turns(min(40, max(1, int(self.rng.expovariate(1 / 12)))), SHORT_SUFFIX)
        return self._image_record(f"{2300000 + index}", "gqa/images", turns)

    def _okvqa(self, index: int) -> dict[str, Any]:
        turns = self._short_turns(self.rng.choice([1, 1, 1, 2]), SHORT_SUFFIX)
        return self._image_record(f"okvqa_{index:012d}", "coco/train2017", turns)

    def _ocrvqa(self, index: int) -> dict[str, Any]:
        title = self.english.text(self.rng.randint(2, 9), sentence=False).title()
        author = self.english.text(2, sentence=False).title()
        genre = self.rng.choice(GENRES)
        asked = [
            ("Who wrote this book?", author),
            ("What is the title of this book?", title),
            ("What type of book is this?", genre),
            (f"Is this a {self.rng.choice(GENRES).lower()} book?", self.rng.choice(["Yes", "No"])),
            (f"Is this book related to {self.rng.choice(GENRES)}?", self.rng.choice(["Yes", "No"])),
        ]
        return self._image_record(f"{index:010d}", "ocr_vqa/images", asked[: self.rng.randint(3, 5)])

    def _aokvqa_choice(self, index: int) -> dict[str, Any]:
        turns = []
        for _ in range(self.rng.choice([1, 1, 2])):
            options = [self.english.text(self.rng.randint(1, 3), sentence=False) for _ in range(4)]
            lines = "\n".join(f"{letter}. {option}" for letter, option in zip("ABCD", options, strict=True))
            turns.append((f"{self._question()}\n{lines}{CHOICE_SUFFIX}", self.rng.choice("ABCD")))
        return self._image_record(f"aokvqa_{index:010d}", "coco/train2017", turns)

    def _textcaps(self, index: int) -> dict[str, Any]:
        tokens = ", ".join(self.english.text(1, sentence=False) for _ in range(self.rng.randint(1, 8)))
        prompt = f"Provide a one-sentence caption for the provided image.\nReference OCR token: {tokens}"
        return self._image_record(f"textcaps_{index:08d}", "textvqa/train_images", [(prompt, self._words(8, 22))])

    def _refcoco(self, index: int) -> dict[str, Any]:
        return self._image_record(f"refcoco_{index:08d}", "coco/train2017", self._regions(self.rng.randint(1, 8)))

    def _vg(self, index: int) -> dict[str, Any]:
        return self._image_record(f"vg_{index:08d}", "vg/VG_100K", self._regions(self.rng.randint(2, 18)))

    def _sharegpt(self, index: int) -> dict[str, Any]:
        roll = self.rng.random()
        # a few per cent each in Chinese, in accented European words, and with emoji
        stream = self.chinese if roll < 0.03 else self.accented if roll < 0.06 else self.english
        emoji = 0.06 <= roll < 0.09
        total = min(7000, max(60, int(self.rng.lognormvariate(np.log(800), 0.8))))
        exchanges = self.rng.choice([1, 1, 2, 2, 3, 4, 5, 6, 8])
        conversations = []
        for _ in range(exchanges):
            share = max(30, total // exchanges)
            question = stream.text(max(4, int(share * self.rng.uniform(0.05, 0.3))))
            answer = "\n\n".join(stream.text(self.rng.randint(30, 90)) for _ in range(max(1, share // 60)))
            if stream is self.english and self.rng.random() < 0.2:
                answer += "\n\n```python\n" + self._code(self.rng.randint(3, 20)) + "\n```"
            if emoji:
                question, answer = f"{question} {self.rng.choice(EMOJI)}", f"{answer} {self.rng.choice(EMOJI)}"
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return {"id": f"sharegpt_{index:07d}_0", "conversations": conversations}

    def _code(self, lines: int) -> str:
        names = [self.english.text(2, sentence=False).lower().replace(" ", "_") for _ in range(4)]
        body = [f"def {names[0]}({names[1]}, {names[2]}=None):"]
        for _ in range(lines):
            body.append(
                f"    {names[3]} = {names[1]}.get({names[2]!r}, {self.rng.randint(0, 99)})  # {self._words(2, 6)}"
            )
        return "\n".join(body + [f"    return {names[3]}"])


def write_images(root: Path, seed: int) -> dict[str, list[str]]:
    """The pool of small JPEGs every sample draws from; returns pool folder to relative paths."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[str]] = {}
    for folder, (pattern, count) in IMAGE_POOLS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        files[folder] = []
        for number in range(count):
            width, height = int(rng.integers(160, 321)), int(rng.integers(120, 321))
            # a colour gradient with noise: decodes like a photo, not like a flat colour
            ramp = np.linspace(0, 1, width)[None, :, None] * rng.integers(0, 256, 3)
            noise = rng.normal(0, 25, (height, width, 3))
            pixels = (ramp + 0.5 * np.linspace(0, 255, height)[:, None, None] + noise).clip(0, 255).astype(np.uint8)
            name = f"{folder}/{pattern.format(int(rng.integers(1, 10**9)) * 100 + number)}"
            Image.fromarray(pixels).save(root / name, quality=85)
            files[folder].append(name)
    return files


def component_order(samples: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Each sample's component (as an index into the returned names), in the real proportions, shuffled."""
    names = list(COMPONENTS)
    share = np.array([COMPONENTS[name] for name in names], dtype=np.float64) * samples / sum(COMPONENTS.values())
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share)[: samples - counts.sum()]] += 1  # largest remainders
    order = np.repeat(np.arange(len(names), dtype=np.int8), counts)
    np.random.default_rng(seed).shuffle(order)
    return names, order


_WRITER: MixWriter | None = None  # one per worker process, built by _start_worker


def _start_worker(seed: int, image_files: dict[str, list[str]]) -> None:
    global _WRITER
    _WRITER = MixWriter(seed, image_files)


def _write_chunk(task: tuple[int, int, list[str]]) -> tuple[str, Counter]:
    """The JSON text of one chunk of samples (comma-separated records) and its component counts."""
    chunk, start, components = task
    assert _WRITER is not None
    _WRITER.reseed(chunk)
    records = [json.dumps(_WRITER.sample(name, start + n), ensure_ascii=False) for n, name in enumerate(components)]
    return ",\n".join(records), Counter(components)


def write_mix(out: Path, samples: int, seed: int = 0, processes: int | None = None) -> tuple[Path, Path, Counter]:
    """Write ``<out>/llava_mix_<samples>.json`` and its images; returns (data file, image folder, counts).

    Chunks of ``CHUNK`` samples are generated in ``processes`` processes (default: every core)
    and written in order as they come back; each chunk has its own seeded streams, so the
    bytes depend on ``seed`` alone, not on the number of processes.
    """
    image_root = out / "images"
    image_files = write_images(image_root, seed)
    names, order = component_order(samples, seed)
    tasks = [
        (number, start, [names[code] for code in order[start : start + CHUNK].tolist()])
        for number, start in enumerate(range(0, samples, CHUNK))
    ]
    path = out / f"llava_mix_{samples}.json"
    temporary = path.with_suffix(".json.tmp")
    counts: Counter = Counter()
    processes = min(processes or os.cpu_count() or 1, len(tasks))
    with temporary.open("w", encoding="utf-8") as file:
        file.write("[\n")
        if processes > 1:
            with multiprocessing.Pool(processes, _start_worker, (seed, image_files)) as pool:
                chunks = pool.imap(_write_chunk, tasks)
                _write_chunks(file, chunks, counts)
        else:
            _start_worker(seed, image_files)
            _write_chunks(file, map(_write_chunk, tasks), counts)
        file.write("\n]\n")
    temporary.replace(path)
    return path, image_root, counts


def _write_chunks(file: TextIO, chunks: Iterable[tuple[str, Counter]], counts: Counter) -> None:
    for number, (text, chunk_counts) in enumerate(chunks):
        file.write((",\n" if number else "") + text)
        counts.update(chunk_counts)


def print_summary(path: Path, counts: Counter, seconds: float) -> None:
    """File size, sample count and per-component counts."""
    total = sum(counts.values())
    print(f"wrote {path}: {path.stat().st_size / 1e9:.3f} GB, {total} samples in {seconds:.1f} s")
    for name in COMPONENTS:
        print(f"  {name:<20} {counts[name]:>8}  {100 * counts[name] / max(total, 1):5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=FULL_SIZE, help="default: 665,298, the real mix's size")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vltool_data_bench"), help="the file and images/ go here")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    parser.add_argument("--processes", type=int, default=None, help="default: every core")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    path, _, counts = write_mix(args.out, args.samples, args.seed, args.processes)
    print_summary(path, counts, time.perf_counter() - started)


if __name__ == "__main__":
    main()
