"""BLIP-2's ViT + Q-Former: parity with ``Blip2Model.get_qformer_features``, selective loading, eval mode, recipe."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_qwen2_config
from mmengine.config import Config
from peft import LoraConfig
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import Blip2Config, Blip2Model, Blip2VisionModel, BlipImageProcessorPil, Qwen2ForCausalLM

from vltool.build import build
from vltool.constants import IGNORE_INDEX
from vltool.engine.config import load_config
from vltool.engine.runner import _param_scheduler_cfg
from vltool.errors import ConfigError
from vltool.model import blip2_encoder
from vltool.model.blip2_encoder import (
    Blip2QFormerEncoder,
    Blip2VisionQFormer,
    RandomResizedCropFlip,
    encoder_weight_files,
)
from vltool.model.builder import build_model, build_parts
from vltool.model.lora import add_lora
from vltool.model.projectors import LinearProjector
from vltool.model.tokenizer import load_qwen2_tokenizer
from vltool.model.visual_tokens import image_seq_length_from_config

CONFIGS = Path(__file__).parents[2] / "vltool/configs"
IMAGE_ID = 151646
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
SOURCE = "pretrained_model_name_or_path"


def tiny_blip2_config() -> Blip2Config:
    """BLIP-2's geometry (224 px, patch 14, 32 queries, cross-attention every 2nd layer), tiny widths, OPT text."""
    return Blip2Config(
        vision_config=dict(
            image_size=224,
            patch_size=14,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        qformer_config=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            cross_attention_frequency=2,
        ),
        text_config=dict(
            model_type="opt",
            vocab_size=64,
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=64,
        ),  # fmt: skip
        num_query_tokens=32,
    )


@pytest.fixture(scope="module")
def reference(module_tmp) -> tuple[Blip2Model, Path]:
    """A random tiny ``Blip2Model`` (eval mode) and the folder it saved itself to."""
    torch.manual_seed(0)
    model = Blip2Model(tiny_blip2_config()).eval()
    with torch.no_grad():
        model.query_tokens.normal_()  # zeros by default: all 32 outputs would be the same
    folder = module_tmp("blip2")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def expected(reference, pixel_values) -> torch.Tensor:
    with torch.no_grad():
        return reference[0].get_qformer_features(pixel_values)


