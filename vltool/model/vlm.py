"""``VisionLanguageModel``: vision encoder -> projector -> image embeddings spliced into the LLM's input."""

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from vltool.build import resolve_type
from vltool.data.collate import supervised_positions
from vltool.data.packing import pack_collate
from vltool.errors import ConfigError
from vltool.model.head_loss import head_loss
from vltool.model.segment_attention import SEGMENTS_KWARG, packed_attention_path, select_packed_attention
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
        train_vision_modules: submodules of the encoder (dotted names under it, e.g.
            ``model.attn_pool``) that train although ``freeze_vision_encoder`` is set: Qwen-VL's
            ``fix_vit`` freezes its ViT but trains the resampler.
        loss_chunk_size: the most learned positions whose LM-head logits exist at once in the
            loss (:func:`vltool.model.head_loss.head_loss`).
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
        train_vision_modules: Sequence[str] = (),
        loss_chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        self.loss_chunk_size = loss_chunk_size
        self.vision_encoder = vision_encoder
        self.projector = projector
        self.llm = llm
        self.image_token_id = image_token_id
        for part, frozen in ((vision_encoder, freeze_vision_encoder), (projector, freeze_projector), (llm, freeze_llm)):
            if frozen:
                part.requires_grad_(False)
        if freeze_llm_input_embeddings:
            llm.get_input_embeddings().requires_grad_(False)
        for name in train_vision_modules:
            try:
                vision_encoder.get_submodule(name).requires_grad_(True)
            except AttributeError:
                raise ConfigError(f"model.train_vision_modules: the encoder has no submodule '{name}'.") from None

    @property
    def image_seq_length(self) -> int:
        """Visual tokens (image-token placeholders) per image."""
        return self.projector.num_output_tokens(self.vision_encoder.num_patches)

    def use_packed_attention(self) -> str:
        """Make the LLM's attention keep the samples of packed batches apart; return its implementation.

        ``sdpa`` becomes vltool's segment attention, on this model only; flash attention and
        ``eager`` stay (:func:`vltool.model.segment_attention.select_packed_attention`). Padded
        batches and generation are unchanged by the switch.

        Raises:
            ConfigError: an attention implementation packed batches cannot use.
        """
        return select_packed_attention(self.llm)

    def use_attention_for(self, collate_fn: Callable | str | None) -> None:
        """Choose the LLM's attention for the batches ``collate_fn`` makes.

        Args:
            collate_fn: a dataloader's collate function, or its dotted name (configs dumped by
                ``copy-cfg``), or None (padding). :func:`~vltool.data.packing.pack_collate`
                selects :meth:`use_packed_attention`; any other leaves the LLM as it is.
        """
        if collate_fn is not None and resolve_type(collate_fn) is pack_collate:
            self.use_packed_attention()

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
            return self._touch_vision_path(embeds)
        features = self.encode_images(pixel_values).to(embeds.dtype)  # [n, tokens, hidden]
        mask = (input_ids == self.image_token_id).unsqueeze(-1)  # [batch, seq, 1]
        return embeds.masked_scatter(mask, features.reshape(-1, features.shape[-1]))

    def _touch_vision_path(self, embeds: torch.Tensor) -> torch.Tensor:
        """``embeds`` ``[batch, seq, hidden]`` plus zero times a blank image's features, when the vision path trains.

        A batch without images would otherwise leave the encoder and projector out of the
        graph: with the LLM frozen (projector alignment on mixed data) its loss has no gradient
        at all and ``backward`` fails, and under DDP or ZeRO the ranks would disagree on which
        parameters received gradients. Running one blank image through them, weighted zero (as
        Qwen-VL does), gives every trainable parameter a gradient, zero, on every rank and
        changes no value. Generation and frozen vision paths skip it.
        """
        vision_params = [*self.vision_encoder.parameters(), *self.projector.parameters()]
        if not (torch.is_grad_enabled() and any(param.requires_grad for param in vision_params)):
            return embeds
        size = self.vision_encoder.image_size
        blank = torch.zeros(1, 3, size, size, device=embeds.device)
        features = self.encode_images(blank)  # [1, tokens, hidden]
        return embeds + features.sum().to(embeds.dtype) * 0.0

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
        **packing: torch.Tensor | list[tuple[int, int, int]] | None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over supervised positions (arguments as :meth:`loss_sum`)."""
        total, count = self.loss_sum(input_ids, labels, attention_mask, pixel_values, position_ids, **packing)
        return total / count

    def loss_sum(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segments: list[tuple[int, int, int]] | None = None,
        supervised_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over supervised positions, and how many there are.

        The LM head runs only on positions whose next token is learned: with a 152k vocabulary
        the full ``[batch, seq, vocab]`` logits would be the largest activation in the model.

        Args:
            input_ids, labels, attention_mask: ``[batch, seq_len]``; labels are ``IGNORE_INDEX``
                where nothing is learned. Packed batches (:mod:`vltool.data.packing`) have no
                attention mask: their ``position_ids`` restart at each sample.
            pixel_values: ``[num_images, 3, H, W]`` or None.
            position_ids: ``[batch, seq_len]`` or None.
            segments: packed batches: ``(row, start, end)`` of each sample and padding tail.
            supervised_index: ``[n_supervised]`` flattened positions whose next token is learned,
                computed by the collate function; None finds them here (a device sync on GPU).

        Returns:
            ``(loss_sum, num_supervised)``: two scalars; the count is a long tensor.
        """
        embeds = self.embed(input_ids, pixel_values)
        hidden = self._decode(embeds, attention_mask, position_ids, segments)  # [batch, seq, hidden]
        if supervised_index is None:
            supervised_index = supervised_positions(labels)
        index = supervised_index.to(hidden.device)
        targets = labels.flatten().index_select(0, index + 1)  # position p predicts token p + 1
        learned = hidden.flatten(0, 1).index_select(0, index)  # [n_supervised, hidden]
        total = head_loss(self.llm.get_output_embeddings(), learned, targets, self.loss_chunk_size)
        return total, torch.tensor(index.numel(), device=total.device)

    def _decode(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        segments: list[tuple[int, int, int]] | None,
    ) -> torch.Tensor:
        """The decoder's last hidden states ``[batch, seq, hidden]`` for ``embeds`` ``[batch, seq, hidden]``.

        No KV cache: training needs none, and transformers reads a packed batch's position ids
        as sample boundaries only without one.
        """
        decoder = self.llm.get_decoder()
        if segments is None:
            return decoder(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        path = packed_attention_path(self.llm.config._attn_implementation)  # refuses what would cross samples
        if path == "segments":
            # attention sample by sample (segment_attention); the all-ones mask tells transformers
            # not to build a block-diagonal mask that would go unused
            no_padding = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            packed = {SEGMENTS_KWARG: segments}
            return decoder(
                inputs_embeds=embeds, attention_mask=no_padding, position_ids=position_ids, use_cache=False, **packed
            ).last_hidden_state
        if path == "mask":  # eager: no attention mask, so transformers builds the block mask from the position ids
            return decoder(inputs_embeds=embeds, position_ids=position_ids, use_cache=False).last_hidden_state
        rows, width = embeds.shape[:2]
        # flash-attn's variable-length kernel takes one flat sequence and the sample boundaries;
        # handing them over (built on the host, copied without a sync) spares transformers a
        # device sync in every layer
        bounds = [0] + [row * width + end for row, _, end in segments]
        cu_seq_lens = torch.tensor(bounds, dtype=torch.int32).to(embeds.device, non_blocking=True)
        longest = max(end - start for _, start, end in segments)
        hidden = decoder(
            inputs_embeds=embeds.reshape(1, rows * width, -1),
            position_ids=position_ids.reshape(1, -1),
            cu_seq_lens_q=cu_seq_lens,
            cu_seq_lens_k=cu_seq_lens,
            max_length_q=longest,
            max_length_k=longest,
            use_cache=False,
        ).last_hidden_state
        return hidden.reshape(rows, width, -1)

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
