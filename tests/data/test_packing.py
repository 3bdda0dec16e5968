"""Packing: rows laid out as documented, and the same loss and gradients as padding, with no sample seeing another."""

import pytest
import torch

from vltool.constants import IGNORE_INDEX
from vltool.data.collate import pad_collate, supervised_positions
from vltool.data.packing import assign_rows, pack_collate
from vltool.model.segment_attention import SEGMENT_ATTENTION

PAD = 151643


def samples(image_token_id: int, image_seq_length: int, lengths=(12, 40, 7, 25, 3, 30), seed: int = 1) -> list[dict]:
    """Items as the dataset gives them: every other sample has an image; the first half of each is prompt."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for number, length in enumerate(lengths):
        ids = torch.randint(0, 1000, (length,), generator=generator)
        image = None
        if number % 2 == 0:
            ids = torch.cat([ids[:2], torch.full((image_seq_length,), image_token_id), ids[2:]])
            image = torch.randn(1, 3, 32, 32, generator=generator)
        labels = ids.clone()
        labels[: len(ids) // 2] = IGNORE_INDEX
        labels[ids == image_token_id] = IGNORE_INDEX
        items.append({"input_ids": ids, "labels": labels, "pixel_values": image})
    return items


def test_rows_are_filled_evenly_and_keep_sample_order():
    rows = assign_rows([10, 60, 30, 30, 50, 20], pack_length=100)
    assert sorted(i for row in rows for i in row) == list(range(6))
    loads = [sum([10, 60, 30, 30, 50, 20][i] for i in row) for row in rows]
    assert len(rows) == 2 and max(loads) <= 100 and loads == [100, 100]
    assert all(row == sorted(row) for row in rows)
    assert assign_rows([150, 10], pack_length=100) == [[0], [1]]  # too long: a row of its own
    assert assign_rows([5, 6, 7], pack_length=1000) == [[0, 1, 2]]


def test_layout_positions_labels_segments_and_images():
    items = samples(image_token_id=9, image_seq_length=4, lengths=(5, 8, 3))
    one_row = pack_collate(items, PAD)
    lengths = [item["input_ids"].numel() for item in items]  # 9, 8, 7
    assert one_row["input_ids"].shape == (1, sum(lengths)) and one_row["attention_mask"] is None
    assert one_row["segments"] == [(0, 0, 9), (0, 9, 17), (0, 17, 24)]
    assert one_row["position_ids"][0].tolist() == [*range(9), *range(8), *range(7)]
    for (_, start, end), item in zip(one_row["segments"], items, strict=True):
        assert torch.equal(one_row["input_ids"][0, start:end], item["input_ids"])
        assert one_row["labels"][0, start] == IGNORE_INDEX  # never predicted from another sample
        assert torch.equal(one_row["labels"][0, start + 1 : end], item["labels"][1:])
    assert torch.equal(one_row["pixel_values"], torch.cat([items[0]["pixel_values"], items[2]["pixel_values"]]))
    assert torch.equal(one_row["supervised_index"], supervised_positions(one_row["labels"]))

    rows = pack_collate(items, PAD, pack_length=12)  # 9 | 8 | 7: one sample per row, padding tails
    assert rows["input_ids"].shape == (3, 9)
    assert rows["segments"] == [(0, 0, 9), (1, 0, 8), (1, 8, 9), (2, 0, 7), (2, 7, 9)]
    assert rows["input_ids"][1, 8] == PAD and rows["labels"][1, 8] == IGNORE_INDEX
    assert rows["position_ids"][2].tolist() == [*range(7), 0, 1]  # the tail is a segment of its own


def use_attention(vlm, attention):
    """Segment attention through the switch training uses; eager set directly (the switch keeps it)."""
    if attention == SEGMENT_ATTENTION:
        assert vlm.use_packed_attention() == SEGMENT_ATTENTION
    else:
        vlm.llm.set_attn_implementation(attention)
    assert vlm.llm.config._attn_implementation == attention


def run(vlm, batch):
    vlm.zero_grad()
    loss = vlm.loss(**batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in vlm.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", [SEGMENT_ATTENTION, "eager"])
@pytest.mark.parametrize("pack_length", [None, 64])
def test_packed_loss_and_gradients_equal_padded(tiny_vlm, tokenizer, attention, pack_length):
    tiny_vlm.train()
    items = samples(tiny_vlm.image_token_id, tiny_vlm.image_seq_length)
    padded_loss, padded_grads = run(tiny_vlm, pad_collate(items, tokenizer.pad_token_id))  # transformers' sdpa
    use_attention(tiny_vlm, attention)
    packed = pack_collate(items, tokenizer.pad_token_id, pack_length)
    assert packed["input_ids"].shape[0] == (1 if pack_length is None else 3)
    packed_loss, packed_grads = run(tiny_vlm, packed)
    assert padded_grads.keys() == packed_grads.keys() and len(padded_grads) > 40
    torch.testing.assert_close(packed_loss, padded_loss, rtol=0, atol=2e-6)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("attention", [SEGMENT_ATTENTION, "eager"])
def test_no_sample_attends_to_another(tiny_vlm, tokenizer, attention):
    tiny_vlm.eval()
    use_attention(tiny_vlm, attention)
    items = samples(tiny_vlm.image_token_id, tiny_vlm.image_seq_length)
    changed = list(items)
    changed[1] = {**items[1], "input_ids": torch.randint(0, 1000, items[1]["input_ids"].shape)}  # a text-only sample
    with torch.no_grad():
        states = []
        for batch in (pack_collate(items, tokenizer.pad_token_id), pack_collate(changed, tokenizer.pad_token_id)):
            embeds = tiny_vlm.embed(batch["input_ids"], batch["pixel_values"])
            states.append(tiny_vlm._decode(embeds, None, batch["position_ids"], batch["segments"])[0])
    _, start, end = batch["segments"][1]
    assert not torch.allclose(states[0][start:end], states[1][start:end])
    # every other sample, before and after it in the row, is untouched to the last bit
    torch.testing.assert_close(states[0][:start], states[1][:start], rtol=0, atol=0)
    torch.testing.assert_close(states[0][end:], states[1][end:], rtol=0, atol=0)


def test_gradient_checkpointing_keeps_packed_gradients(tiny_vlm, tokenizer):
    tiny_vlm.train()
    tiny_vlm.use_packed_attention()
    packed = pack_collate(samples(tiny_vlm.image_token_id, tiny_vlm.image_seq_length), tokenizer.pad_token_id)
    plain_loss, plain_grads = run(tiny_vlm, packed)
    tiny_vlm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tiny_vlm.vision_encoder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed_loss, checkpointed_grads = run(tiny_vlm, packed)
    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=0, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_flash_attention_gets_one_flat_sequence_and_the_sample_boundaries(tiny_vlm, tokenizer, monkeypatch):
    """flash-attn is GPU-only: check what the decoder is handed, with a stand-in that records it."""
    batch = pack_collate(samples(tiny_vlm.image_token_id, tiny_vlm.image_seq_length), tokenizer.pad_token_id, 64)
    calls = []

    def decoder(inputs_embeds, **kwargs):
        calls.append(kwargs)
        return type("Output", (), {"last_hidden_state": inputs_embeds})

    monkeypatch.setattr(tiny_vlm.llm.config, "_attn_implementation", "flash_attention_2")
    monkeypatch.setattr(tiny_vlm.llm, "get_decoder", lambda: decoder)
    embeds = torch.randn(*batch["input_ids"].shape, 8)
    hidden = tiny_vlm._decode(embeds, None, batch["position_ids"], batch["segments"])
    torch.testing.assert_close(hidden, embeds, rtol=0, atol=0)  # flattened, then put back in rows
    rows, width = batch["input_ids"].shape
    (call,) = calls
    assert call["position_ids"].shape == (1, rows * width) and call["use_cache"] is False
    expected = [0] + [row * width + end for row, _, end in batch["segments"]]
    assert call["cu_seq_lens_q"].tolist() == expected and call["cu_seq_lens_q"].dtype == torch.int32
    assert call["max_length_q"] == max(end - start for _, start, end in batch["segments"])
    assert call["cu_seq_lens_k"] is call["cu_seq_lens_q"] and "attention_mask" not in call
