"""The prepared, memory-mapped dataset gives exactly what sample-by-sample tokenisation gives."""

import json
import random

import numpy as np
import pytest
from conftest import ASSETS, tiny_image_processor
from PIL import Image

from vltool.data.byte_level import ByteLevelEncoder
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.demo_task import write_demo_dataset
from vltool.data.formats import load_samples
from vltool.data.tokenization import tokenize_conversation
from vltool.templates import load_template

VECTORS = (ASSETS / "tokenizer-test-vectors" / "qwen2.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
WORDS = "the a red dog sits on of grass and with picture what colour how many people there".split()


def phrase(rng: random.Random, words: int) -> str:
    """Mostly ASCII English; now and then a tokenizer test vector (Unicode, odd whitespace, emoji, NFD)."""
    if rng.random() < 0.1:
        return rng.choice(VECTORS + ["cafe\u0301 na\u00efve", "  leading spaces", "trailing\n\n", "\u4f60\u597d"])
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text + rng.choice(["", ".", "?", "!\n", " 42", ", [0.12, 0.34, 0.56, 0.78]"])


def mixed_record(rng: random.Random, index: int) -> dict:
    """One record of a random shape: LLaVA, Qwen-VL or messages; 0-3 images; 1-6 turns; some long."""
    kind = rng.choice(["llava", "llava", "qwen_vl", "messages", "text"])
    turns = rng.randint(1, 6)
    length = rng.choice([2, 8, 30, 200]) if rng.random() < 0.9 else 600
    images = [] if kind == "text" else [f"img{rng.randint(0, 2)}.png" for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    conversation = []
    for turn in range(turns):
        question = phrase(rng, rng.randint(1, 12))
        if turn == 0 and images:
            tags = "".join(
                "<image>" if kind != "qwen_vl" else f"Picture {n + 1}: <img>{p}</img>\n" for n, p in enumerate(images)
            )
            question = tags + "\n" + question if rng.random() < 0.7 else question + " " + tags
        answer = phrase(rng, rng.randint(1, length))
        if kind == "qwen_vl" and rng.random() < 0.3:
            answer = f"<ref>the dog</ref><box>({rng.randint(0, 500)},{rng.randint(0, 500)}),(900,1000)</box>"
        conversation += [("user", question), ("assistant", answer)]
    if kind == "messages":
        messages = [{"role": role, "content": content} for role, content in conversation]
        if rng.random() < 0.5:
            messages.insert(0, {"role": "system", "content": phrase(rng, 5)})
        return {"id": f"m{index}", "messages": messages, "images": images}
    names = {"user": "human", "assistant": "gpt"}
    record = {"id": f"s{index}", "conversations": [{"from": names[r], "value": c} for r, c in conversation]}
    if kind != "qwen_vl" and images:
        record["image"] = images if len(images) > 1 or rng.random() < 0.5 else images[0]
    return record


def write_mixed(folder, count=2000, seed=0, name="mixed.json"):
    rng = random.Random(seed)
    for n, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40 + 8 * n, 32), colour).save(folder / f"img{n}.png")
    path = folder / name
    records = [mixed_record(rng, i) for i in range(count)]
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records, ensure_ascii=rng.random() < 0.5, indent=1))
    return path


def expected_items(path, template, tokenizer, seq_len, max_length, truncation):
    """What the sample-by-sample reference (the inference path's tokeniser) keeps, truncates and drops."""
    kept, truncated, dropped = [], [], []
    for sample in load_samples(path):
        conv = tokenize_conversation(sample.messages, template, tokenizer, seq_len, max_length)
        if conv.truncated:
            truncated.append(sample.sample_id)
            if truncation == "drop" or conv.num_supervised == 0:
                dropped.append(sample.sample_id)
                continue
        kept.append((sample, conv))
    return kept, truncated, dropped


def assert_same_as_reference(dataset, path, template, tokenizer, seq_len, max_length, truncation):
    kept, truncated, dropped = expected_items(path, template, tokenizer, seq_len, max_length, truncation)
    assert len(dataset) == len(kept)
    assert dataset.report.truncated == truncated and dataset.report.dropped == dropped
    for index, (sample, conv) in enumerate(kept):
        item = dataset[index]
        assert item["input_ids"].tolist() == conv.input_ids, sample.sample_id
        assert item["labels"].tolist() == conv.labels, sample.sample_id
        assert dataset.lengths[index] == len(conv.input_ids)
        assert dataset.sample_id(index) == sample.sample_id
        assert bool(dataset.has_image[index]) == (conv.num_images > 0)
        pictures = item["pixel_values"]
        assert (0 if pictures is None else len(pictures)) == conv.num_images


