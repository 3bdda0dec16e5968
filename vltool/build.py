"""Turn config dicts into objects: the one place where configs become modules.

Kept free of heavy imports (no torch, transformers, peft or DeepSpeed) so that commands which
only read data (``check-dataset``, ``prepare-dataset``) build what they need through the same
function as training.
"""

import inspect
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
    target = resolve_type(cfg["type"])
    _check_arguments(target, {**kwargs, **extra})
    return target(**kwargs, **extra)


def _check_arguments(target: Any, kwargs: dict[str, Any]) -> None:
    """A misspelt or missing config key is a one-line ConfigError naming the type, not a TypeError traceback.

    Checked against the signature before the call, so a TypeError raised inside the call is not mistaken for one.
    """
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins and C types have no signature to check against
        return
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        name = getattr(target, "__qualname__", repr(target))
        keys = ", ".join(key for key in signature.parameters if key not in ("self", "args", "kwargs"))
        raise ConfigError(f"config entry of type {name}: {err}; its keys are: {keys}.") from None
