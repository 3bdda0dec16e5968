"""Wrap a Hugging Face CLIP or SigLIP vision tower to output patch features of a chosen layer."""

import torch
from torch import nn
from transformers import PreTrainedModel

FEATURE_SELECT_STRATEGIES = ("default", "full")


class VisionEncoder(nn.Module):
    """Patch features from one hidden layer of a ViT.

    Args:
        model: a ``CLIPVisionModel`` or ``SiglipVisionModel`` (anything with ``config.image_size``,
            ``config.patch_size`` and ``output_hidden_states``).
        feature_layer: which hidden state to take (``-2``: the penultimate layer, as LLaVA does).
        select_strategy: ``default`` drops the leading CLS token (CLIP); ``full`` keeps every
            token (SigLIP has no CLS). Names follow Hugging Face's
            ``vision_feature_select_strategy``.
        image_size: run at this resolution instead of the model's own, interpolating its
            position embeddings (Qwen-VL runs a 336-px CLIP at 448 px).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        feature_layer: int = -2,
        select_strategy: str = "default",
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if select_strategy not in FEATURE_SELECT_STRATEGIES:
            raise ValueError(f"select_strategy must be one of {FEATURE_SELECT_STRATEGIES}, got {select_strategy!r}")
        self.model = model
        self.feature_layer = feature_layer
        self.select_strategy = select_strategy
        self.image_size = image_size or model.config.image_size

    @property
    def hidden_size(self) -> int:
        """Width of each patch feature."""
        return self.model.config.hidden_size

    @property
    def num_patches(self) -> int:
        """Patch features per image: ``(image_size // patch_size) ** 2``."""
        return (self.image_size // self.model.config.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            pixel_values: ``[num_images, 3, H, W]``.

        Returns:
            ``[num_images, num_patches, hidden_size]``.
        """
        interpolate = self.image_size != self.model.config.image_size
        outputs = self.model(pixel_values=pixel_values, output_hidden_states=True, interpolate_pos_encoding=interpolate)
        features = outputs.hidden_states[self.feature_layer]  # [n, (1 +) patches, hidden]
        return features[:, 1:] if self.select_strategy == "default" else features
