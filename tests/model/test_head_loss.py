"""The chunked LM-head loss: the same value and gradients as the plain loss, whatever the chunk size."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vltool.model.head_loss import head_loss


def reference(head, hidden, targets):
    hidden = hidden.detach().requires_grad_()
    loss = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    loss.backward()
    grads = {name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None}
    head.zero_grad()
    return loss.detach(), hidden.grad, grads


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_linear_matches_plain_cross_entropy(chunk_size, bias):
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=bias)
    hidden, targets = torch.randn(7, 16), torch.randint(0, 50, (7,))
    expected_loss, expected_hidden_grad, expected_grads = reference(head, hidden, targets)
    hidden = hidden.detach().requires_grad_()
    loss = head_loss(head, hidden, targets, chunk_size)
    (2 * loss).backward()  # the backward pass scales what the forward pass computed
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(hidden.grad, 2 * expected_hidden_grad, rtol=1e-5, atol=1e-6)
    for name, parameter in head.named_parameters():
        torch.testing.assert_close(parameter.grad, 2 * expected_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_frozen_head_and_other_modules():
    torch.manual_seed(1)
    frozen = nn.Linear(8, 30).requires_grad_(False)
    hidden, targets = torch.randn(9, 8, requires_grad=True), torch.randint(0, 30, (9,))
    head_loss(frozen, hidden, targets, 4).backward()
    expected = torch.autograd.grad(F.cross_entropy(frozen(hidden), targets, reduction="sum"), hidden)[0]
    torch.testing.assert_close(hidden.grad, expected, rtol=1e-5, atol=1e-6)
    assert frozen.weight.grad is None
    # a head that is not a plain Linear (LoRA-wrapped, quantised): chunks recomputed under checkpointing
    wrapped = nn.Sequential(nn.Linear(8, 30))
    expected_loss, expected_hidden_grad, expected_grads = reference(wrapped, hidden, targets)
    hidden = hidden.detach().requires_grad_()
    loss = head_loss(wrapped, hidden, targets, 4)
    loss.backward()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(hidden.grad, expected_hidden_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wrapped[0].weight.grad, expected_grads["0.weight"], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(head_loss(wrapped, hidden, targets, 2), expected_loss, rtol=1e-6, atol=1e-5)
