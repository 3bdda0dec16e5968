"""Causal attention inside each packed sample, for transformers' ``sdpa`` implementation.

Transformers runs a packed batch (position ids restarting, no attention mask) through SDPA with
a block-diagonal mask: correct, but every row still costs ``row_len^2`` score entries, most of
them masked, and a mask of that size. flash-attn's variable-length kernel avoids both, on GPUs
where it is installed. Elsewhere (CPUs, GPUs without flash-attn) this function does the same
job with PyTorch's own SDPA: it takes each sample's slice of the queries, keys and values and
runs causal attention on it alone (``is_causal=True``, no mask), so a sample of length ``n``
costs ``n^2 / 2``.

It is registered as transformers' ``sdpa`` attention and behaves exactly as transformers' own
unless the call carries :data:`SEGMENTS_KWARG` (only vltool's packed training batches do), so
every other use of SDPA in the process is unchanged.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

SEGMENTS_KWARG = "vltool_segments"
"""The keyword carrying ``[(row, start, end), ...]``: each sample's (and padding tail's) span."""


def segment_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention of a packed batch sample by sample; transformers' SDPA attention otherwise.

    Args:
        module: the attention layer (for ``num_key_value_groups``).
        query: ``[rows, heads, row_len, head_dim]``.
        key, value: ``[rows, kv_heads, row_len, head_dim]``.
        attention_mask: ignored for packed batches (the segments say who attends to whom).
        dropout: attention dropout probability.
        scaling: the softmax scale.
        kwargs: :data:`SEGMENTS_KWARG` for packed batches; the rest goes to transformers.

    Returns:
        ``([rows, row_len, heads, head_dim], None)``, as transformers' attention functions return.
    """
    segments = kwargs.pop(SEGMENTS_KWARG, None)
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    grouped = query.shape[1] != key.shape[1]
    rows = []
    for row in range(query.shape[0]):
        pieces = [
            F.scaled_dot_product_attention(
                query[row : row + 1, :, start:end],
                key[row : row + 1, :, start:end],
                value[row : row + 1, :, start:end],
                dropout_p=dropout,
                scale=scaling,
                is_causal=True,
                enable_gqa=grouped,
            )
            for segment_row, start, end in segments
            if segment_row == row
        ]
        rows.append(torch.cat(pieces, dim=2))  # the segments tile the row in order
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register("sdpa", segment_sdpa_attention)
