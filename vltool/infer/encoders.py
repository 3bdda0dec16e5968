"""Rebuild the vision encoder a vltool-format manifest describes, and cast it for inference.

The manifest's ``vision_encoder.kind`` (:data:`vltool.model.saved_format.ENCODER_KINDS`) names the
class; each kind's folder is a checkpoint its own training-time loader reads, so the reloaded
encoder is built by the same code as the trained one:

- ``clip``: a transformers CLIP/SigLIP vision model (or an adapter on a named base) in
  :class:`VisionEncoder`, with the saved feature layer, select strategy and resolution;
- ``qwen_vl_visual``: :func:`load_qwen_vl_visual` on a Qwen-VL-style folder;
- ``blip2_qformer``: :meth:`Blip2VisionQFormer.from_pretrained` on a BLIP-2-style folder.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vltool.errors import ConfigError
from vltool.model.blip2_encoder import Blip2QFormerEncoder, Blip2VisionQFormer
from vltool.model.qwen_vl_visual import QwenVLVisualEncoder
from vltool.model.qwen_vl_weights import load_qwen_vl_visual
from vltool.model.saved_format import ENCODER_BLIP2, ENCODER_CLIP, ENCODER_KINDS, ENCODER_QWEN_VL
from vltool.model.vision_encoder import VisionEncoder

DType = torch.dtype | str
VisionModelLoader = Callable[[Path, dict[str, Any], DType], nn.Module]
"""``(model_dir, entry, dtype) -> vision model``: how load.py loads a CLIP/SigLIP part (whole or adapter)."""


def load_saved_encoder(
    path: Path, entry: dict[str, Any], dtype: DType, load_vision_model: VisionModelLoader
) -> nn.Module:
    """The vision encoder of a vltool-format directory, as its manifest entry describes it.

    Args:
        path: the model directory.
        entry: the manifest's ``vision_encoder`` block.
        dtype: the weights' dtype, ``auto`` for the saved one. BLIP-2's Q-Former and query
            tokens load in fp32 whatever it says.
        load_vision_model: loads a CLIP/SigLIP part, whole or as an adapter on its base.

    Raises:
        ConfigError: an unknown ``kind`` (a newer vltool wrote it).
    """
    kind = entry.get("kind", ENCODER_CLIP)  # manifests written before kinds existed are CLIP/SigLIP
    if kind == ENCODER_CLIP:
        vision = load_vision_model(path, entry, dtype)
        return VisionEncoder(vision, entry["feature_layer"], entry["select_strategy"], entry["image_size"])
    folder = str(path / entry["path"])
    if kind == ENCODER_QWEN_VL:
        return QwenVLVisualEncoder(load_qwen_vl_visual(folder, dtype))
    if kind == ENCODER_BLIP2:
        return Blip2QFormerEncoder(Blip2VisionQFormer.from_pretrained(folder, dtype))
    raise ConfigError(
        f"{path}: unknown vision encoder kind {kind!r} (this vltool reads {', '.join(ENCODER_KINDS)}); "
        "upgrade vltool or convert the checkpoint again."
    )


def cast_encoder(encoder: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``encoder`` to the LLM's ``dtype`` for inference, in place, except BLIP-2's Q-Former.

    The Q-Former and its query tokens stay fp32 as in training (:mod:`vltool.model.blip2_encoder`):
    it is small, and its output is cast to the ViT's dtype before the projector anyway.
    """
    if isinstance(encoder, Blip2QFormerEncoder):
        encoder.parts[0].to(dtype)  # the ViT, the same module whether or not PEFT wraps the model
        return encoder
    return encoder.to(dtype)
