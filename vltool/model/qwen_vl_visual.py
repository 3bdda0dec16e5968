"""Qwen-VL's visual encoder: a ViT and a 256-query attention-pool resampler, as in Qwen-VL-Chat's ``visual.py``.

transformers has no class for it, so it is written here, module for module and name for name
with the original (a checkpoint's ``transformer.visual.*`` tensors load without renaming), and
tested against the original's output (``tests/assets/qwen-vl-visual``, within 1e-5 in fp32).
Two things the original does that are easy to get wrong:

- the fused ``in_proj`` output is laid out per head as ``(heads, 3, head_dim)``, not
  ``(3, heads, head_dim)`` as in ``nn.MultiheadAttention``; only that split reproduces it;
- the stored position tables (the ViT's ``positional_embedding`` and the resampler's
  ``pos_embed``) are for a 16x16 grid and are bicubic-resized, in fp32, to the 32x32 patch grid.

One deliberate difference: the original's ``assert query is key`` is gone. It fails whenever
something sits between the block and the attention (ZeRO-3 hooks, LoRA, int4 wrappers; Qwen-VL
issues #91, #98, #220, #413, #427); the attention here takes one input, so there is nothing to
assert.

Weights are loaded by :func:`vltool.model.qwen_vl_weights.load_qwen_vl_visual`.
"""

import math
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LAYER_NORM_EPS = 1e-6
"""Every LayerNorm of the original (ViT, resampler, ``ln_post``)."""

RESAMPLER_HEAD_DIM = 128
"""The resampler has ``output_dim // 128`` heads (32 at Qwen-VL-Chat's 4096)."""


@dataclass(frozen=True)
class QwenVLVisualConfig:
    """The ``visual`` block of a Qwen-VL(-Chat) ``config.json`` (Qwen-VL-Chat's values as defaults).

    Attributes:
        image_size: input resolution (square).
        patch_size: ViT patch size; ``image_size // patch_size`` patches per side.
        width: ViT hidden size.
        layers: ViT blocks.
        heads: ViT attention heads.
        mlp_ratio: MLP width over ``width``; the MLP has ``int(width * mlp_ratio)`` channels.
        output_dim: resampler width, the width of each output token.
        n_queries: output tokens per image (a square number).
    """

    image_size: int = 448
    patch_size: int = 14
    width: int = 1664
    layers: int = 48
    heads: int = 16
    mlp_ratio: float = 4.9231
    output_dim: int = 4096
    n_queries: int = 256

    @classmethod
    def from_dict(cls, block: dict[str, Any]) -> "QwenVLVisualConfig":
        """The known keys of a ``visual`` block; others (``image_start_id``) are not the encoder's."""
        names = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in block.items() if key in names})

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


def resize_positions(table: torch.Tensor, num_positions: int) -> torch.Tensor:
    """A square position table bicubic-resized to ``num_positions`` (a square), as the original's ``get_abs_pos``.

    The resize runs in fp32 (``align_corners=False``) and the result is cast back to the table's
    dtype; a table already of the right size is returned as it is.

    Args:
        table: ``[side * side, dim]``.
        num_positions: ``new_side * new_side``.

    Returns:
        ``[num_positions, dim]``.
    """
    side, new_side = math.isqrt(table.shape[0]), math.isqrt(num_positions)
    if side == new_side:
        return table
    grid = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # [1, dim, side, side]
    resized = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(0, 2).to(table.dtype)  # [new_side * new_side, dim]


class VisualAttention(nn.Module):
    """Self-attention with a fused ``in_proj`` whose output is ``(heads, 3, head_dim)`` per token."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[batch, seq, width]`` -> ``[batch, seq, width]``."""
        batch, seq, width = hidden.shape
        head_dim = width // self.heads
        fused = self.in_proj(hidden).view(batch, seq, self.heads, 3 * head_dim)
        # each head's slice holds its own query, key and value, one after the other
        query, key, value = (part.transpose(1, 2) for part in fused.split(head_dim, dim=-1))  # [b, heads, seq, hd]
        attended = F.scaled_dot_product_attention(query, key, value)  # scale 1/sqrt(head_dim)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, seq, width))


class VisualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` with an exact-GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = VisualAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, mlp_width), gelu=nn.GELU(), c_proj=nn.Linear(mlp_width, width))
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[batch, seq, width]`` -> ``[batch, seq, width]``."""
        hidden = hidden + self.attn(self.ln_1(hidden))
        return hidden + self.mlp(self.ln_2(hidden))


class VisualTransformer(nn.Module):
    """The ViT's blocks (``resblocks``), optionally recomputed in the backward pass."""

    def __init__(self, config: QwenVLVisualConfig) -> None:
        super().__init__()
        mlp_width = int(config.width * config.mlp_ratio)
        self.resblocks = nn.ModuleList(
            VisualAttentionBlock(config.width, config.heads, mlp_width) for _ in range(config.layers)
        )
        self.gradient_checkpointing = False

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[batch, seq, width]`` -> ``[batch, seq, width]``; no LayerNorm after the last block."""
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.resblocks:
            hidden = checkpoint(block, hidden, use_reentrant=False) if recompute else block(hidden)
        return hidden


class PoolAttention(nn.Module):
    """``nn.MultiheadAttention``'s computation and parameter names, with ``out_proj`` called as a module.

    ``nn.MultiheadAttention`` reads ``out_proj.weight`` directly instead of calling ``out_proj``,
    so a LoRA adapter that PEFT puts on it (``all-linear`` does) would be silently skipped.
    The names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) are the checkpoint's, and the
    fused projection is split as ``nn.MultiheadAttention`` splits it: ``(3, heads, head_dim)``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``query`` ``[batch, n_q, dim]`` attends to ``key`` and ``value`` ``[batch, n_kv, dim]``.

        Returns:
            ``[batch, n_q, dim]``.
        """
        weights, biases = self.in_proj_weight.chunk(3), self.in_proj_bias.chunk(3)
        batch, dim = query.shape[0], query.shape[-1]
        query, key, value = (
            F.linear(x, weight, bias).view(batch, -1, self.heads, dim // self.heads).transpose(1, 2)
            for x, weight, bias in zip((query, key, value), weights, biases, strict=True)
        )  # each [batch, heads, tokens, head_dim]
        attended = F.scaled_dot_product_attention(query, key, value)  # [batch, heads, n_q, head_dim]
        return self.out_proj(attended.transpose(1, 2).reshape(batch, -1, dim))


class Resampler(nn.Module):
    """Qwen-VL's ``attn_pool``: ``n_queries`` learned queries cross-attend to the ViT's patch features.

    The stored 2-D sin-cos table ``pos_embed`` (``[n_queries, output_dim]``, for the query grid)
    is added to the queries as it is and, bicubic-resized to the patch grid, to the keys; the
    values carry no positions. It never trains, so it is a buffer (under the checkpoint's name).
    """

    def __init__(self, config: QwenVLVisualConfig) -> None:
        super().__init__()
        dim = config.output_dim
        self.register_buffer("pos_embed", torch.zeros(config.n_queries, dim))
        self.query = nn.Parameter(torch.zeros(config.n_queries, dim))
        # the original projects only when the widths differ (they do in every Qwen-VL checkpoint)
        self.kv_proj = nn.Linear(config.width, dim, bias=False) if config.width != dim else nn.Identity()
        self.attn = PoolAttention(dim, dim // RESAMPLER_HEAD_DIM)
        self.ln_q = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ln_kv = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``[batch, patches, width]`` -> ``[batch, n_queries, output_dim]``."""
        keys = self.ln_kv(self.kv_proj(patches))  # [batch, patches, dim]
        key_pos = resize_positions(self.pos_embed, patches.shape[1])  # [patches, dim]
        queries = self.ln_q(self.query) + self.pos_embed  # [n_queries, dim]
        queries = queries.unsqueeze(0).expand(patches.shape[0], -1, -1)  # [batch, n_queries, dim]
        return self.attn(queries, keys + key_pos, keys)


class QwenVLVisionTransformer(nn.Module):
    """The whole visual tower: patches -> ViT -> resampler -> ``ln_post`` -> ``@ proj``.

    Parameter names are the checkpoint's without the ``transformer.visual.`` prefix. Build it
    with :func:`vltool.model.qwen_vl_weights.load_qwen_vl_visual`; constructed directly its
    weights are placeholders.

    Args:
        config: the checkpoint's ``visual`` block.
    """

    def __init__(self, config: QwenVLVisualConfig) -> None:
        super().__init__()
        # not ``config``: PEFT reads a wrapped model's ``config`` as a transformers config
        self.visual_config = config
        width = config.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        # stored for a 16x16 grid whatever the image size; resized to the patch grid in forward
        self.positional_embedding = nn.Parameter(torch.randn(256, width) * width**-0.5)
        self.ln_pre = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.transformer = VisualTransformer(config)
        self.attn_pool = Resampler(config)
        self.ln_post = nn.LayerNorm(config.output_dim, eps=LAYER_NORM_EPS)
        self.proj = nn.Parameter(torch.randn(config.output_dim, config.output_dim) * config.output_dim**-0.5)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute each ViT block in the backward pass (transformers' method name, for vltool's builder).

        Args:
            gradient_checkpointing_kwargs: accepted for transformers' signature; blocks always use
                the non-reentrant variant, which needs no input that requires grad.
        """
        self.transformer.gradient_checkpointing = True

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            pixel_values: ``[batch, 3, H, W]``, square, normalised with CLIP's mean and std.

        Returns:
            ``[batch, n_queries, output_dim]``.
        """
        patches = self.conv1(pixel_values.to(self.conv1.weight.dtype))  # [batch, width, grid, grid]
        patches = patches.flatten(2).transpose(1, 2)  # [batch, grid * grid, width]; no CLS token
        hidden = self.ln_pre(patches + resize_positions(self.positional_embedding, patches.shape[1]))
        hidden = self.transformer(hidden)  # [batch, grid * grid, width]
        return self.ln_post(self.attn_pool(hidden)) @ self.proj  # [batch, n_queries, output_dim]


class QwenVLVisualEncoder(nn.Module):
    """Qwen-VL's visual tower behind vltool's vision-encoder interface.

    Its "patches" are the resampler's output tokens: ``num_patches`` is ``n_queries`` (256) and
    ``hidden_size`` is ``output_dim`` (4096), so a projector after it (an MLP for Zero-Qwen-VL)
    sees ``[n, 256, 4096]``. ``model`` is what LoRA wraps (``vision_encoder_lora``).

    Args:
        model: the loaded tower (:func:`vltool.model.qwen_vl_weights.load_qwen_vl_visual`).
    """

    def __init__(self, model: QwenVLVisionTransformer) -> None:
        super().__init__()
        self.model = model
        # read once: ``model`` may later be wrapped (LoRA), which hides its attributes
        self.config = model.visual_config

    @property
    def image_size(self) -> int:
        """Input resolution: images are ``[3, image_size, image_size]``."""
        return self.config.image_size

    @property
    def hidden_size(self) -> int:
        """Width of each output token (``output_dim``)."""
        return self.config.output_dim

    @property
    def num_patches(self) -> int:
        """Output tokens per image (``n_queries``), whatever the patch grid."""
        return self.config.n_queries

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, 3, H, W]`` -> ``[num_images, n_queries, output_dim]``."""
        return self.model(pixel_values)
