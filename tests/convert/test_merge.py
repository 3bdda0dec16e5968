"""vltool convert merge: LoRA adapters folded into an LLM or a vision tower, checked against BASE first."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import IMAGE_SIZE, TINY_VISION, tiny_clip, tiny_image_processor, tiny_qwen2
from peft import LoraConfig
from safetensors import safe_open
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vltool.convert.merge import merge_adapter
from vltool.errors import ConfigError
from vltool.model.lora import add_lora

IMAGE_ID = 151646
# random B as well as A: a fresh adapter already changes the outputs, so a merge that drops it shows
LORA = dict(r=4, lora_alpha=8, init_lora_weights=False)
TEXT_IDS = torch.tensor([[151644, 9707, 1879, IMAGE_ID, 1000], [1002, 1001, IMAGE_ID, 9707, 1879]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    """``[2, 5, vocab]`` logits of an LLM on two rows that include ``<image>``."""
    with torch.no_grad():
        return model(input_ids=TEXT_IDS).logits


def hidden_states(tower: torch.nn.Module) -> torch.Tensor:
    """``[layers + 1, 2, tokens, hidden]``: every hidden state of a vision tower on two fixed images."""
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.stack(tower(pixel_values=pixels, output_hidden_states=True).hidden_states)


def save_adapter(peft_model, path: Path) -> Path:
    # as vltool.model.lora.save_adapters does: appended rows travel as trainable tokens
    peft_model.save_pretrained(path, save_embedding_layers=False)
    return path


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def llm_run(tokenizer, module_tmp):
    """A saved tiny Qwen2 (with tokenizer), a LoRA adapter trained on it, and both models' logits."""
    root = module_tmp("llm")
    torch.manual_seed(0)
    tiny_qwen2().save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    llm = AutoModelForCausalLM.from_pretrained(root / "base")  # so the adapter records its base
    base_logits = logits(llm)
    peft_model = add_lora(llm, LoraConfig(**LORA))
    adapter = save_adapter(peft_model, root / "adapter")
    return SimpleNamespace(base=root / "base", adapter=adapter, base_logits=base_logits, logits=logits(peft_model))


def test_llm_adapter_merges_into_plain_weights(llm_run, tmp_path):
    out = merge_adapter(llm_run.base, llm_run.adapter, tmp_path / "merged")
    assert out == tmp_path / "merged"
    assert [path.name for path in tmp_path.iterdir()] == ["merged"]  # no staging folder left
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name in merged.state_dict())
    torch.testing.assert_close(logits(merged), llm_run.logits, atol=1e-5, rtol=0)
    assert (logits(merged) - llm_run.base_logits).abs().max() > 0.1
    assert AutoTokenizer.from_pretrained(out)("Hello world").input_ids == [9707, 1879]


def test_merged_llm_keeps_the_base_dtype(llm_run, tokenizer, tmp_path):
    AutoModelForCausalLM.from_pretrained(llm_run.base).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tokenizer.save_pretrained(tmp_path / "bf16")
    out = merge_adapter(tmp_path / "bf16", llm_run.adapter, tmp_path / "merged")
    with safe_open(out / "model.safetensors", framework="pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(out)).float(), llm_run.logits, atol=0.1, rtol=0.05
    )


def test_small_shards_hold_the_same_model(llm_run, tmp_path):
    out = merge_adapter(llm_run.base, llm_run.adapter, tmp_path / "merged", max_shard_size="200KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(path.name for path in out.glob("model-*.safetensors"))
    count = len(shards)
    assert count >= 3 and not (out / "model.safetensors").exists()
    assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert sorted(set(index["weight_map"].values())) == shards
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out)), llm_run.logits, atol=1e-5, rtol=0)


def full_clip() -> CLIPModel:
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, **TINY_VISION).to_dict()
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    return CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16))


def tiny_siglip() -> SiglipVisionModel:
    return SiglipVisionModel(SiglipVisionConfig(image_size=IMAGE_SIZE, **TINY_VISION))


VISION_BASES = {
    "clip_vision": (tiny_clip, CLIPVisionModel),
    "clip_full": (full_clip, CLIPVisionModel),  # text and vision, like openai/clip-vit-large-patch14-336
    "siglip_vision": (tiny_siglip, SiglipVisionModel),
}