def encode(encoder: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(pixel_values)


def test_output_equals_get_qformer_features(reference, pixel_values, expected):
    encoder = Blip2QFormerEncoder(Blip2VisionQFormer.from_pretrained(str(reference[1])))
    assert (encoder.image_size, encoder.hidden_size, encoder.num_patches) == (224, 48, 32)
    features = encode(encoder, pixel_values)
    print(f"max abs difference to get_qformer_features: {(features - expected).abs().max().item():.1e}")
    assert features.shape == (2, 32, 48) and torch.equal(features, expected)


def test_loaded_weights_are_the_files_where_from_pretrained_leaves_them_random(reference):
    folder = reference[1]
    stored = load_file(folder / "model.safetensors")
    loaded = Blip2VisionQFormer.from_pretrained(str(folder)).state_dict()
    assert len(loaded) == len([name for name in stored if blip2_encoder.is_encoder_tensor(name)])
    assert all(torch.equal(value, stored[name]) for name, value in loaded.items())
    # the trap this loader exists for: transformers' own class, given the composite folder
    trap = Blip2VisionModel.from_pretrained(folder)
    name = "embeddings.patch_embedding.weight"
    assert not torch.equal(trap.state_dict()[name], stored[f"vision_model.{name}"])


def write_sharded(folder: Path, tensors: dict[str, torch.Tensor], suffix: str) -> tuple[Path, dict[str, str]]:
    """The composite's tensors in three shards (LLM alone, ViT, Q-Former + queries + LLM leftovers) and an index."""
    groups = {
        f"model-00001-of-00003{suffix}": ("language_model.",),
        f"model-00002-of-00003{suffix}": ("vision_model.",),
        f"model-00003-of-00003{suffix}": ("qformer.", "query_tokens", "language_projection."),
    }
    weight_map = {}
    for shard, prefixes in groups.items():
        part = {name: value.contiguous() for name, value in tensors.items() if name.startswith(prefixes)}
        save_file(part, folder / shard) if suffix == ".safetensors" else torch.save(part, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    index_name = "model.safetensors.index.json" if suffix == ".safetensors" else "pytorch_model.bin.index.json"
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder / index_name, weight_map


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_reads_only_the_shards_holding_the_encoder(tmp_path, reference, pixel_values, expected, suffix):
    (tmp_path / "config.json").write_text((reference[1] / "config.json").read_text())
    index, weight_map = write_sharded(tmp_path, load_file(reference[1] / "model.safetensors"), suffix)
    llm_shard = tmp_path / f"model-00001-of-00003{suffix}"
    llm_shard.write_bytes(b"not a weights file" * 100)  # any read of it fails

    assert llm_shard not in encoder_weight_files(str(tmp_path), {})
    features = encode(Blip2QFormerEncoder(Blip2VisionQFormer.from_pretrained(str(tmp_path))), pixel_values)
    assert torch.equal(features, expected)

    # had the index put an encoder tensor in the LLM's shard, the load would fail, in one line naming it
    index.write_text(json.dumps({"weight_map": {**weight_map, "query_tokens": llm_shard.name}}))
    with pytest.raises(ConfigError, match="cannot read weights") as error:
        Blip2VisionQFormer.from_pretrained(str(tmp_path))
    assert str(llm_shard) in str(error.value) and "\n" not in str(error.value)


def test_bad_checkpoints_are_one_line_config_errors(tmp_path, reference):
    stored = load_file(reference[1] / "model.safetensors")
    cases = {
        "missing": ({k: v for k, v in stored.items() if k != "query_tokens"}, "has no query_tokens"),
        "misshapen": ({**stored, "query_tokens": torch.zeros(1, 16, 48)}, r"query_tokens has shape \[1, 16, 48\]"),
        "unexpected": ({**stored, "qformer.extra.weight": torch.zeros(2)}, "unexpected tensor qformer.extra.weight"),
    }
    for name, (tensors, message) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text((reference[1] / "config.json").read_text())
        save_file(tensors, tmp_path / name / "model.safetensors")
        with pytest.raises(ConfigError, match=message) as error:
            Blip2VisionQFormer.from_pretrained(str(tmp_path / name))
        assert "\n" not in str(error.value)
    tiny_qwen2_config().save_pretrained(tmp_path / "qwen2")
    with pytest.raises(ConfigError, match="is a Qwen2Config, not a BLIP-2 checkpoint"):
        Blip2VisionQFormer.from_pretrained(str(tmp_path / "qwen2"))
    with pytest.raises(ConfigError, match="download it first"):
        Blip2VisionQFormer.from_pretrained("Salesforce/blip2-flan-t5-xxl", local_files_only=True)


def test_zero3_is_refused_plainly(reference, monkeypatch):
    monkeypatch.setattr(blip2_encoder, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(ConfigError, match="use --deepspeed zero2"):
        Blip2VisionQFormer.from_pretrained(str(reference[1]))


def test_qformer_stays_fp32_under_a_bf16_vit_and_autocast(reference, pixel_values):
    model = Blip2VisionQFormer.from_pretrained(str(reference[1]), dtype="bfloat16")
    assert {p.dtype for n, p in model.named_parameters() if n.startswith("vision_model.")} == {torch.bfloat16}
    assert {p.dtype for n, p in model.named_parameters() if not n.startswith("vision_model.")} == {torch.float32}
    seen = []
    model.qformer.encoder.layer[0].crossattention.attention.key.register_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype)
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.eval()(pixel_values)
    assert seen == [torch.float32] and features.dtype == torch.bfloat16  # cast to the ViT's dtype


def test_frozen_parts_stay_in_eval_mode_and_lora_parts_train(reference, pixel_values):
    encoder = Blip2QFormerEncoder(Blip2VisionQFormer.from_pretrained(str(reference[1]))).requires_grad_(False)
    encoder.train()
    assert not encoder.model.vision_model.training and not encoder.model.qformer.training
    torch.testing.assert_close(encoder(pixel_values), encoder(pixel_values), atol=0, rtol=0)  # no dropout

    # adapters on the Q-Former's attention only ("query" and "value" match no ViT layer)
    encoder.model = add_lora(encoder.model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    encoder.train()
    assert encoder.parts[1].training and not encoder.parts[0].training
    encoder(pixel_values).square().mean().backward()
    lora = [param for name, param in encoder.model.named_parameters() if "lora_A" in name]
    assert len(lora) == 2 * 2 + 2  # self-attention query/value in 2 layers, cross-attention in layer 0
    assert all(param.grad is not None for param in lora)


def test_gradient_checkpointing_gives_the_same_gradients(reference, pixel_values):
    grads = []
    for checkpointing in (False, True):
        model = Blip2VisionQFormer.from_pretrained(str(reference[1])).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(0)  # the same dropout masks; recomputation replays them
        model(pixel_values).square().mean().backward()
        grads.append([model.vision_model.embeddings.patch_embedding.weight.grad, model.query_tokens.grad])
    assert model.vision_model.encoder.gradient_checkpointing and model.qformer.encoder.gradient_checkpointing
    for without, with_ in zip(*grads, strict=True):
        torch.testing.assert_close(with_, without, atol=1e-6, rtol=1e-5)


def test_tiny_vlm_trains_only_the_projector(tokenizer, reference, pixel_values):
    cfg = dict(
        vision_encoder=dict(
            type=Blip2QFormerEncoder,
            model=dict(type=Blip2VisionQFormer.from_pretrained, pretrained_model_name_or_path=str(reference[1])),
        ),
        projector=dict(type=LinearProjector),
        llm=dict(type=Qwen2ForCausalLM, config=tiny_qwen2_config()),
    )
    torch.manual_seed(0)
    vlm = build_model(cfg, tokenizer)  # encoder frozen, projector trains, LLM frozen
    assert vlm.image_seq_length == 32 and vlm.projector.linear.in_features == 48
    assert image_seq_length_from_config(cfg) == 32
    before = {name: value.clone() for name, value in vlm.state_dict().items()}

    input_ids = torch.tensor([[151644] + [IMAGE_ID] * 32 + [1000, 1001, 1002] * 4] * 2)
    labels = input_ids.clone()
    labels[:, :33] = IGNORE_INDEX
    optimizer = torch.optim.AdamW([param for param in vlm.parameters() if param.requires_grad], lr=1e-3)
    vlm.train()
    assert vlm.projector.training and not any(part.training for part in vlm.vision_encoder.parts)
    for _ in range(2):
        loss = vlm.loss(input_ids=input_ids, labels=labels, pixel_values=pixel_values)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert torch.isfinite(loss)
    changed = {name for name, value in vlm.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == {"projector.linear.weight", "projector.linear.bias"}


def test_check_dataset_counts_32_tokens_from_config_json_alone(reference, tmp_path):
    (tmp_path / "config.json").write_text((reference[1] / "config.json").read_text())  # no weights at all
    model_cfg = load_config("minigpt4qwen_qwen2_5_7b", [f"model.vision_encoder.model.{SOURCE}={tmp_path}"]).model
    model_cfg.llm = dict(type=Qwen2ForCausalLM, config=tiny_qwen2_config())
    assert image_seq_length_from_config(model_cfg) == 32


def test_base_config_squashes_images_as_lavis_does():
    cfg = Config.fromfile(CONFIGS / "_base_/encoders/blip2_vit_qformer.py")
    assert cfg.vision_encoder.model[SOURCE] == "Salesforce/blip2-flan-t5-xxl"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    pixel_values = build(cfg.image_processor)(image, return_tensors="pt")["pixel_values"]
    # LAVIS' Resize((224, 224), BICUBIC) on a PIL image is PIL's own resize
    squashed = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    expected = torch.from_numpy(((squashed - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)).float()
    torch.testing.assert_close(pixel_values[0], expected, atol=1e-5, rtol=0)


def test_random_resized_crop_flip():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    square = image.resize((240, 240))
    whole = RandomResizedCropFlip(224, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_probability=0.0)
    assert np.array_equal(np.asarray(whole(square)), np.asarray(square.resize((224, 224), Image.Resampling.BICUBIC)))
    mirrored = RandomResizedCropFlip(224, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_probability=1.0)(square)
    assert np.array_equal(np.asarray(mirrored), np.asarray(whole(square))[:, ::-1])

    augment = RandomResizedCropFlip()  # BLIP-2's: 224, scale 0.5-1, ratio 3/4-4/3, flip half the time
    torch.manual_seed(0)
    boxes = [augment.crop_box(500, 300) for _ in range(200)]
    assert all(0 <= left < right <= 500 and 0 <= top < bottom <= 300 for left, top, right, bottom in boxes)
    areas = [(right - left) * (bottom - top) / (500 * 300) for left, top, right, bottom in boxes]
    assert 0.49 < min(areas) and max(areas) <= 1.0 and len(set(boxes)) > 150
    assert augment(image).size == (224, 224)
    # the processor's squash leaves a 224 x 224 image as it is
    processor = BlipImageProcessorPil(size={"height": 224, "width": 224})
    crop = augment(image)
    direct = (np.asarray(crop, dtype=np.float64) / 255 - CLIP_MEAN) / CLIP_STD
    torch.testing.assert_close(
        processor(crop, return_tensors="pt")["pixel_values"][0], torch.from_numpy(direct.transpose(2, 0, 1)).float()
    )


def test_recipe_trains_only_the_linear_layer_on_a_warmup_then_cosine(reference):
    cfg = load_config("minigpt4qwen_qwen2_5_7b", [f"model.vision_encoder.model.{SOURCE}={reference[1]}"])
    cfg.model.llm = dict(type=Qwen2ForCausalLM, config=tiny_qwen2_config())
    cfg.tokenizer = dict(type=load_qwen2_tokenizer)
    parts = build_parts(cfg)
    assert parts.template.name == "minigpt4qwen" and parts.model.image_seq_length == 32
    assert isinstance(parts.model.vision_encoder, Blip2QFormerEncoder)
    assert {name for name, p in parts.model.named_parameters() if p.requires_grad} == {
        "projector.linear.weight",
        "projector.linear.bias",
    }
    assert cfg.train_dataloader.dataset.image_aspect == "resize"
    assert cfg.train_dataloader.dataset.image_augment.type is RandomResizedCropFlip
    optimizer_cfg = cfg.optim_wrapper.optimizer
    assert (optimizer_cfg.lr, optimizer_cfg.weight_decay) == (1e-4, 0.05)

    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2000)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optimizer_cfg.lr)
    schedulers = [build_scheduler(scheduler, optimizer) for scheduler in _param_scheduler_cfg(cfg)]
    lrs = []
    for _ in range(2000):
        lrs.append(optimizer.param_groups[0]["lr"])
        for scheduler in schedulers:
            scheduler.step()
    assert lrs[0] == pytest.approx(1e-7) and lrs[500] == pytest.approx(1e-4) and max(lrs) == pytest.approx(1e-4)
    assert lrs[-1] == pytest.approx(1e-6, rel=1e-3)


def build_scheduler(cfg: dict, optimizer: torch.optim.Optimizer):
    return cfg["type"](optimizer, **{key: value for key, value in cfg.items() if key != "type"})
