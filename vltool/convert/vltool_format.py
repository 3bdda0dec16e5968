"""The ``vltool`` format: every projector kind, full parts or adapters on named bases, and a JSON manifest.

The layout and its file and folder names are in :mod:`vltool.model.saved_format`, which the loader reads too.
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from vltool.constants import IMAGE_TOKEN
from vltool.model import projectors
from vltool.model.blip2_encoder import Blip2QFormerEncoder
from vltool.model.qwen_vl_visual import QwenVLVisualEncoder
from vltool.model.qwen_vl_weights import save_qwen_vl_visual
from vltool.model.saved_format import (
    ADAPTER_SUFFIX,
    ENCODER_BLIP2,
    ENCODER_CLIP,
    ENCODER_QWEN_VL,
    FORMAT_VERSION,
    IMAGE_PROCESSOR_FOLDER,
    LLM_FOLDER,
    MANIFEST,
    PROJECTOR_CONFIG,
    PROJECTOR_FOLDER,
    PROJECTOR_WEIGHTS,
    TOKENIZER_FOLDER,
    VISION_ENCODER_FOLDER,
)
from vltool.model.vlm import VisionLanguageModel
from vltool.templates import Template


def projector_spec(projector: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The projector's class name and constructor arguments, as the manifest stores them."""
    cls = type(projector)
    if getattr(projectors, cls.__name__, None) is not cls:
        raise TypeError(f"{cls.__name__} is not a vltool projector (vltool.model.projectors)")
    return {"type": cls.__name__, **kwargs}


def save_projector(projector: nn.Module, spec: dict[str, Any], folder: Path, dtype: torch.dtype) -> None:
    """Write ``config.json`` (``spec``) and the weights as safetensors."""
    folder.mkdir()
    (folder / PROJECTOR_CONFIG).write_text(json.dumps(spec, indent=2) + "\n")
    state = {name: value.detach().to(dtype).contiguous() for name, value in projector.state_dict().items()}
    save_file(state, folder / PROJECTOR_WEIGHTS)


def _save_part(
    part: nn.Module, name: str, save_dir: Path, base: dict[str, Any] | None, dtype: torch.dtype, shard: str
) -> dict[str, Any]:
    """Save an LLM or vision model whole or, with ``base``, as its PEFT adapter.

    Returns:
        The manifest entry: ``{"path": name}`` or ``{"adapter": f"{name}_adapter", **base}``.
    """
    if base is not None:
        folder = f"{name}{ADAPTER_SUFFIX}"
        part.save_pretrained(save_dir / folder, save_embedding_layers=False)
        return {"adapter": folder, **base}
    part.to(dtype).save_pretrained(save_dir / name, max_shard_size=shard)
    return {"path": name}


def save_vision_encoder(
    encoder: nn.Module, save_dir: Path, base: dict[str, Any] | None, dtype: torch.dtype, shard: str
) -> dict[str, Any]:
    """Save the vision encoder in the folder layout its kind loads from, and return its manifest entry.

    Qwen-VL's tower and BLIP-2's ViT + Q-Former are saved as checkpoints of their own kind
    (what their loaders read in training), so the loader rebuilds them with the same code; only
    a CLIP/SigLIP encoder may stay a PEFT adapter on a named base.

    Returns:
        ``{"kind": ..., "path": "vision_encoder", ...}``; for CLIP/SigLIP also the feature layer,
        select strategy and resolution.
    """
    folder = save_dir / VISION_ENCODER_FOLDER
    if isinstance(encoder, QwenVLVisualEncoder):
        save_qwen_vl_visual(encoder.model, folder, dtype, shard)
        return {"kind": ENCODER_QWEN_VL, "path": VISION_ENCODER_FOLDER}
    if isinstance(encoder, Blip2QFormerEncoder):
        encoder.model.save_pretrained(folder, dtype, shard)  # the Q-Former stays fp32
        return {"kind": ENCODER_BLIP2, "path": VISION_ENCODER_FOLDER}
    return {
        "kind": ENCODER_CLIP,
        **_save_part(encoder.model, VISION_ENCODER_FOLDER, save_dir, base, dtype, shard),
        "feature_layer": encoder.feature_layer,
        "select_strategy": encoder.select_strategy,
        "image_size": encoder.image_size,
    }


def save_vltool(
    vlm: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    image_processor: BaseImageProcessor,
    image_aspect: str,
    template: Template,
    projector_kwargs: dict[str, Any],
    adapter_bases: dict[str, dict[str, Any]],
    save_dir: Path,
    dtype: torch.dtype,
    max_shard_size: str,
) -> dict[str, Any]:
    """Write ``vlm`` and what it needs to answer prompts in the vltool format.

    Args:
        vlm: the trained model; adapters of parts not in ``adapter_bases`` already merged.
        tokenizer, image_processor, image_aspect, template: as in training.
        projector_kwargs: the projector's constructor arguments (sizes, depth, queries...).
        adapter_bases: ``{"llm": {...}, "vision_encoder": {...}}`` for parts saved as adapters:
            each value names the base (``base``), and how it loads (``quantization`` for the
            LLM, ``class`` for the vision model); parts not listed are saved whole. Only a
            CLIP/SigLIP encoder can be an adapter.
        save_dir: an empty folder.
        dtype: dtype of the saved full weights (adapters keep theirs).
        max_shard_size: safetensors shard size for the LLM and the vision model.

    Returns:
        The manifest.
    """
    manifest = {
        "format": "vltool",
        "format_version": FORMAT_VERSION,
        "llm": _save_part(vlm.llm, LLM_FOLDER, save_dir, adapter_bases.get("llm"), dtype, max_shard_size),
        "vision_encoder": save_vision_encoder(
            vlm.vision_encoder, save_dir, adapter_bases.get("vision_encoder"), dtype, max_shard_size
        ),
        "projector": {"path": PROJECTOR_FOLDER},
        "tokenizer": TOKENIZER_FOLDER,
        "image_processor": IMAGE_PROCESSOR_FOLDER,
        "image_aspect": image_aspect,
        "image_token": IMAGE_TOKEN,
        "image_token_id": vlm.image_token_id,
        "image_seq_length": vlm.image_seq_length,
        "dtype": str(dtype).removeprefix("torch."),
        "template": asdict(template),
    }
    spec = projector_spec(vlm.projector, projector_kwargs)
    save_projector(vlm.projector, spec, save_dir / PROJECTOR_FOLDER, dtype)
    tokenizer.save_pretrained(save_dir / TOKENIZER_FOLDER)
    image_processor.save_pretrained(save_dir / IMAGE_PROCESSOR_FOLDER)
    (save_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
