"""Rebuild a trained model: the config's parts, the previous stage's weights, then the checkpoint.

Memory: the checkpoint is never held. Its tensors are copied one at a time from the mapped files
into the model's parameters (:func:`~vltool.engine.checkpoint.load_weights_lazily`), and the parts
a config loads by name are loaded straight in the dtype the conversion saves, so a conversion needs
about the model in that dtype and no more (docs/benchmarks.md, "Convert").
"""

import copy
from pathlib import Path

import torch
from mmengine.config import Config
from peft import PeftModel

from vltool.engine.checkpoint import (
    PREFIX,
    check_pretrained_exists,
    load_pretrained,
    load_weights_lazily,
    name_list,
)
from vltool.engine.lazy_weights import open_weights
from vltool.engine.stages import pretrained_checkpoint
from vltool.errors import ConfigError
from vltool.model.builder import Parts, build_seeded_parts
from vltool.model.config_parts import SOURCE
from vltool.model.lora import ADAPTER_DIRS
from vltool.model.quantization import quantization_settings
from vltool.model.vlm import VisionLanguageModel


def trained_parts(path: str | Path) -> set[str]:
    """The parts (``llm``, ``vision_encoder``, ``projector``) a checkpoint trains, read from its index only.

    Fails fast, before the model is built, on anything but what ``vltool train`` writes.

    Raises:
        ConfigError: the path is missing, is an adapter folder, holds no weights or is damaged.
    """
    path = Path(path)
    if path.is_dir() and any((path / folder).is_dir() for folder in ADAPTER_DIRS.values()):
        raise ConfigError(
            f"{path} is an adapter folder, which lacks the projector and other trained weights: convert the "
            "iter_N.pth checkpoint saved with it, or merge an adapter into its base with `vltool convert merge`."
        )
    return {name.removeprefix(PREFIX).split(".")[0] for name in open_weights(path)}


def without_quantization(cfg: Config) -> Config:
    """A copy of ``cfg`` whose LLM loads unquantised: QLoRA adapters merge into the full-precision base."""
    cfg = copy.deepcopy(cfg)
    cfg.model.pop("llm_quantization", None)
    return cfg


def has_adapters(cfg: Config) -> bool:
    """Whether the config trains LoRA adapters (on the LLM or the vision encoder)."""
    return any(cfg.model.get(key) is not None for key in ("llm_lora", "vision_encoder_lora"))


def loading_in(cfg: Config, dtype: torch.dtype, trained: set[str]) -> Config:
    """A copy of ``cfg`` whose parts loaded by name load as a conversion to ``dtype`` needs them.

    A part saved whole ends in ``dtype`` anyway. A frozen one loads straight in ``dtype``: its
    weights are rounded the same on loading as on saving, and the wider copy is never held (a
    float32 CLIP-L is 1.2 GB, 0.6 GB in bfloat16). One the checkpoint trains loads in the dtype
    its folder stores (``"auto"``), which leaves its weights pages of the folder's files, never
    read: the checkpoint's values go into new tensors in ``dtype``
    (:func:`~vltool.engine.checkpoint.load_weights_lazily`), unrounded when ``dtype`` is wider
    than the stored one. Parts with an adapter load as in training, so merges compute at
    training precision; a quantised LLM keeps its settings.

    Args:
        cfg: the training config.
        dtype: the dtype the conversion saves in.
        trained: the parts the checkpoint holds weights of (:func:`trained_parts`).
    """
    cfg = copy.deepcopy(cfg)
    model = cfg.model
    parts = [("vision_encoder", model.vision_encoder.get("model"), "vision_encoder_lora")]
    if quantization_settings(model) is None:
        parts.append(("llm", model.llm, "llm_lora"))
    for name, part, adapter in parts:
        if isinstance(part, dict) and SOURCE in part and model.get(adapter) is None:
            part.pop("torch_dtype", None)
            part["dtype"] = "auto" if name in trained else dtype
    return cfg


def load_trained_parts(cfg: Config, checkpoint: str | Path, dtype: torch.dtype | None = None) -> Parts:
    """Build the config's parts and load ``pretrained_pth`` and then ``checkpoint`` into the model.

    The checkpoint must hold exactly the parameters the config trains (``vltool train`` saves
    nothing else), so a checkpoint converted with the wrong config fails here, naming keys.

    Args:
        cfg: the training config (the copy mmengine dumps into the work dir works).
        checkpoint: an ``iter_N.pth`` file or a DeepSpeed checkpoint directory.
        dtype: the dtype the model will be saved in, so that it is loaded in it (:func:`loading_in`);
            ignored for a config with adapters, whose merge computes as in training. Default: as
            in training.

    Raises:
        ConfigError: config and checkpoint do not match (missing or unexpected keys, shapes), or
            the config's ``pretrained_pth`` is missing.
    """
    trained = trained_parts(checkpoint)
    dtype = None if has_adapters(cfg) else dtype
    if dtype is not None:
        cfg = loading_in(cfg, dtype, trained)
    pretrained = pretrained_checkpoint(cfg)
    if pretrained:
        check_pretrained_exists(pretrained)
    parts = build_seeded_parts(cfg)
    if pretrained:
        load_pretrained(parts.model, pretrained)
    model = parts.model
    source = f"checkpoint {checkpoint} does not match config {cfg.filename}"
    hint = "convert with the config it was trained with."
    _, missing = load_weights_lazily(model, checkpoint, source, hint, dtype)
    if missing:
        raise ConfigError(f"{source}: {len(missing)} trained parameters are missing ({name_list(missing)}); {hint}")
    model.requires_grad_(False).eval()
    return parts


def merge_adapters(vlm: VisionLanguageModel, keep: set[str] = frozenset()) -> None:
    """Merge the LoRA adapters of ``llm`` and ``vision_encoder`` into their bases, in place.

    Args:
        vlm: the model; parts without adapters are left alone.
        keep: parts (``llm``, ``vision_encoder``) whose adapters stay separate.
    """
    if isinstance(vlm.llm, PeftModel) and "llm" not in keep:
        vlm.llm = vlm.llm.merge_and_unload()
    encoder = vlm.vision_encoder
    if isinstance(encoder.model, PeftModel) and "vision_encoder" not in keep:
        encoder.model = encoder.model.merge_and_unload()
