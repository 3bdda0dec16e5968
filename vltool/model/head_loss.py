"""The loss at the LM head without the full logits: chunked, with gradients computed as it goes.

With a 152k-token vocabulary the logits of the learned positions are the largest tensor of a
step with long answers: 32 samples x 600 learned tokens are 11 GiB in float32, and the softmax
and its gradient take as much again. :func:`head_loss` never holds more than ``chunk_size``
rows of them:

- for a plain ``nn.Linear`` head (the usual case), :class:`ChunkedLinearCrossEntropy` computes
  each chunk's loss and, in the same pass, its gradients for the hidden states and the head's
  weight; the backward pass only scales them. Same FLOPs as the unchunked loss, no recompute.
  (Liger-Kernel's fused linear cross-entropy does this in Triton, on GPUs only.)
- for any other head (LoRA-wrapped, quantised, partitioned by ZeRO-3, whose weight is only
  whole inside its own forward), each chunk goes through the head under activation
  checkpointing: its logits are recomputed in the backward pass instead of kept.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, chunk by chunk."""

    @staticmethod
    def forward(  # noqa: D102 - documented on the class and in head_loss
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_size: int,
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            chunk, wanted = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            log_probabilities = F.log_softmax(F.linear(chunk, weight, bias).float(), dim=-1)  # [chunk, vocab]
            rows = torch.arange(wanted.shape[0], device=hidden.device)
            total -= log_probabilities[rows, wanted].sum()
            # d(loss)/d(logits) = softmax - one_hot, written over the log-probabilities to keep memory flat
            probabilities = log_probabilities.exp_()
            probabilities[rows, wanted] -= 1
            grad_hidden[start : start + chunk_size] = (probabilities.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += probabilities.T @ chunk.float()
            if grad_bias is not None:
                grad_bias += probabilities.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(  # noqa: D102
        ctx: torch.autograd.function.FunctionCtx, grad_total: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scaled_weight = None if grad_weight is None else (grad_weight * grad_total).to(ctx.weight_dtype)
        scaled_bias = None if grad_bias is None else (grad_bias * grad_total).to(ctx.weight_dtype)
        return grad_hidden * grad_total.to(grad_hidden.dtype), scaled_weight, scaled_bias, None, None


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def head_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Summed next-token cross-entropy of the LM head's logits, at most ``chunk_size`` rows of them at once.

    Args:
        head: the LM head (``[hidden] -> [vocab]``).
        hidden: ``[n, hidden]`` states at the learned positions.
        targets: ``[n]`` next-token ids.
        chunk_size: the most positions whose logits exist at once.

    Returns:
        The summed loss, a float32 scalar; its value and gradients equal the unchunked loss's.
    """
    chunks = list(zip(hidden.split(chunk_size), targets.split(chunk_size), strict=True))
    trains = hidden.requires_grad or any(param.requires_grad for param in head.parameters())
    if not (torch.is_grad_enabled() and trains):
        return sum(_chunk_loss(head, h, t) for h, t in chunks)
    if type(head) is nn.Linear and not hasattr(head.weight, "ds_id"):  # ds_id: partitioned by ZeRO-3
        return ChunkedLinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk_size)
    if len(chunks) == 1:
        return _chunk_loss(head, hidden, targets)
    return sum(checkpoint(_chunk_loss, head, h, t, use_reentrant=False) for h, t in chunks)
