"""The mmengine-facing wrapper: a ``BaseModel`` whose checkpoints hold only what trains."""

from collections import OrderedDict
from typing import Any

import torch
from mmengine.model import BaseModel

from vltool.model.vlm import VisionLanguageModel


class TrainingModel(BaseModel):
    """Adapts :class:`VisionLanguageModel` to mmengine's ``train_step`` protocol.

    ``state_dict`` returns only trainable parameters, so a projector-alignment checkpoint holds
    the projector and not 7B frozen LLM weights; loading is non-strict for the same reason.
    """

    def __init__(self, vlm: VisionLanguageModel) -> None:
        super().__init__()
        self.vlm = vlm

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        mode: str = "loss",
    ) -> dict[str, torch.Tensor]:
        """Training forward: ``{"loss": scalar}``. Batches come from :func:`~vltool.data.collate.pad_collate`."""
        if mode != "loss":
            raise ValueError(f"TrainingModel only computes losses, got mode={mode!r}")
        loss = self.vlm.loss(input_ids, labels, attention_mask, pixel_values, position_ids)
        return {"loss": loss}

    def state_dict(self, *args: Any, **kwargs: Any) -> OrderedDict[str, torch.Tensor]:
        """Trainable parameters only, with the ``vlm.`` prefix."""
        return OrderedDict((f"vlm.{name}", value) for name, value in self.vlm.trainable_state_dict().items())
