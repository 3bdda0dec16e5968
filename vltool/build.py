"""Turn config dicts into objects: the one place where configs become modules.

Kept free of heavy imports (no torch, transformers, peft or DeepSpeed) so that commands which
only read data (``check-dataset``, ``prepare-dataset``) build what they need through the same
function as training.
"""

from typing import Any

from mmengine.utils import get_object_from_string

from vltool.errors import ConfigError


def resolve_type(type_: Any) -> Any:
    """A config's ``type``: the object itself, or a dotted name (configs dumped by mmengine) imported."""
    if not isinstance(type_, str):
        return type_
    obj = get_object_from_string(type_)
    if obj is None:
        raise ConfigError(f"config type '{type_}' cannot be imported; check the name or install its package.")
    return obj


def build(cfg: Any, **extra: Any) -> Any:
    """Instantiate ``cfg`` bottom-up: every dict with a ``type`` is called with its other keys.

    Nested dicts and lists are built first, so ``dict(type=VisionEncoder, model=dict(type=...))``
    passes the built inner object. ``extra`` adds keyword arguments to the outermost call.
    """
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(build(item) for item in cfg)
    if not isinstance(cfg, dict):
        return cfg
    kwargs = {key: build(value) for key, value in cfg.items() if key != "type"}
    if "type" not in cfg:
        return {**kwargs, **extra}
    return resolve_type(cfg["type"])(**kwargs, **extra)
