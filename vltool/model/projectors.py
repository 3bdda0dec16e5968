"""Projectors: map vision features ``[n, patches, vision_dim]`` to LLM embeddings ``[n, tokens, llm_dim]``."""

import math

import torch
from torch import nn


class LinearProjector(nn.Module):
    """One linear layer (MiniGPT4-style)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def num_output_tokens(self, num_patches: int) -> int:
        """Visual tokens per image for ``num_patches`` input features."""
        return num_patches

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[n, patches, in_features]`` -> ``[n, patches, out_features]``."""
        return self.linear(features)


class MLPProjector(nn.Module):
    """Linear, then ``depth - 1`` times (GELU, Linear): LLaVA-1.5's ``mlp2x_gelu`` at depth 2.

    The layers are named ``linear_1 ... linear_N`` as in Hugging Face's ``LlavaMultiModalProjector``.
    """

    def __init__(self, in_features: int, out_features: int, depth: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLPProjector depth must be at least 1, got {depth}")
        self.depth = depth
        for i in range(depth):
            setattr(self, f"linear_{i + 1}", nn.Linear(in_features if i == 0 else out_features, out_features))
        self.act = nn.GELU()

    def num_output_tokens(self, num_patches: int) -> int:
        """Visual tokens per image for ``num_patches`` input features."""
        return num_patches

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[n, patches, in_features]`` -> ``[n, patches, out_features]``."""
        hidden = self.linear_1(features)
        for i in range(2, self.depth + 1):
            hidden = getattr(self, f"linear_{i}")(self.act(hidden))
        return hidden


class LayerNormMLPProjector(MLPProjector):
    """LayerNorm over the vision features, then an :class:`MLPProjector`."""

    def __init__(self, in_features: int, out_features: int, depth: int = 2) -> None:
        super().__init__(in_features, out_features, depth)
        self.norm = nn.LayerNorm(in_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[n, patches, in_features]`` -> ``[n, patches, out_features]``."""
        return super().forward(self.norm(features))


def sincos_2d(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions for a ``grid_size x grid_size`` grid (MAE / Qwen-VL style).

    Returns:
        ``[grid_size * grid_size, dim]``; half the channels encode rows, half columns.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position dim must be divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # [grid*grid, dim/4]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class ResamplerProjector(nn.Module):
    """Qwen-VL's cross-attention resampler: learnable queries attend to the patch features.

    Queries and keys carry 2-D sin-cos positions (queries on a ``sqrt(num_queries)`` grid, keys
    on the patch grid), so any patch count maps to exactly ``num_queries`` tokens.

    vltool's own projector in Qwen-VL's shape, trained from scratch; it is not Qwen-VL's
    resampler and does not reproduce it. For the original, loaded from a Qwen-VL-Chat checkpoint
    and equal to it in numbers, use :class:`vltool.model.qwen_vl_visual.QwenVLVisualEncoder`.
    The differences from Qwen-VL's ``attn_pool``:

    - key positions are computed fresh for the patch grid; Qwen-VL bicubic-resizes its stored
      16x16 table (``pos_embed``) to the grid, which gives other values at 32x32;
    - :func:`sincos_2d` puts the row features first; Qwen-VL's table has the column features
      first (MAE's ``meshgrid(w, h)``);
    - LayerNorm eps is PyTorch's 1e-5; Qwen-VL's is 1e-6;
    - the ``qwen_vl`` recipe preprocesses CLIP-style (shortest edge to 448, then a 448 centre
      crop); Qwen-VL squashes the whole image to 448x448 (bicubic, no crop).

    Args:
        in_features: vision feature width.
        out_features: LLM embedding width (also the attention width).
        num_queries: output tokens per image; must be a square number.
        num_heads: attention heads; ``out_features`` must be divisible by it.
    """

    def __init__(self, in_features: int, out_features: int, num_queries: int = 256, num_heads: int = 8) -> None:
        super().__init__()
        query_grid = math.isqrt(num_queries)
        if query_grid * query_grid != num_queries:
            raise ValueError(f"num_queries must be a square number, got {num_queries}")
        self.num_queries = num_queries
        self.query = nn.Parameter(torch.randn(num_queries, out_features) * 0.02)
        self.register_buffer("query_pos", sincos_2d(query_grid, out_features), persistent=False)
        self.kv_proj = nn.Linear(in_features, out_features, bias=False)
        self.attn = nn.MultiheadAttention(out_features, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(out_features)
        self.ln_kv = nn.LayerNorm(out_features)
        self.ln_post = nn.LayerNorm(out_features)
        self.proj = nn.Parameter(torch.randn(out_features, out_features) * out_features**-0.5)

    def num_output_tokens(self, num_patches: int) -> int:
        """Always ``num_queries``, whatever the patch count."""
        return self.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[n, patches, in_features]`` -> ``[n, num_queries, out_features]``; patches must form a square grid."""
        grid = math.isqrt(features.shape[1])
        if grid * grid != features.shape[1]:
            raise ValueError(f"resampler needs a square patch grid, got {features.shape[1]} patches")
        keys = self.ln_kv(self.kv_proj(features))  # [n, patches, out]
        key_pos = sincos_2d(grid, keys.shape[-1]).to(keys)
        queries = self.ln_q(self.query).unsqueeze(0).expand(features.shape[0], -1, -1)  # [n, queries, out]
        attended, _ = self.attn(queries + self.query_pos.to(keys), keys + key_pos, keys, need_weights=False)
        return self.ln_post(attended) @ self.proj
