"""The parts a config must name, and where a tokenizer or image processor without a source loads from.

Kept free of heavy imports (no torch, peft, bitsandbytes) for ``check-dataset`` and
``prepare-dataset``, which build these parts without the model.
"""

from collections.abc import Mapping
from typing import Any

from mmengine.config import Config

from vltool.errors import ConfigError

REQUIRED_KEYS = ("tokenizer", "template", "image_processor", "model")
"""Top-level keys every config needs to build its parts."""

SOURCE = "pretrained_model_name_or_path"
PART_SOURCES = {"tokenizer": ("llm",), "image_processor": ("vision_encoder", "model")}
"""Where a ``from_pretrained`` tokenizer or image processor without its own source loads from:
the LLM's and the encoder's source, so one override moves both halves of a part."""


def check_required_keys(cfg: Config) -> None:
    """Raise a :class:`ConfigError` naming the first of :data:`REQUIRED_KEYS` that ``cfg`` lacks."""
    for key in REQUIRED_KEYS:
        if key not in cfg:
            raise ConfigError(f"config has no '{key}' entry; see docs/configs.md for the required keys.")


def part_cfg(cfg: Config, key: str) -> Any:
    """``cfg[key]`` (``tokenizer`` or ``image_processor``) with its source filled from the model part it belongs to.

    Recipes write the Hub id or folder once, on the LLM and the encoder; ``tokenizer`` and
    ``image_processor`` loaded ``from_pretrained`` without a source of their own take it from there.
    """
    part = cfg[key]
    if not isinstance(part, Mapping) or SOURCE in part or not str(_type_name(part)).endswith("from_pretrained"):
        return part
    node: Any = cfg.model
    for name in PART_SOURCES[key]:
        node = node.get(name) if isinstance(node, Mapping) else None
    source = node.get(SOURCE) if isinstance(node, Mapping) else None
    if source is None:
        where = ".".join(("model", *PART_SOURCES[key], SOURCE))
        raise ConfigError(f"{key} loads from_pretrained but names no {SOURCE}, and {where} is not set either.")
    return {**part, SOURCE: source}


def _type_name(part: Mapping[str, Any]) -> str:
    type_ = part.get("type")
    return type_ if isinstance(type_, str) else getattr(type_, "__qualname__", "")
