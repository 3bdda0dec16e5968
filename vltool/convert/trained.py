"""Rebuild a trained model: the config's parts, the previous stage's weights, then the checkpoint."""

import copy
from pathlib import Path

from mmengine.config import Config
from peft import PeftModel

from vltool.engine.checkpoint import (
    PREFIX,
    check_pretrained_exists,
    load_checked,
    load_pretrained,
    name_list,
    read_weights,
)
from vltool.engine.stages import pretrained_checkpoint
from vltool.errors import ConfigError
from vltool.model.builder import Parts, build_seeded_parts
from vltool.model.lora import ADAPTER_DIRS
from vltool.model.vlm import VisionLanguageModel


def read_checkpoint(path: str | Path) -> dict[str, object]:
    """The weights of anything ``vltool train`` writes: a ``.pth`` file or a DeepSpeed checkpoint directory.

    Returns:
        Parameter names as in :class:`~vltool.model.vlm.VisionLanguageModel` (no ``vlm.`` prefix).

    Raises:
        ConfigError: the path is missing, is an adapter folder, or holds no weights.
    """
    path = Path(path)
    if path.is_dir() and any((path / folder).is_dir() for folder in ADAPTER_DIRS.values()):
        raise ConfigError(
            f"{path} is an adapter folder, which lacks the projector and other trained weights: convert the "
            "iter_N.pth checkpoint saved with it, or merge an adapter into its base with `vltool convert merge`."
        )
    return {name.removeprefix(PREFIX): value for name, value in read_weights(path).items()}


def without_quantization(cfg: Config) -> Config:
    """A copy of ``cfg`` whose LLM loads unquantised: QLoRA adapters merge into the full-precision base."""
    cfg = copy.deepcopy(cfg)
    cfg.model.pop("llm_quantization", None)
    return cfg


def load_trained_parts(cfg: Config, checkpoint: str | Path) -> Parts:
    """Build the config's parts and load ``pretrained_pth`` and then ``checkpoint`` into the model.

    The checkpoint must hold exactly the parameters the config trains (``vltool train`` saves
    nothing else), so a checkpoint converted with the wrong config fails here, naming keys.

    Args:
        cfg: the training config (the copy mmengine dumps into the work dir works).
        checkpoint: an ``iter_N.pth`` file or a DeepSpeed checkpoint directory.

    Raises:
        ConfigError: config and checkpoint do not match (missing or unexpected keys, shapes), or
            the config's ``pretrained_pth`` is missing.
    """
    weights = read_checkpoint(checkpoint)
    pretrained = pretrained_checkpoint(cfg)
    if pretrained:
        check_pretrained_exists(pretrained)
    parts = build_seeded_parts(cfg)
    if pretrained:
        load_pretrained(parts.model, pretrained)
    model = parts.model
    source = f"checkpoint {checkpoint} does not match config {cfg.filename}"
    hint = "convert with the config it was trained with."
    missing = load_checked(model, weights, source, hint)
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
