"""Batching by padding: samples right-padded to the longest in the batch, images concatenated.

:mod:`vltool.data.packing` is the alternative that lays several samples in one row instead.
"""

from typing import Any

import torch

from vltool.constants import IGNORE_INDEX


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flattened positions whose next token is learned: where the loss is taken.

    Computed on the host when the batch is made, so the model can gather those positions
    without a boolean mask, whose size the GPU would have to report back (a device sync per step).

    Args:
        labels: ``[batch, seq_len]``, ``IGNORE_INDEX`` where nothing is learned.

    Returns:
        ``[n_supervised]`` indices into ``labels.flatten()``; position ``p`` predicts token ``p + 1``.
    """
    learned = torch.zeros_like(labels, dtype=torch.bool)
    learned[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return learned.flatten().nonzero().squeeze(1)


def pad_collate(batch: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor | None]:
    """Right-pad a list of dataset items into one batch.

    Args:
        batch: items from :class:`~vltool.data.dataset.VisionLanguageDataset`, each with
            ``input_ids`` and ``labels`` ``[seq_len]`` and ``pixel_values`` ``[n_img, 3, H, W]``
            or None.
        pad_token_id: id written into padding positions (masked out by ``attention_mask``).

    Returns:
        ``input_ids``, ``labels``, ``attention_mask``: ``[batch, max_len]``; ``pixel_values``:
        ``[total_images, 3, H, W]`` in sample order, or None for a text-only batch;
        ``supervised_index``: see :func:`supervised_positions`.
    """
    max_len = max(item["input_ids"].numel() for item in batch)
    input_ids = torch.full((len(batch), max_len), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), max_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), max_len), dtype=torch.long)
    for row, item in enumerate(batch):
        length = item["input_ids"].numel()
        input_ids[row, :length] = item["input_ids"]
        labels[row, :length] = item["labels"]
        attention_mask[row, :length] = 1
    images = [item["pixel_values"] for item in batch if item["pixel_values"] is not None]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "pixel_values": torch.cat(images) if images else None,
        "supervised_index": supervised_positions(labels),
    }
