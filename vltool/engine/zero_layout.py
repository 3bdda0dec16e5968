"""Where each weight of a DeepSpeed ZeRO checkpoint directory lies, as :class:`LazyTensor` pieces of its files.

The rules are DeepSpeed 0.19's ``zero_to_fp32`` (``_get_fp32_state_dict_from_zero_checkpoint``),
without its reads: the fp32 master weights are in the ``*_optim_states.pt`` files, one per
data-parallel rank, as flat partitions per parameter group.

- ZeRO-1/2: a group's flat vector is the ranks' ``single_partition_of_fp32_groups[group]``
  one after another; its parameters follow each other in ``param_shapes[group]``'s order.
- ZeRO-3: every parameter is cut into ``ceil(numel / world)`` elements per rank (the last rank's
  padded); rank r's ``fp32_flat_groups``, joined, hold its piece of each parameter in order.

Buffers and frozen parameters (when the run saved them) are in the ``*_model_states.pt`` files,
tied parameters are listed in ``shared_params``. Nothing is read but the pickles' index: the
tensors stay pages of the mapped files until a :class:`LazyTensor` copies them.
"""

import math
from pathlib import Path
from typing import Any

import torch
from deepspeed.checkpoint.constants import (
    BUFFER_NAMES,
    FP32_FLAT_GROUPS,
    FROZEN_PARAM_FRAGMENTS,
    FROZEN_PARAM_SHAPES,
    OPTIMIZER_STATE_DICT,
    PARAM_SHAPES,
    PARTITION_COUNT,
    SINGLE_PARTITION_OF_FP32_GROUPS,
    ZERO_STAGE,
)
from deepspeed.utils.zero_to_fp32 import get_model_state_files, get_optim_files

from vltool.engine import safe_load
from vltool.engine.lazy_weights import LazyTensor, lazy, open_mapped
from vltool.errors import ConfigError

SHARED_PARAMS = "shared_params"


def zero_weights(directory: Path) -> dict[str, LazyTensor]:
    """Buffers, frozen and trainable parameters (fp32 masters) and tied aliases of a ZeRO checkpoint directory.

    Raises:
        ConfigError: not a DeepSpeed checkpoint directory, files missing or inconsistent, or a
            file that holds something loading would have to run.
    """
    safe_load.check_directory(directory)  # names the file that holds code, before any is opened
    try:
        model_files, optim_files = get_model_state_files(str(directory)), get_optim_files(str(directory))
    except FileNotFoundError as err:
        raise ConfigError(f"{directory}: not a DeepSpeed checkpoint directory ({err}).") from None
    allowed = safe_load.deepspeed_globals()
    opened = [open_mapped(Path(file), allowed, directory) for file in [*model_files, *optim_files]]
    mapped = all(is_mapped for _, is_mapped in opened)  # DeepSpeed writes zip files; a legacy one is read whole
    models = [state for state, _ in opened[: len(model_files)]]
    optims = [
        state.get(OPTIMIZER_STATE_DICT) if isinstance(state, dict) else None for state, _ in opened[len(model_files) :]
    ]
    if not all(isinstance(optim, dict) and ZERO_STAGE in optim for optim in optims) or not all(
        isinstance(model, dict) and PARAM_SHAPES in model for model in models
    ):
        raise ConfigError(f"{directory}: not a DeepSpeed ZeRO checkpoint directory (no ZeRO stage or parameter shapes)")
    stage, world = optims[0][ZERO_STAGE], optims[0].get(PARTITION_COUNT)
    world = max(world) if isinstance(world, list) else world  # per group under ZeRO-2 (expert groups differ)
    if world != len(optims):
        raise ConfigError(
            f"{directory}: {len(optims)} *_optim_states.pt files for a world of {world}; "
            "was the checkpoint cut short or overwritten?"
        )
    weights = {name: lazy(models[0]["module"][name], mapped) for name in models[0].get(BUFFER_NAMES) or []}
    if int(stage) <= 2:
        weights.update(_frozen_whole(models[0], mapped))
        partitions = [optim[SINGLE_PARTITION_OF_FP32_GROUPS] for optim in optims]
        weights.update(_zero2_trainable(models[0][PARAM_SHAPES], partitions, directory, mapped))
    else:
        weights.update(_frozen_partitioned(models, mapped))
        partitions = [optim[FP32_FLAT_GROUPS] for optim in optims]
        weights.update(_zero3_trainable(models[0][PARAM_SHAPES], partitions, directory, mapped))
    for alias, name in (models[0].get(SHARED_PARAMS) or {}).items():
        if name in weights:
            weights[alias] = weights[name]
    return weights


