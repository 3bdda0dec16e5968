"""Every shipped config loads and builds with tiny parts; config lookup, overrides and copies."""

import bitsandbytes as bnb
import pytest
import torch
from conftest import ASSETS, TINY_VISION, tiny_image_processor, tiny_qwen2, tiny_qwen2_config
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
from vltool.build import build, resolve_type
from vltool.constants import IGNORE_INDEX
from vltool.data.dataset import VisionLanguageDataset
from vltool.engine.config import copy_config, list_configs, load_config, resolve_config
from vltool.engine.precision import optim_wrapper_cfg
from vltool.engine.runner import _param_scheduler_cfg
from vltool.errors import ConfigError
from vltool.model.blip2_encoder import Blip2VisionQFormer
from vltool.model.builder import build_parts
from vltool.model.projectors import LinearProjector, MLPProjector
from vltool.model.qwen_vl_visual import QwenVLVisualConfig
from vltool.model.qwen_vl_weights import load_qwen_vl_visual
from vltool.model.tokenizer import load_qwen2_tokenizer
from vltool.model.visual_tokens import image_seq_length_from_config
from vltool.templates import load_template

RECIPES = [name for name in list_configs() if not name.startswith("demo")]  # the demos train their encoder
QWEN_VL_FIXTURE = ASSETS / "qwen-vl-visual"  # Qwen-VL's visual tower at its real geometry, width 64
ZERO_QWEN_VL = [f"zero_qwen_vl_qwen2_0_5b_stage{n}" for n in (1, 2, 3)]
QWEN_VL_FINETUNE = "qwen_vl_visual_qwen2_5_7b_finetune"


@pytest.fixture(scope="module")
def saved_qwen2(module_tmp):
    """A tiny Qwen2 folder: a quantised LLM must load with from_pretrained."""
    path = module_tmp("qwen2")
    tiny_qwen2().save_pretrained(path)
    return str(path)


def make_tiny(cfg, saved_llm=None):
    """Swap hub checkpoints for tiny random parts of the same classes (a saved tiny LLM where one is given)."""
    model_type = resolve_type(cfg.model.vision_encoder.model.type)  # a dumped copy names types as strings
    encoder_class = getattr(model_type, "__self__", model_type)
    if encoder_class is Blip2VisionQFormer:  # BLIP-2's own geometry (224 px, 32 queries), tiny widths
        cfg.model.vision_encoder.model = dict(type=Blip2VisionQFormer.from_config, config=tiny_blip2_config())
    elif encoder_class is load_qwen_vl_visual:  # the parity fixture: 448 px, 256 queries, width 64, output 256
        cfg.model.vision_encoder.model.pretrained_model_name_or_path = str(QWEN_VL_FIXTURE)
    else:
        tiny_clip_or_siglip(cfg, encoder_class)
    cfg.model.llm = dict(type=Qwen2ForCausalLM, config=tiny_qwen2_config())
    if saved_llm is not None:
        cfg.model.llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=saved_llm)
    cfg.tokenizer = dict(type=load_qwen2_tokenizer)
    return cfg


def tiny_clip_or_siglip(cfg, encoder_class):
    """A tiny CLIP or SigLIP tower at 32 px (48 px for a recipe that runs it above its native size)."""
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


def image_geometry(name):
    """(visual tokens per image, input size in pixels) of a recipe as make_tiny builds it."""
    if name in ZERO_QWEN_VL or name == QWEN_VL_FINETUNE:
        return 256, 448  # Qwen-VL's tower: its resampler's 256 queries, at its own 448 px
    if "resampler" in name:
        return 256, 48
    if name.startswith("minigpt4qwen_"):
        return 32, 224
    return 16, 32


def test_recipes_are_shipped():
    assert len(RECIPES) >= 26
    for family in ("pretrain", "_finetune", "lora_finetune", "qlora_finetune"):
        for llm in ("qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b"):
            for encoder in ("clip_l14_336", "siglip_so400m_p14_384"):
                assert any(n.startswith(f"{llm}_{encoder}") and n.endswith(family) for n in RECIPES)
    assert any("resampler" in n for n in RECIPES) and any("linear" in n for n in RECIPES)
    assert {*ZERO_QWEN_VL, QWEN_VL_FINETUNE, "minigpt4qwen_qwen2_5_7b"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_builds_tiny(name, saved_qwen2):
    cfg = make_tiny(load_config(name), saved_qwen2 if "qlora" in name else None)
    assert cfg.train_dataloader.dataset.type is VisionLanguageDataset
    parts = build_parts(cfg)
    model = parts.model
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert "projector" in trainable
    # the encoder is frozen, but for Qwen-VL's fix_vit, whose resampler (attn_pool) trains
    vision = {n.split(".")[1] for n, p in model.vision_encoder.named_parameters() if p.requires_grad}
    assert vision == ({"attn_pool"} if name == QWEN_VL_FINETUNE else set())
    if "lora" in name:
        assert any("lora_" in n for n, p in model.llm.named_parameters() if p.requires_grad)
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.llm.modules()) == ("qlora" in name)
        assert not model.llm.get_input_embeddings().weight.requires_grad
    frozen_llm = name.endswith("pretrain") or "linear" in name or name.startswith("minigpt4qwen")
    assert ("llm" in trainable) == (not frozen_llm and name != ZERO_QWEN_VL[0])
    n_tokens, size = image_geometry(name)
    assert model.image_seq_length == n_tokens
    input_ids = torch.tensor([[151644] + [model.image_token_id] * n_tokens + [1000, 1001, 1002]])
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, -2:] = input_ids[0, -2:]
    pixels = torch.randn(1, 3, size, size)
    loss = model.loss(input_ids, labels, pixel_values=pixels)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.projector.parameters().__next__().grad is not None
    if name == QWEN_VL_FINETUNE:
        assert model.vision_encoder.model.attn_pool.query.grad is not None
    assert optim_wrapper_cfg(cfg)["type"].__name__ == "OptimWrapper"  # CPU: fp32 even for bf16 recipes


