"""How many decoder layers of a full finetune fit one GPU: the GPU check's estimate (:mod:`vltool.engine.gpu_check`).

A 7B full finetune needs about 16-20 bytes per parameter for its fp32 weights, gradients and
AdamW state alone (about 145 GiB with a batch of 16k tokens), so one 80 GB GPU holds only part
of it; the check keeps as many layers as fit and says so. Byte counts are from the shapes
(models built on the meta device), not measured; the check retries with fewer layers should a
step still run out of memory.
"""

from typing import Any

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

MEMORY_USE = 0.9
"""Share of the GPU's memory a check plans to fill (the rest: CUDA context, allocator slack)."""
LOSS_CHUNK = 1024  # VisionLanguageModel's default loss_chunk_size: learned positions whose logits exist at once


def _numel(module: torch.nn.Module) -> int:
    return sum(param.numel() for param in module.parameters())


def full_finetune_bytes(llm: dict[str, Any], encoder: dict[str, Any], layers: int, tokens: int) -> int:
    """Estimated peak GPU bytes of a full-finetune step (LLM and projector train, encoder frozen).

    bf16 autocast with fp32 trainable weights, AdamW, LLM gradient checkpointing. The larger of
    the backward pass (weights, gradients and Adam moments: 16 B per trainable parameter, plus
    activations) and the optimizer step (``foreach`` AdamW adds a temporary the size of the
    weights: 20 B), plus the frozen encoder in fp32 and 2 GiB for what is not modelled.

    Args:
        llm: Qwen2Config keywords.
        encoder: CLIPVisionConfig keywords.
        layers: decoder layers kept.
        tokens: tokens per step (all samples of the packed batch).
    """
    with torch.device("meta"):  # shapes only
        one_layer = _numel(Qwen2ForCausalLM(Qwen2Config(**{**llm, "num_hidden_layers": 1})).model.layers[0])
        without_layers = _numel(Qwen2ForCausalLM(Qwen2Config(**{**llm, "num_hidden_layers": 0})))
        frozen = _numel(CLIPVisionModel(CLIPVisionConfig(**encoder)))
    hidden, inner = llm["hidden_size"], llm["intermediate_size"]
    projector = encoder["hidden_size"] * hidden + hidden * hidden
    trainable = without_layers + layers * one_layer + projector
    activations = (
        tokens * hidden * 4 * layers  # each layer's fp32 input, kept for recomputation
        + tokens * (16 * hidden + 6 * inner) * 2  # one layer's bf16 activations while it is recomputed
        + LOSS_CHUNK * llm["vocab_size"] * 4 * 3  # a loss chunk's logits, probabilities and their gradient
    )
    return max(16 * trainable + activations, 20 * trainable) + 4 * frozen + 2 * 2**30


def layers_that_fit(llm: dict[str, Any], encoder: dict[str, Any], tokens: int, device_bytes: int) -> int:
    """The most decoder layers (at least 1) whose full finetune fits :data:`MEMORY_USE` of ``device_bytes``."""
    budget = MEMORY_USE * device_bytes
    total = llm["num_hidden_layers"]
    return next((n for n in range(total, 0, -1) if full_finetune_bytes(llm, encoder, n, tokens) <= budget), 1)
