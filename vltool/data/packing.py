"""Packing: several samples, images included, share one row, and no sample attends to another.

A batch of samples is laid out in rows of at most ``pack_length`` tokens. Each sample keeps its
own position ids (0, 1, 2, ... from its first token), which is how transformers tells the
samples of a row apart:

- with ``attn_implementation="flash_attention_2"`` the model flattens the rows into one sequence
  and flash-attn's variable-length kernel attends inside each sample, given the sample
  boundaries computed here (no per-layer device sync);
- with ``sdpa`` vltool's segment attention (:mod:`vltool.model.segment_attention`) runs
  causal attention sample by sample, so no work goes to pairs of tokens that may not attend;
- with ``eager`` transformers builds a block-diagonal causal mask from the position ids (the
  attention mask is left out on purpose: its absence is what turns that on).

A row's unused tail is padding: its own segment, never attended to by a sample, never learned.
The first token of every sample is never a target, as it would not be unpacked either (its
predecessor belongs to another sample). So a packed batch gives the same loss and gradients as
the padded batch of the same samples; only the work spent on padding goes.
"""

from typing import Any

import torch

from vltool.constants import IGNORE_INDEX
from vltool.data.collate import supervised_positions


def assign_rows(lengths: list[int], pack_length: int) -> list[list[int]]:
    """Which samples go in which row: the fewest rows of at most ``pack_length`` tokens, evenly filled.

    Samples are placed longest first, each into the emptiest row it fits in (a new row when none
    has room), so rows end up about equally long and the padding to the longest row is small.
    A sample longer than ``pack_length`` gets a row of its own.

    Args:
        lengths: token count of each sample.
        pack_length: the row capacity.

    Returns:
        Sample indices per row, in the samples' original order within and across rows.
    """
    rows: list[list[int]] = [[] for _ in range(max(1, -(-sum(lengths) // pack_length)))]
    loads = [0] * len(rows)
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fitting = [row for row in range(len(rows)) if loads[row] + lengths[index] <= pack_length]
        if not fitting:
            rows.append([])
            loads.append(0)
            fitting = [len(rows) - 1]
        row = min(fitting, key=lambda r: loads[r])
        rows[row].append(index)
        loads[row] += lengths[index]
    return sorted((sorted(row) for row in rows if row), key=lambda row: row[0])


def pack_collate(
    batch: list[dict[str, Any]], pad_token_id: int, pack_length: int | None = None
) -> dict[str, torch.Tensor | list[tuple[int, int, int]] | None]:
    """Pack a list of dataset items into as few rows as fit ``pack_length`` tokens each.

    Args:
        batch: items from :class:`~vltool.data.dataset.VisionLanguageDataset`: ``input_ids`` and
            ``labels`` ``[seq_len]``, ``pixel_values`` ``[n_img, 3, H, W]`` or None.
        pad_token_id: id written into padding positions.
        pack_length: row capacity in tokens; None (the default) puts the whole batch in one row,
            with no padding at all. Only ``eager`` attention wants shorter rows: it materialises
            a ``row_len^2`` block-diagonal mask per row (flash and vltool's sdpa attention build none).

    Returns:
        ``input_ids``, ``labels``, ``position_ids``: ``[rows, row_len]``; ``attention_mask``: None;
        ``pixel_values``: ``[total_images, 3, H, W]`` in the order the samples are laid out, or
        None; ``segments``: ``(row, start, end)`` of every sample and padding tail, row by row,
        as plain integers (they stay on the host); ``supervised_index``: ``[n_supervised]``
        flattened positions whose next token is learned.
    """
    lengths = [item["input_ids"].numel() for item in batch]
    rows = assign_rows(lengths, pack_length or sum(lengths))
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segments, images = [], []
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            item, end = batch[index], start + lengths[index]
            input_ids[row, start:end] = item["input_ids"]
            labels[row, start:end] = item["labels"]
            labels[row, start] = IGNORE_INDEX  # its predecessor is another sample's token
            position_ids[row, start:end] = torch.arange(lengths[index])
            segments.append((row, start, end))
            if item["pixel_values"] is not None:
                images.append(item["pixel_values"])
            start = end
        if start < width:  # the padding tail: a segment of its own
            position_ids[row, start:] = torch.arange(width - start)
            segments.append((row, start, width))
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": None,
        "position_ids": position_ids,
        "pixel_values": torch.cat(images) if images else None,
        "segments": segments,
        "supervised_index": supervised_positions(labels),
    }