@pytest.mark.parametrize("kind", VISION_BASES)
def test_vision_adapter_merges_into_the_tower(kind, tmp_path):
    build, tower_class = VISION_BASES[kind]
    torch.manual_seed(0)
    build().save_pretrained(tmp_path / "base")
    tiny_image_processor().save_pretrained(tmp_path / "base")
    tower = tower_class.from_pretrained(tmp_path / "base")
    before = hidden_states(tower)
    peft_model = add_lora(tower, LoraConfig(**LORA))
    adapter = save_adapter(peft_model, tmp_path / "adapter")

    out = merge_adapter(tmp_path / "base", adapter, tmp_path / "merged", is_clip=True)
    merged = tower_class.from_pretrained(out)
    assert merged.config.model_type.endswith("_vision_model")  # the tower alone, also from a full CLIP
    torch.testing.assert_close(hidden_states(merged), hidden_states(peft_model), atol=1e-5, rtol=0)
    assert (hidden_states(merged) - before).abs().max() > 0.1
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.crop_size == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}


# how an adapter carries the <image> row: tied embeddings?, extra LoRA settings
NEW_ROWS = {
    "trainable_tokens_tied": (True, {}),
    "trainable_tokens_untied": (False, {}),
    "modules_to_save_tables": (False, {"modules_to_save": ["embed_tokens", "lm_head"]}),
}


def train_image_rows(peft_model) -> None:
    """Give <image>'s embedding and LM-head rows new values, as training would."""
    with torch.no_grad():
        for table in (peft_model.get_input_embeddings(), peft_model.get_output_embeddings()):
            if hasattr(table, "token_adapter"):
                table.token_adapter.trainable_tokens_delta["default"].normal_(std=0.02)  # [1, hidden]
            else:
                table.modules_to_save["default"].weight[IMAGE_ID].normal_(std=0.02)


