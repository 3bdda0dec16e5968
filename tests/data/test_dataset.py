import json

import pytest
import torch
from conftest import tiny_image_processor
from PIL import Image

from vltool.data.collate import pad_collate
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.sampler import LengthGroupedSampler
from vltool.errors import DatasetError
from vltool.templates import load_template


def image_sample(i, image="a.png", answer="yes"):
    return {
        "id": f"img{i}",
        "image": image,
        "conversations": [{"from": "human", "value": "<image>\nIs it red?"}, {"from": "gpt", "value": answer}],
    }


def text_sample(i, answer="four"):
    return {"id": f"txt{i}", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": answer}]}


def make_dataset(tmp_path, tokenizer, records, **kwargs):
    Image.new("RGB", (48, 32), "red").save(tmp_path / "a.png")
    (tmp_path / "d.json").write_text(json.dumps(records))
    return VisionLanguageDataset(
        str(tmp_path / "d.json"),
        None,
        tokenizer,
        load_template("qwen_chat"),
        tiny_image_processor(32),
        image_seq_length=16,
        **kwargs,
    )


def test_items_and_padded_batch(tmp_path, tokenizer):
    ds = make_dataset(tmp_path, tokenizer, [image_sample(0), text_sample(1, "four " * 5)])
    item = ds[0]
    assert item["pixel_values"].shape == (1, 3, 32, 32)
    assert ds[1]["pixel_values"] is None
    batch = pad_collate([ds[0], ds[1]], pad_token_id=tokenizer.pad_token_id)
    lengths = ds.lengths.tolist()
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths) :] == -100).all()


def test_pad_to_square_uses_processor_mean(tmp_path, tokenizer):
    ds = make_dataset(tmp_path, tokenizer, [image_sample(0)])
    pixels = ds[0]["pixel_values"][0]  # 48x32 red image padded to 48x48, then resized to 32
    mean = torch.tensor(tiny_image_processor().image_mean)
    std = torch.tensor(tiny_image_processor().image_std)
    top_row = pixels[:, 0, 16] * std + mean
    assert torch.allclose(top_row, mean, atol=0.01)  # padding is the mean colour, i.e. zero after normalising


def test_missing_image_names_sample(tmp_path, tokenizer):
    with pytest.raises(DatasetError, match=r"sample img3: image .*nope\.png not found"):
        make_dataset(tmp_path, tokenizer, [image_sample(0), image_sample(3, image="nope.png")])


def test_corrupt_image_names_sample_and_file(tmp_path, tokenizer):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    ds = make_dataset(tmp_path, tokenizer, [image_sample(5, image="bad.png")])
    with pytest.raises(DatasetError, match=r"sample img5: .*bad\.png: cannot decode image"):
        ds[0]


def test_long_samples_truncate_or_drop(tmp_path, tokenizer):
    records = [image_sample(0), image_sample(1, answer="word " * 200)]
    truncated = make_dataset(tmp_path, tokenizer, records, max_length=64)
    assert len(truncated) == 2 and truncated.report.truncated == ["img1"]
    assert max(truncated.lengths) == 64
    dropped = make_dataset(tmp_path, tokenizer, records, max_length=64, truncation="drop")
    assert len(dropped) == 1 and dropped.report.dropped == ["img1"]


def test_length_grouped_sampler_separates_modalities(tmp_path, tokenizer):
    records = [image_sample(i) for i in range(10)] + [text_sample(i, "x " * i) for i in range(10, 22)]
    ds = make_dataset(tmp_path, tokenizer, records)
    sampler = LengthGroupedSampler(ds, batch_size=4, seed=1)
    order = list(sampler)
    assert len(order) == len(sampler) and len(order) % 4 == 0
    assert set(order) == set(range(len(ds)))
    for start in range(0, len(order), 4):
        assert len({ds.has_image[i] for i in order[start : start + 4]}) == 1
    assert order == list(LengthGroupedSampler(ds, batch_size=4, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != order
