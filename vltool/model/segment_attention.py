"""Attention that keeps the samples of a packed batch apart, and the choice of it for packed training.

Transformers runs a packed batch (position ids restarting, no attention mask) through SDPA with
a block-diagonal mask: correct, but every row still costs ``row_len^2`` score entries, most of
them masked, and a mask of that size. flash-attn's variable-length kernel avoids both, on GPUs
where it is installed. Elsewhere (CPUs, GPUs without flash-attn) vltool's segment attention does
the same job with PyTorch's own SDPA: it takes each sample's slice of the queries, keys and
values and runs causal attention on it alone (``is_causal=True``, no mask), so a sample of
length ``n`` costs ``n^2 / 2``.

It is registered with transformers under its own name, :data:`SEGMENT_ATTENTION`, beside (not
instead of) ``sdpa``, which stays transformers' function for every model in the process. An LLM
uses it only once :func:`select_packed_attention` switched it over; packed training does that
explicitly (:meth:`vltool.model.vlm.VisionLanguageModel.use_packed_attention`). Calls without
:data:`SEGMENTS_KWARG` (generation, padded batches) run transformers' SDPA with transformers' SDPA
masks, padding included, so a switched model still generates as before.

Which implementations keep packed samples apart (:func:`packed_attention_path`):

- :data:`SEGMENT_ATTENTION`: the segments say who attends to whom;
- transformers' flash-attention function (``flash_attention_2`` and the other flash versions):
  the variable-length kernel, given the sample boundaries;
- ``eager``: transformers builds a block-diagonal causal mask from the restarting position ids
  when the call has no attention mask and no cache.

Anything else is refused for packed batches: plain ``sdpa`` would be handed vltool's all-ones
mask (or none) and attend across samples, and another registered function gets no mask from
transformers unless it registered one.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.flash_attention import flash_attention_forward
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from vltool.errors import ConfigError

SEGMENT_ATTENTION = "vltool_segment_sdpa"
"""The name vltool's segment attention is registered under (``attn_implementation``)."""

SEGMENTS_KWARG = "vltool_segments"
"""The keyword carrying ``[(row, start, end), ...]``: each sample's (and padding tail's) span."""

PACKED_PATHS = ("segments", "flash", "mask")
"""How :func:`packed_attention_path` says a packed batch is kept apart (see the module doc)."""


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


# Its own name, so no other model changes. The mask function is SDPA's: without it transformers
# would build no mask at all for the name, and a padded batch or a left-padded prompt would
# attend to its padding. Packed calls pass an all-ones mask, for which SDPA's builds none.
AttentionInterface.register(SEGMENT_ATTENTION, segment_sdpa_attention)
AttentionMaskInterface.register(SEGMENT_ATTENTION, sdpa_mask)


def packed_attention_path(implementation: str | None) -> str:
    """How a packed batch stays inside its samples with LLM attention ``implementation``.

    Returns:
        ``segments`` (:data:`SEGMENT_ATTENTION`), ``flash`` (transformers' flash-attention
        function: one flat sequence and the sample boundaries) or ``mask`` (``eager``:
        transformers' block-diagonal mask from the position ids).

    Raises:
        ConfigError: any other implementation, which would attend across samples or which vltool
            cannot vouch for.
    """
    if implementation == SEGMENT_ATTENTION:
        return "segments"
    if implementation == "eager":
        return "mask"
    if implementation is not None and ALL_ATTENTION_FUNCTIONS.get(implementation) is flash_attention_forward:
        return "flash"
    raise ConfigError(
        f"a packed batch cannot use the LLM's attention implementation {implementation!r}: it would attend across "
        f"samples; select '{SEGMENT_ATTENTION}' (VisionLanguageModel.use_packed_attention(), which the trainer calls "
        "for pack_collate), 'flash_attention_2' or 'eager', or collate with pad_collate."
    )


def select_packed_attention(llm: PreTrainedModel) -> str:
    """Switch ``llm`` to attention that keeps packed samples apart, and return its name.

    ``sdpa`` becomes :data:`SEGMENT_ATTENTION` (through transformers' ``set_attn_implementation``,
    on this model only); flash attention, ``eager`` and segment attention stay as they are.

    Raises:
        ConfigError: an implementation that packed batches cannot use (:func:`packed_attention_path`),
            or a model whose attention cannot be switched.
    """
    current = llm.config._attn_implementation
    if current == "sdpa":
        llm.set_attn_implementation(SEGMENT_ATTENTION)
        if llm.config._attn_implementation != SEGMENT_ATTENTION:  # transformers only warns for such models
            raise ConfigError(
                f"{type(llm).__name__} cannot switch its attention to '{SEGMENT_ATTENTION}' for packed batches; set "
                "model.llm.attn_implementation='eager' (or 'flash_attention_2' on a GPU), or collate with pad_collate."
            )
        return SEGMENT_ATTENTION
    try:
        packed_attention_path(current)
    except ConfigError:
        raise ConfigError(
            f"packed batches (pack_collate) cannot use model.llm.attn_implementation={current!r}: it would attend "
            "across samples; use 'sdpa', 'flash_attention_2' or 'eager', or collate with pad_collate."
        ) from None
    return current