def build(path, tokenizer, template, cache, **kwargs):
    return VisionLanguageDataset(
        str(path), None, tokenizer, template, tiny_image_processor(16), cache_dir=str(cache), **kwargs
    )


@pytest.mark.parametrize(
    ("template_name", "seq_len", "max_length", "truncation", "num_proc"),
    [
        ("qwen_chat", 16, 512, "truncate", 1),
        ("qwen_chat", 64, 160, "drop", 2),
        ("vicuna", 16, 300, "truncate", 1),
        ("llama3_chat", 1, 200, "truncate", 1),
        ("plain", 16, 256, "truncate", 1),
        ("qwen_vl", 32, 400, "truncate", 1),
        ("internlm2_chat", 8, 4096, "truncate", 1),
    ],
)
def test_mixed_file_equals_sample_by_sample_tokenisation(
    tmp_path, tokenizer, template_name, seq_len, max_length, truncation, num_proc
):
    path = write_mixed(tmp_path)
    template = load_template(template_name)
    dataset = build(
        path,
        tokenizer,
        template,
        tmp_path / "cache",
        image_seq_length=seq_len,
        max_length=max_length,
        truncation=truncation,
        num_proc=num_proc,
    )
    assert_same_as_reference(dataset, path, template, tokenizer, seq_len, max_length, truncation)
    if max_length < 1000:  # the file's longest samples are about 3,000 tokens
        assert dataset.report.truncated


def test_jsonl_and_several_processes_give_the_same_arrays(tmp_path, tokenizer):
    template = load_template("qwen_chat")
    one = build(write_mixed(tmp_path, 600, seed=3), tokenizer, template, tmp_path / "a", image_seq_length=16)
    lines = build(
        write_mixed(tmp_path, 600, seed=3, name="mixed.jsonl"),
        tokenizer,
        template,
        tmp_path / "b",
        image_seq_length=16,
        num_proc=2,
    )
    for name in ("tokens", "token_offsets", "lengths", "num_images", "spans", "span_offsets"):
        assert np.array_equal(getattr(one.store, name), getattr(lines.store, name)), name


def test_demo_data_equals_sample_by_sample_tokenisation(tmp_path, tokenizer):
    write_demo_dataset(str(tmp_path), num_train=600, num_eval=8)
    template = load_template("qwen_chat")
    dataset = build(
        tmp_path / "train.json", tokenizer, template, tmp_path / "cache", image_seq_length=64, max_length=256
    )
    assert_same_as_reference(dataset, tmp_path / "train.json", template, tokenizer, 64, 256, "truncate")


def test_byte_level_offsets_are_the_tokenizers_offsets(tokenizer):
    """The shortcut's premise, on every ASCII test vector: offsets are running sums of byte lengths."""
    encoder = ByteLevelEncoder.for_tokenizer(tokenizer)
    assert encoder is not None
    lengths = encoder.byte_lengths
    texts = [text for text in VECTORS if text.isascii()] + ["<|im_start|>user\n<image>Hi<|im_end|>\n  x"]
    for text in texts:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        sizes = lengths[encoding["input_ids"]]
        assert [start for start, _ in encoding["offset_mapping"]] == (np.cumsum(sizes) - sizes).tolist(), repr(text)


def test_a_spawned_worker_gets_the_folder_not_a_copy(tmp_path, tokenizer):
    """DataLoader workers started by spawn unpickle the dataset: they must map the files again."""
    import pickle

    dataset = build(
        write_mixed(tmp_path, 300), tokenizer, load_template("qwen_chat"), tmp_path / "c", image_seq_length=16
    )
    data = pickle.dumps(dataset)
    assert len(data) < dataset.store.tokens.nbytes / 10  # the token arrays are not in the pickle
    copy = pickle.loads(data)
    assert isinstance(copy.store.tokens, np.memmap) and len(copy) == len(dataset)
    assert copy[7]["input_ids"].tolist() == dataset[7]["input_ids"].tolist()
