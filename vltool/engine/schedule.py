"""A run's length from its recipe: ``train_cfg.max_epochs`` becomes iterations once the dataset is built.

Recipes say "one epoch" (LLaVA trains each stage for one), not an iteration count worked out
by hand for one cluster size: 665k samples at 16 per GPU are 5,198 iterations on 8 GPUs,
10,396 on 4 and 2,599 on 16. The count is derived from the dataset's length, the per-device
batch and the number of processes, and logged; ``train_cfg.max_iters`` set explicitly wins.
An iteration is one micro-batch on every process, as mmengine counts it; with gradient
accumulation (``optim_wrapper.accumulative_counts``) the optimizer steps once every that many.
Packed batches (``pack_collate``) pack the same per-device number of samples into rows, so an
epoch is still one pass over the samples.
"""

import math
from typing import Any

import numpy as np
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.logging import print_log

from vltool.build import resolve_type
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.sampler import LengthGroupedSampler
from vltool.errors import ConfigError


def iterations_per_epoch(dataset: VisionLanguageDataset, loader_cfg: dict[str, Any], world_size: int) -> int:
    """Iterations in one pass over ``dataset`` with the dataloader settings ``loader_cfg``.

    :class:`LengthGroupedSampler` batches images and text-only samples apart, so each
    modality's last, short batch counts as one; other samplers split the samples evenly.
    """
    global_batch = loader_cfg["batch_size"] * world_size
    sampler = loader_cfg.get("sampler") or dict(type=LengthGroupedSampler)
    sampler_type = resolve_type(sampler["type"])
    if isinstance(sampler_type, type) and issubclass(sampler_type, LengthGroupedSampler):
        return sampler_type.batches_per_epoch(
            np.asarray(dataset.has_image), global_batch, sampler.get("mega_batch_factor", 8)
        )
    return math.ceil(len(dataset) / global_batch)


def resolve_train_length(cfg: Config, dataset: VisionLanguageDataset, world_size: int) -> dict[str, Any]:
    """``cfg.train_cfg`` with ``max_epochs`` turned into ``max_iters`` (an explicit ``max_iters`` wins); logged.

    Raises:
        ConfigError: neither is set, or a value is not positive.
    """
    train_cfg = dict(cfg.train_cfg)
    epochs = train_cfg.pop("max_epochs", None)
    accumulation = cfg.get("optim_wrapper", {}).get("accumulative_counts", 1)
    if train_cfg.get("max_iters") is not None:
        ignored = f" (max_epochs={epochs} not used)" if epochs is not None else ""
        _log(f"training for train_cfg.max_iters={train_cfg['max_iters']} iterations{ignored}.")
        return train_cfg
    if epochs is None or epochs <= 0:
        raise ConfigError("train_cfg needs max_epochs (e.g. 1) or max_iters, a positive number.")
    batch_size = cfg.train_dataloader.batch_size
    per_epoch = iterations_per_epoch(dataset, cfg.train_dataloader, world_size)
    train_cfg["max_iters"] = math.ceil(epochs * per_epoch)
    steps = f", {math.ceil(train_cfg['max_iters'] / accumulation)} optimizer steps" if accumulation > 1 else ""
    _log(
        f"max_epochs={epochs}: {len(dataset)} samples at {batch_size} per device x {world_size} processes = "
        f"{per_epoch} iterations per epoch; training for {train_cfg['max_iters']} iterations{steps} "
        "(set train_cfg.max_iters to override)."
    )
    return train_cfg


def _log(message: str) -> None:
    """Log once, from rank 0: the run's logger does not exist yet, and every process would print it."""
    if is_main_process():
        print_log(message, logger="current")
