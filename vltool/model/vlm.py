"""``VisionLanguageModel``: vision encoder -> projector -> image embeddings spliced into the LLM's input."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from vltool.constants import IGNORE_INDEX
from vltool.model.vision_encoder import VisionEncoder


class VisionLanguageModel(nn.Module):
    """A LLaVA-style model.

    Each image becomes ``image_seq_length`` embeddings that replace, in order, the positions of
    ``image_token_id`` in ``input_ids`` (any number of images, anywhere in the sequence).

    Args:
        vision_encoder: patch features of a ViT layer.
        projector: vision features -> LLM embeddings; has ``num_output_tokens(num_patches)``.
        llm: a causal LM (``Qwen2ForCausalLM``, ...).
        image_token_id: the placeholder id, one per visual token.
        freeze_vision_encoder / freeze_projector / freeze_llm: which parts do not train.
        freeze_llm_input_embeddings: keep the LLM's input embedding table fixed while the rest
            trains. With a 152k vocabulary the table's dense gradient is the costliest part of a
            small model's backward pass; the LM head still trains when embeddings are untied.
    """

    def __init__(
        self,
        vision_encoder: VisionEncoder,
        projector: nn.Module,
        llm: PreTrainedModel,
        image_token_id: int,
        freeze_vision_encoder: bool = True,
        freeze_projector: bool = False,
        freeze_llm: bool = True,
        freeze_llm_input_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.vision_encoder = vision_encoder
        self.projector = projector
        self.llm = llm
        self.image_token_id = image_token_id
        for part, frozen in ((vision_encoder, freeze_vision_encoder), (projector, freeze_projector), (llm, freeze_llm)):
            if frozen:
                part.requires_grad_(False)
        if freeze_llm_input_embeddings:
            llm.get_input_embeddings().requires_grad_(False)

    @property
    def image_seq_length(self) -> int:
        """Visual tokens (image-token placeholders) per image."""
        return self.projector.num_output_tokens(self.vision_encoder.num_patches)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, 3, H, W]`` -> ``[num_images, image_seq_length, llm_hidden]``."""
        encoder_trains = any(p.requires_grad for p in self.vision_encoder.parameters())
        dtype = next(self.vision_encoder.parameters()).dtype
        with torch.set_grad_enabled(encoder_trains and torch.is_grad_enabled()):
            features = self.vision_encoder(pixel_values.to(dtype))  # [n, patches, vision_hidden]
        return self.projector(features)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image features written into the placeholder positions.

        Args:
            input_ids: ``[batch, seq_len]``.
            pixel_values: ``[num_images, 3, H, W]``, images in the order their placeholders appear
                (row by row), or None.

        Returns:
            ``[batch, seq_len, llm_hidden]``.
        """
        embeds = self.llm.get_input_embeddings()(input_ids)  # [batch, seq, hidden]
        if pixel_values is None:
            return embeds
        features = self.encode_images(pixel_values).to(embeds.dtype)  # [n, tokens, hidden]
        mask = (input_ids == self.image_token_id).unsqueeze(-1)  # [batch, seq, 1]
        return embeds.masked_scatter(mask, features.reshape(-1, features.shape[-1]))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full next-token logits ``[batch, seq_len, vocab]`` (inference and parity tests)."""
        embeds = self.embed(input_ids, pixel_values)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids).logits

    def loss(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over supervised positions (arguments as :meth:`loss_sum`)."""
        total, count = self.loss_sum(input_ids, labels, attention_mask, pixel_values, position_ids)
        return total / count

    def loss_sum(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over supervised positions, and how many there are.

        The LM head runs only on positions whose next token is learned: with a 152k vocabulary
        the full ``[batch, seq, vocab]`` logits would be the largest activation in the model.

        Args:
            input_ids, labels, attention_mask: ``[batch, seq_len]``; labels are ``IGNORE_INDEX``
                where nothing is learned.
            pixel_values: ``[num_images, 3, H, W]`` or None.
            position_ids: ``[batch, seq_len]`` or None.

        Returns:
            ``(loss_sum, num_supervised)``: two scalars; the count is a long tensor.
        """
        embeds = self.embed(input_ids, pixel_values)
        hidden = self.llm.get_decoder()(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state  # [batch, seq, hidden]
        targets = labels[:, 1:]  # position t predicts token t + 1
        supervised = targets != IGNORE_INDEX  # [batch, seq - 1]
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][supervised])  # [n_supervised, vocab]
        total = F.cross_entropy(logits.float(), targets[supervised], reduction="sum")
        return total, supervised.sum()

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        **generate_kwargs: object,
    ) -> torch.Tensor:
        """Generate from left-padded prompts.

        Args:
            input_ids, attention_mask: ``[batch, prompt_len]``, left-padded.
            pixel_values: ``[num_images, 3, H, W]`` or None.
            generate_kwargs: passed to Hugging Face ``generate`` (``max_new_tokens``, ...).

        Returns:
            The new tokens only, ``[batch, new_len]``.
        """
        embeds = self.embed(input_ids, pixel_values)
        # the ids ride along with the embeddings so that repetition penalties and stop strings
        # see the prompt; the model itself reads only the embeddings
        sequences = self.llm.generate(
            input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs
        )
        return sequences[:, input_ids.shape[1] :]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters that train: all a checkpoint needs on top of the base weights."""
        trainable = {name for name, param in self.named_parameters() if param.requires_grad}
        return {name: value for name, value in self.state_dict().items() if name in trainable}
