"""Read a saved projector folder: vltool's layout (``config.json`` with ``type``) or XTuner's ``ProjectorModel``."""

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from vltool.errors import ConfigError
from vltool.model import projectors
from vltool.model.saved_format import PROJECTOR_CONFIG, PROJECTOR_WEIGHTS

XTUNER_PROJECTOR = "ProjectorModel"
XTUNER_PROJECTOR_KEY = re.compile(r"model\.(\d+)\.(weight|bias)")


def load_projector(folder: Path) -> torch.nn.Module:
    """A projector saved by vltool (``config.json`` with ``type``) or by XTuner (``ProjectorModel``)."""
    config = folder / PROJECTOR_CONFIG  # XTuner's projector folder names its config.json alike
    spec = json.loads(config.read_text()) if config.is_file() else {}
    if XTUNER_PROJECTOR in spec.get("architectures", ()):
        projector, state = _xtuner_projector(folder, spec)
    elif "type" in spec:
        projector = getattr(projectors, spec.pop("type"))(**spec)
        state = _projector_weights(folder)
    else:
        raise ConfigError(
            f"{folder} holds no projector config.json from vltool or XTuner; convert the checkpoint again."
        )
    try:
        projector.load_state_dict(state)
    except RuntimeError as err:
        reason = " ".join(str(err).split())
        raise ConfigError(f"{folder}: the weights do not match config.json ({reason}).") from None
    return projector


def _projector_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / PROJECTOR_WEIGHTS).is_file():
        return load_file(folder / PROJECTOR_WEIGHTS)
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConfigError(f"{folder} has no {PROJECTOR_WEIGHTS} or pytorch_model.bin; convert the checkpoint again.")


def _xtuner_projector(folder: Path, spec: dict[str, Any]) -> tuple[projectors.MLPProjector, dict[str, torch.Tensor]]:
    """XTuner's ``nn.Sequential(Linear, act, Linear, ...)`` as the :class:`MLPProjector` that computes the same.

    Sequential index ``2 * i`` is ``linear_{i + 1}`` (the odd indices are parameterless
    activations). A projector saved without biases (``bias: false``) gets zero biases, which
    computes the same.

    Returns:
        The projector and the state dict to load into it.
    """
    depth, act = spec.get("depth", 2), spec.get("hidden_act", "gelu")  # XTuner's ProjectorConfig defaults
    if act != "gelu" or depth < 1:
        raise ConfigError(
            f"{folder}: an XTuner projector with hidden_act={act!r} and depth={depth} has no vltool equivalent; "
            "only GELU MLPs of depth 1 or more load."
        )
    projector = projectors.MLPProjector(spec["visual_hidden_size"], spec["llm_hidden_size"], depth)
    state = {}
    if not spec.get("bias", True):
        state = {name: torch.zeros_like(value) for name, value in projector.state_dict().items() if "bias" in name}
    for name, value in _projector_weights(folder).items():
        key = XTUNER_PROJECTOR_KEY.fullmatch(name)
        if key is None or int(key[1]) % 2:
            raise ConfigError(f"{folder}: unexpected weight {name} in an XTuner projector; convert it again.")
        state[f"linear_{int(key[1]) // 2 + 1}.{key[2]}"] = value
    return projector, state
