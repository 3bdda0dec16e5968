"""Training precision: which dtype each parameter trains in, and the optimizer wrapper that goes with it.

transformers 5 loads a checkpoint in its own dtype (Qwen2.5's is bf16). Stepping AdamW on bf16
weights loses every update below bf16's resolution: at lr 2e-5 on weights of size ~1e-2 most
updates round away and the weight does not move. So the weights that train are kept in fp32 and
the matrix multiplies run in the chosen precision under autocast (AMP), the arrangement
DeepSpeed reaches with its own fp32 master copy.
"""

from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from torch import nn

from vltool.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    """Raises ConfigError for a ``precision`` that is not one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}.")


def uses_autocast(precision: str) -> bool:
    """Whether a run without DeepSpeed computes under autocast: a half precision on a CUDA GPU.

    On a CPU, bf16 compute is about 40x slower than fp32 and mmengine's ``AmpOptimWrapper``
    refuses it, so the run trains in fp32 instead.
    """
    check_precision(precision)
    return precision != "fp32" and torch.cuda.is_available()


def optim_wrapper_cfg(cfg: Config) -> dict[str, Any]:
    """fp32 ``OptimWrapper`` on CPU; autocast ``AmpOptimWrapper`` in the config's ``precision`` on a GPU."""
    wrapper = dict(cfg.optim_wrapper)
    precision = cfg.get("precision", "fp32")
    if uses_autocast(precision):
        wrapper.update(type=AmpOptimWrapper, dtype=PRECISIONS[precision])
        return wrapper
    if precision != "fp32":
        print_log(f"precision={precision} needs a GPU; training in fp32 on the CPU.", logger="current")
    wrapper.setdefault("type", OptimWrapper)
    return wrapper


def cast_for_training(model: nn.Module, keep_frozen_dtype: bool) -> None:
    """Make every trainable floating-point parameter fp32, in place; frozen ones too unless told otherwise.

    Args:
        model: the model as built (parts may have loaded in bf16).
        keep_frozen_dtype: under autocast, frozen weights may stay in their loaded dtype (a frozen
            7B LLM in bf16 saves 15 GB), since autocast casts every matrix multiply's inputs.
            Without autocast (fp32 training) a bf16 weight would meet fp32 activations, so every
            floating-point parameter and buffer becomes fp32.

    Quantised weights (4-bit, 8-bit storage) are not floating point and stay as they are, and so
    do ZeRO-3 partitions, whose dtype DeepSpeed manages.
    """
    for param in model.parameters():
        if hasattr(param, "ds_id") or not param.is_floating_point() or param.dtype == torch.float32:
            continue
        if param.requires_grad or not keep_frozen_dtype:
            param.data = param.data.float()
    if keep_frozen_dtype:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point() and buffer.dtype != torch.float32:
            buffer.data = buffer.data.float()


def prepare_for_training(model: nn.Module, precision: str, deepspeed_half: bool = False) -> None:
    """Give ``model``'s parameters the dtypes a run in ``precision`` trains them in.

    Args:
        model: the built model.
        precision: the config's ``precision``.
        deepspeed_half: DeepSpeed runs with bf16 or fp16 enabled: DeepSpeed casts the model to
            that dtype itself and steps an fp32 master copy, so nothing changes here.
    """
    if deepspeed_half:
        return
    cast_for_training(model, keep_frozen_dtype=uses_autocast(precision))