@pytest.mark.parametrize("rows_as", NEW_ROWS)
def test_adapter_with_new_token_rows_grows_the_base(tokenizer, tmp_path, rows_as):
    tied, extra = NEW_ROWS[rows_as]
    # the base is one row short of the training tokenizer: <image> got a new row
    torch.manual_seed(0)
    tiny_qwen2(vocab_size=IMAGE_ID, tie_word_embeddings=tied).save_pretrained(tmp_path / "base")
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    llm.resize_token_embeddings(len(tokenizer))
    peft_model = add_lora(llm, LoraConfig(**LORA, **extra), new_token_ids=[IMAGE_ID])
    train_image_rows(peft_model)
    adapter = save_adapter(peft_model, tmp_path / "adapter")
    # the tokenizer comes from the adapter folder when it has one, else from BASE
    tokenizer.save_pretrained(adapter if tied else tmp_path / "base")

    out = merge_adapter(tmp_path / "base", adapter, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.config.vocab_size == merged.get_input_embeddings().num_embeddings == IMAGE_ID + 1
    torch.testing.assert_close(logits(merged), logits(peft_model), atol=1e-5, rtol=0)
    with torch.no_grad():
        image_row = peft_model.get_input_embeddings()(torch.tensor([IMAGE_ID]))  # [1, hidden]
    torch.testing.assert_close(merged.get_input_embeddings().weight[IMAGE_ID : IMAGE_ID + 1], image_row)
    assert (merged.get_output_embeddings().weight is merged.get_input_embeddings().weight) == tied
    saved_tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(saved_tokenizer) == IMAGE_ID + 1 and saved_tokenizer.convert_tokens_to_ids("<image>") == IMAGE_ID


@pytest.fixture(scope="module")
def clip_run(module_tmp):
    """A saved tiny CLIP tower and a LoRA adapter trained on it."""
    root = module_tmp("clip")
    torch.manual_seed(0)
    tiny_clip().save_pretrained(root / "base")
    tower = CLIPVisionModel.from_pretrained(root / "base")
    return SimpleNamespace(
        base=root / "base", adapter=save_adapter(add_lora(tower, LoraConfig(**LORA)), root / "adapter")
    )


def test_adapter_for_another_width_names_the_layer(llm_run, tmp_path):
    torch.manual_seed(0)
    tiny_qwen2(hidden_size=32).save_pretrained(tmp_path / "narrow")
    with pytest.raises(ConfigError) as error:
        merge_adapter(tmp_path / "narrow", llm_run.adapter, tmp_path / "merged")
    assert one_line(error) == (
        f"{llm_run.adapter}: layer model.layers.0.mlp.down_proj is 128 -> 64 features in the adapter but "
        f"128 -> 32 features in BASE {tmp_path / 'narrow'}; pass the model it was trained on ({llm_run.base}) as BASE."
    )
    assert not (tmp_path / "merged").exists()


def test_wrong_is_clip_says_which_way_to_fix_it(llm_run, clip_run, tmp_path):
    cases = [
        # LLM adapter with --is-clip: on its own LLM, then on a CLIP tower
        (
            llm_run.base,
            llm_run.adapter,
            True,
            f"BASE {llm_run.base} is a qwen2 model, not CLIP or SigLIP; drop --is-clip",
        ),
        (
            clip_run.base,
            llm_run.adapter,
            True,
            f"{llm_run.adapter}: layer model.layers.0.mlp.down_proj is not in BASE {clip_run.base} (CLIPVisionModel); "
            f"pass the model it was trained on ({llm_run.base}) as BASE (drop --is-clip: this is an LLM adapter).",
        ),
        # vision adapter without --is-clip: on its own tower, then on an LLM
        (
            clip_run.base,
            clip_run.adapter,
            False,
            f"BASE {clip_run.base} is a clip_vision_model model, not a causal LM; add --is-clip to merge a "
            "vision-encoder adapter.",
        ),
        (
            llm_run.base,
            clip_run.adapter,
            False,
            f"{clip_run.adapter}: layer encoder.layers.0.mlp.fc1 is not in BASE {llm_run.base} (Qwen2ForCausalLM); "
            f"pass the model it was trained on ({clip_run.base}) as BASE (add --is-clip: this is a vision-encoder "
            "adapter).",
        ),
    ]
    for base, adapter, is_clip, expected in cases:
        with pytest.raises(ConfigError) as error:
            merge_adapter(base, adapter, tmp_path / "merged", is_clip=is_clip)
        assert one_line(error).startswith(expected)
    assert not (tmp_path / "merged").exists()


def test_missing_inputs_are_named(llm_run, tmp_path):
    (tmp_path / "not_an_adapter").mkdir()
    tiny_qwen2().save_pretrained(tmp_path / "no_tokenizer")  # transformers alone would load an empty tokenizer
    cases = [
        (
            dict(base=tmp_path / "no_tokenizer"),
            f"neither {llm_run.adapter} nor BASE {tmp_path / 'no_tokenizer'} has a tokenizer; save the training "
            "tokenizer into the adapter folder.",
        ),
        (dict(adapter=tmp_path / "not_an_adapter"), f"{tmp_path / 'not_an_adapter'} has no adapter_config.json;"),
        (
            dict(base=tmp_path / "missing"),
            f"BASE {tmp_path / 'missing'} does not exist; pass the folder or Hub id of the model",
        ),
        (dict(max_shard_size="2 gigs"), "--max-shard-size '2 gigs' is not a size; use a value such as 2GB"),
    ]
    for change, expected in cases:
        arguments = {"base": llm_run.base, "adapter": llm_run.adapter, "save_dir": tmp_path / "merged", **change}
        with pytest.raises(ConfigError) as error:
            merge_adapter(**arguments)
        assert one_line(error).startswith(expected)


def test_existing_save_dir_is_kept_unless_overwrite(llm_run, tmp_path):
    save_dir = tmp_path / "merged"
    save_dir.mkdir()
    (save_dir / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError) as error:
        merge_adapter(llm_run.base, llm_run.adapter, save_dir)
    assert one_line(error) == f"{save_dir} exists and is not empty; choose another directory or pass --overwrite."
    assert [path.name for path in save_dir.iterdir()] == ["notes.txt"]
    assert (save_dir / "notes.txt").read_text() == "keep me"

    merge_adapter(llm_run.base, llm_run.adapter, save_dir, overwrite=True)
    assert not (save_dir / "notes.txt").exists()
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(save_dir)), llm_run.logits, atol=1e-5, rtol=0
    )


def test_failure_while_saving_leaves_the_old_save_dir(llm_run, tmp_path, monkeypatch):
    save_dir = tmp_path / "merged"
    save_dir.mkdir()
    (save_dir / "notes.txt").write_text("keep me")

    class FullDiskTokenizer:
        def __len__(self) -> int:
            return IMAGE_ID + 1

        def save_pretrained(self, path: Path) -> None:
            (Path(path) / "tokenizer.json").write_text("{")
            raise OSError("No space left on device")

    monkeypatch.setattr("vltool.model.tokenizer.AutoTokenizer.from_pretrained", lambda source: FullDiskTokenizer())
    with pytest.raises(OSError, match="No space left"):
        merge_adapter(llm_run.base, llm_run.adapter, save_dir, overwrite=True)
    assert [path.name for path in tmp_path.iterdir()] == ["merged"]  # the half-written staging folder is gone
    assert [path.name for path in save_dir.iterdir()] == ["notes.txt"]