def test_zero_qwen_vl_stages():
    """Qwen-VL's tower (resampler included) frozen throughout, a new 2-layer MLP, Qwen2-0.5B-Instruct with
    Qwen2's system prompt; projector only at 1e-3, then projector and LLM at 2e-5 on two instruction sets."""
    stages = [load_config(name) for name in ZERO_QWEN_VL]
    first = stages[0].model
    for cfg in stages:
        assert cfg.template == "qwen2_chat" and cfg.train_cfg.max_epochs == 1
        # Qwen-VL's squash to 448x448, not padded to square first
        assert cfg.train_dataloader.dataset.image_aspect == "resize"
        assert cfg.image_processor.size == dict(height=448, width=448) and not cfg.image_processor.do_center_crop
        assert resolve_type(cfg.model.vision_encoder.model.type) is load_qwen_vl_visual
        assert cfg.model.vision_encoder == first.vision_encoder and cfg.model.projector == first.projector
        assert cfg.model.llm.pretrained_model_name_or_path == "Qwen/Qwen2-0.5B-Instruct"
        assert cfg.model.freeze_vision_encoder and not cfg.model.freeze_projector
        assert not cfg.model.get("train_vision_modules")
    assert [cfg.model.freeze_llm for cfg in stages] == [True, False, False]
    assert [cfg.optim_wrapper.optimizer.lr for cfg in stages] == [1e-3, 2e-5, 2e-5]
    data = [(cfg.train_dataloader.dataset.data_path, cfg.train_dataloader.dataset.image_folder) for cfg in stages]
    assert data[0] == (
        "./data/llava_data/LLaVA-CC3M-Pretrain-595K/chat.json",
        "./data/llava_data/LLaVA-CC3M-Pretrain-595K/images",
    )
    assert data[1] == (
        "./data/llava_data/LLaVA-Instruct-150K/llava_instruct_150k.json",
        "./data/llava_data/llava_images/coco/train2017",
    )
    assert data[2][0] not in (data[0][0], data[1][0])
    assert load_template("qwen2_chat").default_system == "You are a helpful assistant."
    # at the real widths: Linear(4096 -> 896), GELU, Linear(896 -> 896) (896: Qwen2-0.5B's hidden size)
    assert resolve_type(first.projector.type) is MLPProjector and first.projector.depth == 2
    projector = build(first.projector, in_features=QwenVLVisualConfig().output_dim, out_features=896)
    assert [tuple(layer.weight.shape) for layer in (projector.linear_1, projector.linear_2)] == [
        (896, 4096),
        (896, 896),
    ]
    assert isinstance(projector.act, torch.nn.GELU)
    # check-dataset's count, from the configs: one <image> is 256 positions
    assert image_seq_length_from_config(make_tiny(stages[1]).model) == 256


def test_qwen_vl_visual_finetune_is_qwen_vls_fix_vit_stage():
    cfg = load_config(QWEN_VL_FINETUNE)
    assert cfg.template == "qwen_vl"
    assert cfg.model.train_vision_modules == ["model.attn_pool"] and cfg.model.freeze_vision_encoder
    assert not cfg.model.freeze_projector and not cfg.model.freeze_llm
    assert resolve_type(cfg.model.projector.type) is LinearProjector  # 4096 -> 3584, kept linear
    assert cfg.model.llm.pretrained_model_name_or_path == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.train_dataloader.dataset.image_aspect == "resize" and cfg.train_dataloader.dataset.max_length == 2048
    optimizer = cfg.optim_wrapper.optimizer  # Qwen-VL's finetune_ds.sh
    assert (optimizer.lr, tuple(optimizer.betas), optimizer.weight_decay) == (1e-5, (0.9, 0.95), 0.1)
    assert cfg.lr_schedule.warmup_ratio == 0.01


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
