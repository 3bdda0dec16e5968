"""Inference-time quantisation: ``--bits 4|8`` as bitsandbytes settings and ``from_pretrained`` options.

Training's quantisation (QLoRA's ``model.llm_quantization``) lives in :mod:`vltool.model.quantization`;
this is the chat/eval/serve side, where the width comes from ``--bits`` or from the base an adapter
was trained on.
"""

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import BitsAndBytesConfig

from vltool.errors import ConfigError
from vltool.model.lora import float32_compute_without_cuda

DType = torch.dtype | str

QUANTIZATION_BITS = (4, 8)


def bits_quantization(bits: int | None, dtype: DType) -> dict[str, Any] | None:
    """``BitsAndBytesConfig`` arguments for ``bits`` (as XTuner's chat: NF4 with double quantisation)."""
    if bits is None:
        return None
    if bits not in QUANTIZATION_BITS:
        raise ConfigError(f"--bits {bits} is not supported; use 4 or 8, or leave it out for full precision.")
    if bits == 8:
        return {"load_in_8bit": True}
    compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16 if dtype == "auto" else getattr(torch, dtype)
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": compute,
    }


def _no_int8_cast_warning(record: logging.LogRecord) -> bool:
    # bitsandbytes logs this on every 8-bit matmul whose input is not float16 (each layer, each
    # token): the cast is how int8 matmuls work, and the lines would bury the chat's answer
    return "MatMul8bitLt: inputs will be cast" not in record.getMessage()


def load_options(
    quantization: dict[str, Any] | None, dtype: DType, device: str, skip_modules: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``from_pretrained`` arguments: ``dtype``, or bitsandbytes quantisation (float32 compute without CUDA).

    Quantised weights load straight onto ``device``, quantised as they arrive there, rather
    than being moved afterwards with their quantisation state.
    """
    if quantization is None:
        return {"dtype": dtype}
    if quantization.get("load_in_8bit"):
        # addFilter skips a filter already there, so loading again adds nothing
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_no_int8_cast_warning)
    if skip_modules:
        quantization = {**quantization, "llm_int8_skip_modules": list(skip_modules)}
    options = float32_compute_without_cuda({"quantization_config": quantization, "dtype": dtype})
    return {
        **options,
        "quantization_config": BitsAndBytesConfig(**options["quantization_config"]),
        "device_map": {"": device},
    }


def adapter_base_quantization(path: Path, entry: dict[str, Any], bits: int | None, dtype: DType) -> Any:
    """The saved quantisation of an adapter's base (the adapter was trained on it), checked against ``bits``."""
    saved = entry.get("quantization")
    if not saved:
        return bits_quantization(bits, dtype)
    saved_bits = 4 if saved.get("load_in_4bit") else 8
    if bits is not None and bits != saved_bits:
        raise ConfigError(
            f"{path}: the LLM adapter was trained on a {saved_bits}-bit base and loads on it; pass --bits {saved_bits} "
            "or leave --bits out."
        )
    return saved
