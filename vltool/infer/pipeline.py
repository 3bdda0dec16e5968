"""Prompting and generation with a :class:`VisionLanguageModel`: the inference path every tool shares.

Batched answers (:meth:`Pipeline.answer`, used by mmbench, eval and training hooks) and the
streamed, cache-reusing chat (:class:`vltool.infer.session.ChatSession`) both generate through
Hugging Face ``generate`` with the options built here, so sampling, repetition penalty and stop
words behave the same everywhere.
"""

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from vltool.data.images import ImageTransform
from vltool.data.tokenization import tokenize_conversation
from vltool.errors import ConfigError
from vltool.model.vlm import VisionLanguageModel
from vltool.templates import Template
from vltool.templates.message import Message


@dataclass(frozen=True)
class GenerationOptions:
    """How answers are decoded.

    Attributes:
        max_new_tokens: the longest answer, in tokens.
        temperature: 0 decodes greedily; above 0 samples at this temperature.
        top_p: nucleus sampling mass (1 = off); only when sampling.
        top_k: keep the k likeliest tokens (0 = off); only when sampling.
        repetition_penalty: above 1 discourages tokens already in the prompt or answer.
    """

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "top_k": self.top_k >= 0,
            "repetition_penalty": self.repetition_penalty > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"invalid generation option {bad[0]}={getattr(self, bad[0])}: max_new_tokens >= 1, temperature >= 0, "
                "0 < top_p <= 1, top_k >= 0 and repetition_penalty > 0."
            )

    def generate_kwargs(self) -> dict[str, Any]:
        """Hugging Face ``generate`` arguments; every one is set, so a model's own defaults never leak in."""
        sampling = self.temperature > 0
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sampling,
            "temperature": self.temperature if sampling else 1.0,
            "top_p": self.top_p if sampling else 1.0,
            "top_k": self.top_k if sampling and self.top_k else None,
            "repetition_penalty": self.repetition_penalty,
        }


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, template: Template) -> list[int]:
    """Ids of the template's stop words that are single tokens: generation ends on them.

    A word is kept when its id maps back to the same token; testing against ``unk_token_id``
    instead would drop Qwen2's ``<|endoftext|>``, which is also its unknown token.
    """
    ids = {word: tokenizer.convert_tokens_to_ids(word) for word in template.stop_words}
    return [i for word, i in ids.items() if i is not None and tokenizer.convert_ids_to_tokens(i) == word]


def stop_kwargs(tokenizer: PreTrainedTokenizerBase, template: Template) -> dict[str, Any]:
    """``generate`` arguments that end an answer on the template's stop words.

    Single-token words become end-of-sequence ids; the others (vicuna's ``</s>`` in a Qwen
    vocabulary, ``plain``'s newline) go to ``stop_strings``, which Hugging Face matches on token
    ids as they are generated, without decoding the answer at every step.
    """
    single = stop_token_ids(tokenizer, template)
    words = {tokenizer.convert_ids_to_tokens(i) for i in single}
    multi = [word for word in template.stop_words if word not in words]
    kwargs: dict[str, Any] = {"eos_token_id": single or None, "pad_token_id": tokenizer.pad_token_id}
    if multi:
        kwargs.update(stop_strings=multi, tokenizer=tokenizer)
    return kwargs


def cut_at_stop_words(text: str, stop_words: tuple[str, ...]) -> str:
    """``text`` up to its first stop word, stripped."""
    for word in stop_words:
        if word and word in text:
            text = text[: text.index(word)]
    return text.strip()


@dataclass
class Pipeline:
    """Everything needed to answer prompts: model, tokenizer, template and image transform."""

    model: VisionLanguageModel
    tokenizer: PreTrainedTokenizerBase
    template: Template
    image_transform: ImageTransform

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """Token ids of a conversation (image placeholders expanded); one ending in a user turn is a prompt."""
        return tokenize_conversation(messages, self.template, self.tokenizer, self.model.image_seq_length).input_ids

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor | None:
        """``[num_images, 3, H, W]`` on the model's device, or None without images."""
        return self.image_transform(images).to(self.device) if images else None

    def encode(self, conversations: list[list[Message]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise generation prompts and left-pad them.

        Returns:
            ``input_ids`` and ``attention_mask``, ``[batch, max_prompt_len]``.
        """
        prompts = [self.prompt_ids(messages) for messages in conversations]
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        return input_ids, attention_mask

    def generate_kwargs(self, options: GenerationOptions) -> dict[str, Any]:
        """``generate`` arguments for ``options`` with this template's stop words."""
        return {**options.generate_kwargs(), **stop_kwargs(self.tokenizer, self.template)}

    def cut(self, text: str) -> str:
        """A decoded answer up to the template's first stop word (or padding), stripped."""
        return cut_at_stop_words(text, (*self.template.stop_words, self.tokenizer.pad_token or ""))

    @torch.no_grad()
    def answer(
        self,
        conversations: list[list[Message]],
        images: list[list[Image.Image]],
        options: GenerationOptions | None = None,
    ) -> list[str]:
        """Answer a batch of conversations that each end with a user turn (greedy by default).

        Args:
            conversations: one message list per prompt; ``<image>`` markers where images go.
            images: the images of each conversation, in marker order.
            options: decoding options; greedy with at most 512 new tokens when None.

        Returns:
            Each answer's text, cut at the template's first stop word.
        """
        input_ids, attention_mask = self.encode(conversations)
        pixel_values = self.pixel_values([image for per_prompt in images for image in per_prompt])
        was_training = self.model.training
        self.model.eval()
        new_tokens = self.model.generate(
            input_ids.to(self.device),
            attention_mask.to(self.device),
            pixel_values,
            **self.generate_kwargs(options or GenerationOptions()),
        )
        self.model.train(was_training)
        return [self.cut(text) for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=False)]
