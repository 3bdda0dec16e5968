"""``vltool convert pth_to_hf``: a training checkpoint and its config -> a model directory."""

from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from peft import PeftModel

from vltool.build import resolve_type
from vltool.convert.huggingface import check_encoder, check_projector, save_huggingface
from vltool.convert.output import check_save_dir, check_shard_size, staged_save_dir
from vltool.convert.trained import load_trained_parts, merge_adapters, without_quantization
from vltool.convert.vltool_format import save_vltool
from vltool.engine.config import load_config
from vltool.errors import ConfigError
from vltool.model.quantization import quantization_settings
from vltool.model.vision_encoder import VisionEncoder
from vltool.model.vlm import VisionLanguageModel

SAVE_FORMATS = ("vltool", "huggingface")


def convert_checkpoint(
    config: str,
    checkpoint: str | Path,
    save_dir: str | Path,
    save_format: str = "vltool",
    fp32: bool = False,
    max_shard_size: str = "2GB",
    overwrite: bool = False,
    cfg_options: list[str] | None = None,
) -> dict[str, Any]:
    """Convert ``checkpoint`` (trained with ``config``) into a model directory at ``save_dir``.

    Args:
        config: the training config: a shipped name, a file, or the copy in the work dir.
        checkpoint: an ``iter_N.pth`` file or a DeepSpeed checkpoint directory.
        save_dir: must be empty or missing (or ``overwrite``); written only on success.
        save_format: ``vltool`` (every projector; QLoRA runs keep their adapters) or
            ``huggingface`` (LLaVA in transformers; adapters merged into an unquantised base).
        fp32: save float32 weights instead of bfloat16.
        max_shard_size: safetensors shard size, e.g. ``2GB``.
        overwrite: replace a non-empty ``save_dir``.
        cfg_options: ``KEY=VALUE`` config overrides.

    Returns:
        What was written: ``{"format": ..., "save_dir": ..., "adapters": [...]}``.

    Raises:
        ConfigError: bad flags, a checkpoint that does not match the config, or a model the
            chosen format cannot hold.
    """
    if save_format not in SAVE_FORMATS:
        raise ConfigError(f"unknown --save-format '{save_format}'; use one of {', '.join(SAVE_FORMATS)}.")
    check_shard_size(max_shard_size)
    check_save_dir(save_dir, overwrite)
    cfg = load_config(config, cfg_options)
    quantized = quantization_settings(cfg.model) is not None
    if save_format == "huggingface":
        projector_cfg = cfg.model.projector
        check_encoder(resolve_type(cfg.model.vision_encoder.type))
        check_projector(resolve_type(projector_cfg.type), projector_cfg.get("depth", 2))
        cfg = without_quantization(cfg) if quantized else cfg  # QLoRA adapters merge into the full base
    dtype = torch.float32 if fp32 else torch.bfloat16
    parts = load_trained_parts(cfg, checkpoint, dtype)
    vlm = parts.model
    adapter_bases = _adapter_bases(cfg, vlm) if save_format == "vltool" and quantized else {}
    merge_adapters(vlm, keep=set(adapter_bases))
    if save_format == "huggingface":
        vlm.to(dtype)  # in place, a tensor at a time, so the export never holds the model twice
    aspect = cfg.get("train_dataloader", {}).get("dataset", {}).get("image_aspect", "pad")
    with staged_save_dir(save_dir, overwrite) as staging:
        if save_format == "huggingface":
            save_huggingface(
                vlm, parts.tokenizer, parts.image_processor, aspect, parts.template, staging, dtype, max_shard_size
            )
        else:
            projector_kwargs = {
                **{key: value for key, value in cfg.model.projector.items() if key != "type"},
                "in_features": vlm.vision_encoder.hidden_size,
                "out_features": vlm.llm.config.hidden_size,
            }
            save_vltool(
                vlm,
                parts.tokenizer,
                parts.image_processor,
                aspect,
                parts.template,
                projector_kwargs,
                adapter_bases,
                staging,
                dtype,
                max_shard_size,
            )
    return {"format": save_format, "save_dir": str(save_dir), "adapters": sorted(adapter_bases)}


def _adapter_bases(cfg: Config, vlm: VisionLanguageModel) -> dict[str, dict[str, Any]]:
    """Manifest entries for the adapters a QLoRA run keeps, each naming the base it loads onto.

    Merging into a 4-bit base would round the update away, so the LLM adapter stays separate
    with its quantisation settings; a CLIP/SigLIP vision-encoder adapter stays separate alongside
    it. Other encoders (Qwen-VL's, BLIP-2's) are saved in their own checkpoint layout, which has
    no adapter form, so their adapters are merged.

    Raises:
        ConfigError: a part with an adapter whose base the config builds rather than loads by name.
    """
    bases: dict[str, dict[str, Any]] = {}
    if isinstance(vlm.llm, PeftModel):
        quantization = {
            key: str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value
            for key, value in (quantization_settings(cfg.model) or {}).items()
        }
        bases["llm"] = {"base": _base_name(cfg.model.llm, "llm"), "quantization": quantization}
    encoder = vlm.vision_encoder.model
    if isinstance(vlm.vision_encoder, VisionEncoder) and isinstance(encoder, PeftModel):
        bases["vision_encoder"] = {
            "base": _base_name(cfg.model.vision_encoder.model, "vision_encoder.model"),
            "class": type(encoder.get_base_model()).__name__,
        }
    return bases


def _base_name(part_cfg: dict[str, Any], key: str) -> str:
    name = part_cfg.get("pretrained_model_name_or_path")
    if not name:
        raise ConfigError(
            f"model.{key} is built from a config, not loaded by name, so its adapter cannot be saved apart from "
            "it; convert with --save-format huggingface to merge it."
        )
    return str(name)