def slices(pieces: list[torch.Tensor], start: int, numel: int) -> list[torch.Tensor]:
    """The parts of ``pieces``, joined end to end, that hold elements ``start`` to ``start + numel``."""
    found, position = [], 0
    for piece in pieces:
        low, high = max(start, position), min(start + numel, position + piece.numel())
        if low < high:
            found.append(piece[low - position : high - position])
        position += piece.numel()
    return found


def _zero2_trainable(
    param_shapes: list[dict[str, Any]], partitions: list[list[torch.Tensor]], directory: Path, mapped: bool
) -> dict[str, LazyTensor]:
    """ZeRO-1/2: each group's parameters, in order, in the ranks' partitions of that group joined."""
    weights = {}
    for group, shapes in enumerate(param_shapes):
        flat = [rank_groups[group] for rank_groups in partitions]
        offset, available = 0, sum(piece.numel() for piece in flat)
        for name, shape in shapes.items():
            numel = math.prod(shape)
            if offset + numel > available:
                raise _inconsistent(directory, name, offset + numel, available)
            weights[name] = LazyTensor(torch.Size(shape), flat[0].dtype, slices(flat, offset, numel), mapped)
            offset += numel
    return weights


def _zero3_trainable(
    param_shapes: list[dict[str, Any]], partitions: list[list[torch.Tensor]], directory: Path, mapped: bool
) -> dict[str, LazyTensor]:
    """ZeRO-3: each parameter's ``ceil(numel / world)`` elements from every rank's joined groups, in rank order."""
    world, offset = len(partitions), 0
    available = sum(piece.numel() for piece in partitions[0])
    weights = {}
    for name, shape in ((name, shape) for shapes in param_shapes for name, shape in shapes.items()):
        numel = math.prod(shape)
        per_rank = math.ceil(numel / world)
        if offset + per_rank > available:
            raise _inconsistent(directory, name, (offset + per_rank) * world, available * world)
        pieces = [piece for rank_groups in partitions for piece in slices(rank_groups, offset, per_rank)]
        weights[name] = LazyTensor(torch.Size(shape), partitions[0][0].dtype, pieces, mapped)
        offset += per_rank
    return weights


def _frozen_whole(model: dict[str, Any], mapped: bool) -> dict[str, LazyTensor]:
    """ZeRO-1/2 frozen parameters (saved only without ``exclude_frozen_parameters``): whole, in the model file."""
    fragments = model.get(FROZEN_PARAM_FRAGMENTS) or {}
    return {name: lazy(fragments[name], mapped) for name in model.get(FROZEN_PARAM_SHAPES) or {}}


def _frozen_partitioned(models: list[dict[str, Any]], mapped: bool) -> dict[str, LazyTensor]:
    """ZeRO-3 frozen parameters: each rank's model file holds its padded piece."""
    weights = {}
    for name, shape in (models[0].get(FROZEN_PARAM_SHAPES) or {}).items():
        fragments = [model[FROZEN_PARAM_FRAGMENTS][name] for model in models]
        pieces = [fragment.reshape(-1) for fragment in fragments]  # saved whole: contiguous, views
        contiguous = all(fragment.is_contiguous() for fragment in fragments)
        weights[name] = LazyTensor(torch.Size(shape), pieces[0].dtype, pieces, mapped and contiguous)
    return weights


def _inconsistent(directory: Path, name: str, needed: int, available: int) -> ConfigError:
    return ConfigError(
        f"{directory}: the saved fp32 partitions hold {available} elements but {name} needs the first {needed}; "
        "the checkpoint is damaged or its files come from different runs."
    )
