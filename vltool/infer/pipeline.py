"""Batched generation with a :class:`VisionLanguageModel`: the inference path every tool shares."""

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from vltool.data.images import ImageTransform
from vltool.data.sample import Message
from vltool.data.tokenization import tokenize_conversation
from vltool.model.vlm import VisionLanguageModel
from vltool.templates import Template


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, template: Template) -> list[int]:
    """Ids of the template's stop words that are single tokens: generation ends on them.

    A word is kept when its id maps back to the same token; testing against ``unk_token_id``
    instead would drop Qwen2's ``<|endoftext|>``, which is also its unknown token.
    """
    ids = {word: tokenizer.convert_tokens_to_ids(word) for word in template.stop_words}
    return [i for word, i in ids.items() if i is not None and tokenizer.convert_ids_to_tokens(i) == word]


@dataclass
class Pipeline:
    """Everything needed to answer prompts: model, tokenizer, template and image transform."""

    model: VisionLanguageModel
    tokenizer: PreTrainedTokenizerBase
    template: Template
    image_transform: ImageTransform

    def encode(self, conversations: list[list[Message]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise generation prompts and left-pad them.

        Returns:
            ``input_ids`` and ``attention_mask``, ``[batch, max_prompt_len]``.
        """
        prompts = [
            tokenize_conversation(messages, self.template, self.tokenizer, self.model.image_seq_length).input_ids
            for messages in conversations
        ]
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        return input_ids, attention_mask

    @torch.no_grad()
    def answer(
        self,
        conversations: list[list[Message]],
        images: list[list[Image.Image]],
        max_new_tokens: int = 64,
        **generate_kwargs: object,
    ) -> list[str]:
        """Answer a batch of conversations that each end with a user turn (greedy by default).

        Args:
            conversations: one message list per prompt; ``<image>`` markers where images go.
            images: the images of each conversation, in marker order.
            max_new_tokens: the longest answer.
            generate_kwargs: more Hugging Face ``generate`` options (``do_sample``, ``top_p``...).

        Returns:
            Each answer's text, cut at the template's first stop word.
        """
        device = next(self.model.parameters()).device
        input_ids, attention_mask = self.encode(conversations)
        flat_images = [image for per_prompt in images for image in per_prompt]
        pixel_values = self.image_transform(flat_images).to(device) if flat_images else None
        was_training = self.model.training
        self.model.eval()
        stop_ids = stop_token_ids(self.tokenizer, self.template)
        options = {"do_sample": False, **generate_kwargs}
        new_tokens = self.model.generate(
            input_ids.to(device),
            attention_mask.to(device),
            pixel_values,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_ids or None,
            pad_token_id=self.tokenizer.pad_token_id,
            **options,
        )
        self.model.train(was_training)
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
        return [self._cut_at_stop_words(text) for text in texts]

    def _cut_at_stop_words(self, text: str) -> str:
        for word in (*self.template.stop_words, self.tokenizer.pad_token):
            if word and word in text:
                text = text[: text.index(word)]
        return text.strip()
