"""A batch without images still trains when only the vision path does (projector alignment on mixed data)."""

import torch

from tests.model.test_vlm import prompt_ids
from vltool.constants import IGNORE_INDEX


def text_batch() -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.tensor([prompt_ids(0, text_len=9), prompt_ids(0, text_len=9)])
    labels = input_ids.clone()
    labels[:, :5] = IGNORE_INDEX
    return input_ids, labels


def projector_only(vlm):
    vlm.vision_encoder.requires_grad_(False)
    vlm.llm.requires_grad_(False)
    return vlm.train()


def test_frozen_llm_text_only_batch_backpropagates_zero_into_the_projector(tiny_vlm):
    vlm = projector_only(tiny_vlm)
    input_ids, labels = text_batch()
    loss = vlm.loss(input_ids, labels)
    loss.backward()  # without the blank image: "element 0 of tensors does not require grad"
    for name, param in vlm.projector.named_parameters():
        assert param.grad is not None, name
        assert torch.count_nonzero(param.grad) == 0, name


def test_the_blank_image_changes_no_value(tiny_vlm):
    vlm = projector_only(tiny_vlm)
    input_ids, labels = text_batch()
    with torch.no_grad():  # no gradient, no blank image
        expected = vlm.loss(input_ids, labels)
    torch.testing.assert_close(vlm.loss(input_ids, labels).detach(), expected, rtol=0, atol=0)


def with_gradient(vlm) -> set[str]:
    names = {name for name, param in vlm.named_parameters() if param.grad is not None}
    vlm.zero_grad(set_to_none=True)
    return names


def test_text_and_image_batches_touch_the_same_parameters(tiny_vlm):
    """What DDP and ZeRO need: every rank's backward reaches the same parameters, whatever its batch holds."""
    vlm = tiny_vlm.train()
    vlm.llm.get_input_embeddings().requires_grad_(False)
    input_ids, labels = text_batch()
    vlm.loss(input_ids, labels).backward()
    text_only = with_gradient(vlm)
    image_ids = torch.tensor([prompt_ids(1), prompt_ids(1)])
    vlm.loss(image_ids, image_ids.clone(), pixel_values=torch.randn(2, 3, 32, 32)).backward()
    assert text_only == with_gradient(vlm)
    assert any(name.startswith("vision_encoder.") for name in text_only)


def test_frozen_vision_path_runs_no_image(tiny_vlm, monkeypatch):
    vlm = tiny_vlm.train()
    vlm.vision_encoder.requires_grad_(False)
    vlm.projector.requires_grad_(False)
    calls = []
    monkeypatch.setattr(vlm, "encode_images", lambda pixels: calls.append(pixels))
    input_ids, labels = text_batch()
    vlm.loss(input_ids, labels).backward()
    assert calls == []
