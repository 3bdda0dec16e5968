"""Segment attention: its own name, chosen per model for packed batches; other models keep transformers' SDPA."""

import json

import pytest
import torch
from PIL import Image
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tests.conftest import tiny_qwen2
from tests.data.test_packing import samples
from vltool.data.collate import pad_collate
from vltool.data.packing import pack_collate
from vltool.engine.config import load_config
from vltool.engine.runner import build_runner
from vltool.errors import ConfigError
from vltool.model.segment_attention import SEGMENT_ATTENTION, segment_sdpa_attention, select_packed_attention

UNMASKED = "test_unmasked_sdpa"  # a registered function that transformers builds no mask for


@pytest.fixture
def unmasked_attention():
    AttentionInterface.register(UNMASKED, sdpa_attention_forward)
    yield UNMASKED
    del AttentionInterface._global_mapping[UNMASKED]


def padded_inputs():
    """Two rows, the first left-padded: the padding mask matters."""
    input_ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :4] = 0
    return input_ids, attention_mask


def test_another_model_keeps_transformers_sdpa_in_a_process_that_packs(tiny_vlm, tokenizer, monkeypatch):
    items = samples(tiny_vlm.image_token_id, tiny_vlm.image_seq_length)
    padded_loss = tiny_vlm.loss(**pad_collate(items, tokenizer.pad_token_id))
    assert tiny_vlm.use_packed_attention() == SEGMENT_ATTENTION
    packed_loss = tiny_vlm.loss(**pack_collate(items, tokenizer.pad_token_id))
    torch.testing.assert_close(packed_loss, padded_loss, rtol=0, atol=2e-6)
    assert ALL_ATTENTION_FUNCTIONS[SEGMENT_ATTENTION] is segment_sdpa_attention

    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward  # transformers' entry is untouched
    torch.manual_seed(0)
    other = tiny_qwen2(attn_implementation="sdpa").eval()
    assert other.config._attn_implementation == "sdpa"
    input_ids, attention_mask = padded_inputs()
    with torch.no_grad():
        logits = other(input_ids, attention_mask=attention_mask).logits

    calls = []

    def transformers_sdpa(*args, **kwargs):  # transformers' own function, called directly
        calls.append(sorted(kwargs))
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", transformers_sdpa)
    with torch.no_grad():
        reference = other(input_ids, attention_mask=attention_mask).logits
    assert len(calls) == other.config.num_hidden_layers
    assert torch.equal(logits, reference)  # bit for bit


def test_without_segments_segment_attention_is_sdpa_padding_included(tiny_vlm, monkeypatch):
    """Generation and padded batches of a switched model: transformers' SDPA and its padding mask."""
    input_ids, attention_mask = padded_inputs()
    with torch.no_grad():
        sdpa = tiny_vlm(input_ids, attention_mask=attention_mask)
        tiny_vlm.use_packed_attention()
        segment = tiny_vlm(input_ids, attention_mask=attention_mask)
        assert torch.equal(segment, sdpa)
        # the mask function registered beside it is what keeps the padding out: transformers builds
        # no mask at all for a name it has none for
        monkeypatch.delitem(AttentionMaskInterface._global_mapping, SEGMENT_ATTENTION)
        unmasked = tiny_vlm(input_ids, attention_mask=attention_mask)
    assert not torch.allclose(unmasked[0, 4:], sdpa[0, 4:])
    assert torch.equal(unmasked[1], sdpa[1])  # the row without padding


def test_only_packed_collation_switches_attention(tiny_vlm):
    tiny_vlm.use_attention_for(pad_collate)
    tiny_vlm.use_attention_for(None)
    assert tiny_vlm.llm.config._attn_implementation == "sdpa"
    tiny_vlm.use_attention_for("vltool.data.packing.pack_collate")  # as configs dumped by copy-cfg name it
    assert tiny_vlm.llm.config._attn_implementation == SEGMENT_ATTENTION
    assert tiny_vlm.vision_encoder.model.config._attn_implementation == "sdpa"  # the LLM's only
    tiny_vlm.use_attention_for(pack_collate)  # again: no change
    assert tiny_vlm.llm.config._attn_implementation == SEGMENT_ATTENTION


def test_implementations_that_keep_samples_apart_stay(monkeypatch):
    llm = tiny_qwen2(attn_implementation="eager")
    assert select_packed_attention(llm) == "eager" == llm.config._attn_implementation
    monkeypatch.setattr(llm.config, "_attn_implementation_internal", "flash_attention_2")  # GPU-only to set for real
    assert select_packed_attention(llm) == "flash_attention_2"


def test_packed_batch_with_attention_that_crosses_samples_is_refused(tiny_vlm, tokenizer, unmasked_attention):
    items = samples(tiny_vlm.image_token_id, tiny_vlm.image_seq_length)
    packed = pack_collate(items, tokenizer.pad_token_id)
    # plain sdpa: never switched to segment attention
    with pytest.raises(ConfigError, match="attention implementation 'sdpa': it would attend across samples; select"):
        tiny_vlm.loss(**packed)

    # a function transformers builds no mask for really does attend across samples ...
    tiny_vlm.llm.set_attn_implementation(unmasked_attention)
    changed = [items[0], {**items[1], "input_ids": torch.randint(0, 1000, items[1]["input_ids"].shape)}, items[2]]
    states = []
    with torch.no_grad():
        for batch in (pack_collate(items[:3], tokenizer.pad_token_id), pack_collate(changed, tokenizer.pad_token_id)):
            embeds = tiny_vlm.embed(batch["input_ids"], batch["pixel_values"])
            decoder = tiny_vlm.llm.get_decoder()
            states.append(decoder(inputs_embeds=embeds, position_ids=batch["position_ids"]).last_hidden_state[0])
    _, start, end = batch["segments"][1]
    assert torch.equal(states[0][:start], states[1][:start])  # causal: the first sample cannot see the second
    assert not torch.allclose(states[0][end:], states[1][end:])  # the third sees the second
    # ... so a packed batch with it is refused, at the switch and at the step
    with pytest.raises(ConfigError, match=f"attn_implementation='{UNMASKED}': it would attend across samples"):
        tiny_vlm.use_packed_attention()
    with pytest.raises(ConfigError, match=f"attention implementation '{UNMASKED}': it would attend across samples"):
        tiny_vlm.loss(**packed)
    with pytest.raises(ConfigError, match="attn_implementation='flex_attention'"):
        select_packed_attention(tiny_qwen2(attn_implementation="flex_attention"))


def test_the_trainer_selects_segment_attention_for_packed_batches(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "r.png")
    record = {
        "image": "r.png",
        "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}],
    }
    (tmp_path / "d.json").write_text(json.dumps([record] * 8))
    options = [
        f"train_dataloader.dataset.data_path={tmp_path / 'd.json'}",
        f"train_dataloader.dataset.image_folder={tmp_path}",
        "train_cfg.max_iters=1",
        "train_dataloader.batch_size=4",
        "custom_hooks=[]",
        "data_preparation=None",
    ]
    padded = build_runner(load_config("demo", options), str(tmp_path / "padded"))
    assert padded.model.vlm.llm.config._attn_implementation == "sdpa"
    packing = "train_dataloader.collate_fn.type=vltool.data.packing.pack_collate"
    packed = build_runner(load_config("demo", [*options, packing]), str(tmp_path / "packed"))
    assert packed.model.vlm.llm.config._attn_implementation == SEGMENT_ATTENTION
    assert padded.model.vlm.llm.config._attn_implementation == "sdpa"  # the other run's model is untouched
    packed.train()  # and it trains
