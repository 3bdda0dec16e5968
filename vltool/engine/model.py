"""The mmengine-facing wrapper: a ``BaseModel`` whose checkpoints hold only what trains."""

from collections import OrderedDict
from typing import Any

import torch
import torch.distributed as dist
from mmengine.model import BaseModel

from vltool.engine.checkpoint import PREFIX, gathered_state, load_parameters
from vltool.model.vlm import VisionLanguageModel


class TrainingModel(BaseModel):
    """Adapts :class:`VisionLanguageModel` to mmengine's ``train_step`` protocol.

    ``state_dict`` returns only trainable parameters, with their full values even under
    ZeRO-3, so a projector-alignment checkpoint holds the projector and not 7B frozen LLM
    weights; loading is non-strict for the same reason.

    Under many processes the loss is normalised by the supervised-token count of the whole
    global batch (one all-reduce per step), not per rank: averaging per-rank means would weight
    a rank's tokens by how few it has, so the gradient would differ from a single-process run
    over the same global batch.
    """

    def __init__(self, vlm: VisionLanguageModel) -> None:
        super().__init__()
        self.vlm = vlm

    def init_weights(self) -> None:
        """Nothing to initialise: weights come from pretrained parts, the builder's seed and checkpoints.

        mmengine's default pass only records each parameter's mean for its log, and fails on
        the uint8 storage of 4-bit and 8-bit (QLoRA) weights.
        """

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        mode: str = "loss",
        **packing: torch.Tensor | list[tuple[int, int, int]] | None,
    ) -> dict[str, torch.Tensor]:
        """Training forward: ``{"loss": to backpropagate, "mean_loss": the global batch's mean, detached}``.

        Batches come from :func:`~vltool.data.collate.pad_collate` or
        :func:`~vltool.data.packing.pack_collate` (whose extra keys ``packing`` holds; see
        :meth:`VisionLanguageModel.loss_sum`).
        """
        if mode != "loss":
            raise ValueError(f"TrainingModel only computes losses, got mode={mode!r}")
        total, count = self.vlm.loss_sum(input_ids, labels, attention_mask, pixel_values, position_ids, **packing)
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            loss = total / count
            return {"loss": loss, "mean_loss": loss.detach()}
        stats = torch.stack([count.to(total.dtype), total.detach()])  # [2]: tokens, loss sum
        dist.all_reduce(stats)
        # DDP and DeepSpeed average gradients over ranks, hence the world-size factor
        return {"loss": total * dist.get_world_size() / stats[0], "mean_loss": stats[1] / stats[0]}

    def parse_losses(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Backpropagate ``loss``; log the global mean as ``loss``."""
        return losses["loss"], OrderedDict(loss=losses["mean_loss"])

    def state_dict(self, *args: Any, **kwargs: Any) -> OrderedDict[str, torch.Tensor]:
        """Trainable parameters only, with the ``vlm.`` prefix and full values (gathered under ZeRO-3)."""
        trainable = {name for name, param in self.vlm.named_parameters() if param.requires_grad}
        return OrderedDict((f"{PREFIX}{name}", value) for name, value in gathered_state(self.vlm, trainable).items())

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = False, assign: bool = False) -> Any:
        """Load ``vlm.``-prefixed weights into the parameters, ZeRO-3 partitions included."""
        weights = {name.removeprefix(PREFIX): value for name, value in state_dict.items()}
        missing, unexpected = load_parameters(self.vlm, weights)
        if strict and (missing or unexpected):
            raise RuntimeError(f"missing keys {missing}, unexpected keys {unexpected}")
        return torch.nn.modules.module._IncompatibleKeys(missing, unexpected)
