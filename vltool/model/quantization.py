"""QLoRA's one switch: ``model.llm_quantization`` loads the LLM in 4 or 8 bits (bitsandbytes).

A LoRA recipe becomes a QLoRA recipe with this one setting; the builder merges it into the
LLM's loading options, so no config splices ``quantization_config`` into the ``llm`` dict by
hand (a copy that forgot to would train LoRA on an unquantised LLM without a word).
"""

from collections.abc import Mapping
from typing import Any

import torch
from transformers import BitsAndBytesConfig

from vltool.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # QLoRA's choice: NF4 with double quantisation, bf16 compute
    "nf4": dict(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    ),
    "int8": dict(load_in_8bit=True),  # LLM.int8
}
"""Named settings for ``model.llm_quantization``: BitsAndBytesConfig's keyword arguments."""


def quantization_settings(model_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """BitsAndBytesConfig keyword arguments of ``model_cfg['llm_quantization']``, or None when unquantised.

    ``llm_quantization`` is a preset name (:data:`PRESETS`) or a dict of BitsAndBytesConfig's
    keyword arguments (``type=BitsAndBytesConfig`` allowed, as configs write it).

    Raises:
        ConfigError: an unknown preset, settings that load neither 4 nor 8 bits, quantisation
            written into ``model.llm`` directly, or a quantised LLM asked to train whole.
    """
    llm = model_cfg.get("llm") or {}
    if isinstance(llm, Mapping) and llm.get("quantization_config") is not None:
        raise ConfigError(
            "model.llm.quantization_config: set model.llm_quantization instead (nf4, int8 or a dict of "
            "BitsAndBytesConfig settings); vltool merges it into the LLM's loading options."
        )
    value = model_cfg.get("llm_quantization")
    if value is None:
        return None
    if isinstance(value, str):
        if value not in PRESETS:
            raise ConfigError(
                f"model.llm_quantization='{value}' is not one of {', '.join(PRESETS)} (or a dict of "
                "BitsAndBytesConfig settings)."
            )
        settings = dict(PRESETS[value])
    elif isinstance(value, Mapping):
        settings = {key: item for key, item in value.items() if key != "type"}
    else:
        raise ConfigError(f"model.llm_quantization must be a preset name or a dict, got {value!r}.")
    if not (settings.get("load_in_4bit") or settings.get("load_in_8bit")):
        raise ConfigError("model.llm_quantization sets neither load_in_4bit nor load_in_8bit.")
    if not model_cfg.get("freeze_llm", False) and model_cfg.get("llm_lora") is None:
        raise ConfigError(
            "model.llm_quantization needs model.llm_lora or model.freeze_llm=True: a 4/8-bit LLM cannot "
            "train its own weights."
        )
    return settings


def quantized_llm_cfg(llm_cfg: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The LLM's config dict with ``quantization_config`` and a bf16 ``dtype`` for its unquantised weights."""
    return {
        **llm_cfg,
        "quantization_config": dict(type=BitsAndBytesConfig, **settings),
        "dtype": llm_cfg.get("dtype", torch.bfloat16),
    }
