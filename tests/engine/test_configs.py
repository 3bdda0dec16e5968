"""Every shipped config loads and builds with tiny parts; config lookup, overrides and copies."""

import bitsandbytes as bnb
import pytest
import torch
from conftest import TINY_VISION, tiny_image_processor, tiny_qwen2, tiny_qwen2_config
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    Qwen2ForCausalLM,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from tests.model.test_blip2_encoder import tiny_blip2_config
from vltool.build import resolve_type
from vltool.constants import IGNORE_INDEX
from vltool.data.dataset import VisionLanguageDataset
from vltool.engine.config import copy_config, list_configs, load_config, resolve_config
from vltool.engine.precision import optim_wrapper_cfg
from vltool.engine.runner import _param_scheduler_cfg
from vltool.errors import ConfigError
from vltool.model.blip2_encoder import Blip2VisionQFormer
from vltool.model.builder import build_parts
from vltool.model.tokenizer import load_qwen2_tokenizer

RECIPES = [name for name in list_configs() if not name.startswith("demo")]  # the demos train their encoder


@pytest.fixture(scope="module")
def saved_qwen2(tmp_path_factory):
    """A tiny Qwen2 folder: a quantised LLM must load with from_pretrained."""
    path = tmp_path_factory.mktemp("qwen2")
    tiny_qwen2().save_pretrained(path)
    return str(path)


def make_tiny(cfg, saved_llm=None):
    """Swap hub checkpoints for tiny random parts of the same classes (a saved tiny LLM where one is given)."""
    model_type = resolve_type(cfg.model.vision_encoder.model.type)  # a dumped copy names types as strings
    encoder_class = getattr(model_type, "__self__", model_type)
    if encoder_class is Blip2VisionQFormer:  # BLIP-2's own geometry (224 px, 32 queries), tiny widths
        cfg.model.vision_encoder.model = dict(type=Blip2VisionQFormer.from_config, config=tiny_blip2_config())
        cfg.model.llm = dict(type=Qwen2ForCausalLM, config=tiny_qwen2_config())
        cfg.tokenizer = dict(type=load_qwen2_tokenizer)
        return cfg
    if encoder_class is SiglipVisionModel:
        config = SiglipVisionConfig(image_size=32, **TINY_VISION)
        cfg.image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    else:
        assert encoder_class is CLIPVisionModel
        config = CLIPVisionConfig(image_size=32, **TINY_VISION)
        cfg.image_processor = tiny_image_processor(32)
    cfg.model.vision_encoder.model = dict(type=encoder_class, config=config)
    if cfg.model.vision_encoder.get("image_size"):
        cfg.model.vision_encoder.image_size = 48  # run above the native size, as the Qwen-VL recipe does
        cfg.image_processor = tiny_image_processor(48)
    cfg.model.llm = dict(type=Qwen2ForCausalLM, config=tiny_qwen2_config())
    if saved_llm is not None:
        cfg.model.llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=saved_llm)
    cfg.tokenizer = dict(type=load_qwen2_tokenizer)
    return cfg


def test_recipes_are_shipped():
    assert len(RECIPES) >= 26
    for family in ("pretrain", "_finetune", "lora_finetune", "qlora_finetune"):
        for llm in ("qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b"):
            for encoder in ("clip_l14_336", "siglip_so400m_p14_384"):
                assert any(n.startswith(f"{llm}_{encoder}") and n.endswith(family) for n in RECIPES)
    assert any("resampler" in n for n in RECIPES) and any("linear" in n for n in RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_builds_tiny(name, saved_qwen2):
    cfg = make_tiny(load_config(name), saved_qwen2 if "qlora" in name else None)
    assert cfg.train_dataloader.dataset.type is VisionLanguageDataset
    parts = build_parts(cfg)
    model = parts.model
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert "projector" in trainable and "vision_encoder" not in trainable
    if "lora" in name:
        assert any("lora_" in n for n, p in model.llm.named_parameters() if p.requires_grad)
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.llm.modules()) == ("qlora" in name)
        assert not model.llm.get_input_embeddings().weight.requires_grad
    frozen_llm = name.endswith("pretrain") or "linear" in name or name.startswith("minigpt4qwen")
    assert ("llm" in trainable) == (not frozen_llm)
    n_tokens = model.image_seq_length
    blip2 = name.startswith("minigpt4qwen_")
    assert n_tokens == (256 if "resampler" in name else 32 if blip2 else 16)
    input_ids = torch.tensor([[151644] + [model.image_token_id] * n_tokens + [1000, 1001, 1002]])
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, -2:] = input_ids[0, -2:]
    size = 48 if "resampler" in name else 224 if blip2 else 32
    pixels = torch.randn(1, 3, size, size)
    loss = model.loss(input_ids, labels, pixel_values=pixels)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.projector.parameters().__next__().grad is not None
    assert optim_wrapper_cfg(cfg)["type"].__name__ == "OptimWrapper"  # CPU: fp32 even for bf16 recipes


def test_schedule_follows_max_iters():
    cfg = load_config("demo", ["train_cfg.max_iters=200"])
    warmup, cosine = _param_scheduler_cfg(cfg)
    assert (warmup["begin"], warmup["end"]) == (0, 8)  # warmup_ratio 0.04
    assert (cosine["begin"], cosine["end"]) == (8, 200)
    assert cosine["eta_min"] == 0.0  # the demo decays to zero


def test_unknown_config_suggests_names():
    with pytest.raises(ConfigError, match="Did you mean: demo"):
        resolve_config("dem")
    with pytest.raises(ConfigError, match="list-cfg"):
        resolve_config("zzzzzzzzzz")


def test_cfg_options_parse_and_typos_fail():
    cfg = load_config(
        "demo", ["train_cfg.max_iters=7", "optim_wrapper.optimizer.lr=0.5", "train_dataloader.dataset.data_path=x.json"]
    )
    assert cfg.train_cfg.max_iters == 7 and cfg.optim_wrapper.optimizer.lr == 0.5
    assert cfg.train_dataloader.dataset.data_path == "x.json"
    with pytest.raises(ConfigError, match="nothing reads 'trian_cfg'.*Did you mean 'train_cfg.max_iters'"):
        load_config("demo", ["trian_cfg.max_iters=7"])


def test_copy_cfg_writes_a_self_contained_config(tmp_path):
    target = copy_config("qwen2_5_0_5b_clip_l14_336_lora_finetune", str(tmp_path))
    copied = make_tiny(load_config(str(target)))
    parts = build_parts(copied)
    assert any("lora_" in n for n, _ in parts.model.llm.named_parameters())
    with pytest.raises(ConfigError, match="already exists"):
        copy_config("qwen2_5_0_5b_clip_l14_336_lora_finetune", str(tmp_path))


def test_list_cfg_pattern():
    assert list_configs("demo") == ["demo", "demo_lengths"]
    assert all("siglip" in n for n in list_configs("siglip"))
    assert len(list_configs("*_7b_*qlora*")) == 2
