"""A length-grouped sampler that keeps image and text-only samples in separate batches."""

import math
from collections.abc import Iterator

import numpy as np
import torch
from mmengine.dist import get_dist_info
from torch.utils.data import Sampler

from vltool.data.dataset import VisionLanguageDataset


class LengthGroupedSampler(Sampler[int]):
    """Batches of similar length, never mixing image and text-only samples.

    Like LLaVA's modality-grouped sampler: each modality is shuffled, cut into mega-batches of
    ``mega_batch_factor`` global batches, and sorted by length inside each mega-batch, so
    batches waste little padding while the order stays random. Batches then come in random
    order. Under many processes each global batch is split between ranks.

    Args:
        dataset: the dataset (its ``lengths`` and ``has_image``).
        batch_size: per-process batch size.
        seed: shuffling seed; the order depends only on seed and epoch.
        mega_batch_factor: global batches per length-sorted group.
    """

    def __init__(
        self, dataset: VisionLanguageDataset, batch_size: int, seed: int | None = None, mega_batch_factor: int = 8
    ) -> None:
        self.rank, self.world_size = get_dist_info()
        self.lengths = np.asarray(dataset.lengths)  # memory-mapped: read, never copied into Python lists
        self.has_image = np.asarray(dataset.has_image)
        self.batch_size = batch_size
        self.seed = 0 if seed is None else seed
        self.mega_batch_factor = mega_batch_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by mmengine's loops so every epoch has a new order."""
        self.epoch = epoch

    def _global_batches(self) -> list[np.ndarray]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        global_batch = self.batch_size * self.world_size
        batches: list[np.ndarray] = []
        for modality in (True, False):
            indices = np.flatnonzero(self.has_image == modality)
            order = indices[torch.randperm(len(indices), generator=generator).numpy()]
            mega = global_batch * self.mega_batch_factor
            for start in range(0, len(order), mega):
                group = order[start : start + mega]
                # longest first; a stable sort keeps equal lengths in their shuffled order
                group = group[np.argsort(-self.lengths[group].astype(np.int64), kind="stable")]
                batches += [group[i : i + global_batch] for i in range(0, len(group), global_batch)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        for batch in self._global_batches():
            if len(batch) < global_batch:  # a short tail: repeat it so every rank gets a full batch
                batch = np.tile(batch, math.ceil(global_batch / len(batch)))[:global_batch]
            yield from batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        return self.batches_per_epoch(self.has_image, global_batch, self.mega_batch_factor) * self.batch_size

    @staticmethod
    def batches_per_epoch(has_image: np.ndarray, global_batch: int, mega_batch_factor: int = 8) -> int:
        """Global batches in one pass over the samples: each modality's tail makes a (padded) batch of its own.

        Args:
            has_image: ``[samples]`` bool, as the dataset's ``has_image``.
            global_batch: samples per iteration over all processes (per-process batch x processes).
            mega_batch_factor: as the sampler's.
        """
        mega = global_batch * mega_batch_factor
        batches = 0
        for count in (int(has_image.sum()), int((~has_image).sum())):
            full, rest = divmod(count, mega)
            batches += full * math.ceil(mega / global_batch) + math.ceil(rest / global_batch)
        return batches
