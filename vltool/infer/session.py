"""A multi-turn conversation with a :class:`Pipeline`: streamed answers, images on any turn, KV cache kept.

Each turn renders the whole conversation with the template, exactly as training and batched
answering do, and compares its token ids with those whose keys and values are already in the
cache. Only the ids after the common prefix go through the model (and only the images among
them through the vision encoder), so a turn costs its new tokens rather than the history, and
the answer is the one re-encoding the whole history would give. Editing the history (a new
system prompt) shortens the common prefix and the cache is rebuilt from there.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList, TextStreamer

from vltool.constants import IMAGE_TOKEN
from vltool.infer.pipeline import GenerationOptions, Pipeline
from vltool.templates.message import Message


@dataclass
class ChatImage:
    """An image of the conversation and where it came from (a path or URL, as the user gave it)."""

    source: str
    image: Image.Image


@dataclass
class TurnStats:
    """What the last turn cost.

    Attributes:
        prompt_tokens: the whole rendered conversation up to the answer.
        reused_tokens: of those, how many came from the cache instead of the model.
        new_images: images that went through the vision encoder this turn.
        answer_tokens: tokens generated.
        interrupted: the answer was stopped before it ended.
    """

    prompt_tokens: int
    reused_tokens: int
    new_images: int
    answer_tokens: int
    interrupted: bool


class _Interrupt(StoppingCriteria):
    """Ends generation after the current token once ``requested()`` is true (Ctrl-C in the chat)."""

    def __init__(self, requested: Callable[[], bool]) -> None:
        self.requested = requested
        self.fired = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        self.fired = self.fired or self.requested()
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class AnswerStreamer(TextStreamer):
    """Streams exactly the text the finished answer will have: stop words and surrounding blanks held back.

    Hugging Face's ``TextStreamer`` decodes as tokens arrive and releases whole words. On top
    of it this withholds anything that may be the start of a stop word, leading blanks, and
    trailing blanks until more text follows, so the pieces add up to :meth:`Pipeline.cut`'s result.
    """

    def __init__(self, pipeline: Pipeline, on_text: Callable[[str], None]) -> None:
        super().__init__(pipeline.tokenizer, skip_prompt=True, skip_special_tokens=False)
        self.stop_words = tuple(w for w in (*pipeline.template.stop_words, pipeline.tokenizer.pad_token) if w)
        self.on_text = on_text
        self.held = ""
        self.started = False
        self.stopped = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Receive decoded text from ``TextStreamer`` and pass on what is certainly part of the answer."""
        if self.stopped:
            return
        held = self.held + text
        hits = [held.index(word) for word in self.stop_words if word in held]
        if hits:
            held, self.stopped, stream_end = held[: min(hits)], True, True
        if not self.started:
            held = held.lstrip()
        keep = len(held) if stream_end else self._undecided(held)
        release = held[:keep].rstrip() if stream_end else held[:keep]
        self.held = held[keep:]
        if release:
            self.started = True
            self.on_text(release)

    def _undecided(self, text: str) -> int:
        """How much of ``text`` is sure to be answer: not trailing blanks, not a stop word's beginning."""
        keep = len(text.rstrip())
        for word in self.stop_words:
            for size in range(min(len(word) - 1, len(text)), 0, -1):
                if text.endswith(word[:size]):
                    keep = min(keep, len(text) - size)
                    break
        return keep


@dataclass
class ChatSession:
    """A conversation with one model.

    Attributes:
        pipeline: model, tokenizer, template and image transform.
        options: how answers are decoded.
        system: the system prompt, or None for the template's default.
        messages: user and assistant turns so far (no system turn).
        images: the conversation's images in order of their ``<image>`` markers.
        stats: what the last turn cost, or None before the first.
    """

    pipeline: Pipeline
    options: GenerationOptions = field(default_factory=GenerationOptions)
    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    images: list[ChatImage] = field(default_factory=list)
    stats: TurnStats | None = None
    _cached_ids: list[int] = field(default_factory=list, init=False, repr=False)
    _cache: DynamicCache | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        """Forget the conversation and its cache (the system prompt stays)."""
        self.messages.clear()
        self.images.clear()
        self._cache = None
        self._cached_ids = []

    def conversation(self) -> list[Message]:
        """The messages as the template renders them: the system turn first when one is set."""
        return ([Message("system", self.system)] if self.system is not None else []) + self.messages

    @torch.no_grad()
    def ask(
        self,
        text: str,
        images: list[ChatImage] | None = None,
        on_text: Callable[[str], None] | None = None,
        stop_requested: Callable[[], bool] | None = None,
    ) -> str:
        """Add a user turn, generate the answer and add it to the conversation.

        Args:
            text: the user's message.
            images: images for this turn; they go before the text, one ``<image>`` line each.
            on_text: called with each piece of the answer as it is generated (streaming).
            stop_requested: polled after every token; when it returns true the answer ends there.

        Returns:
            The answer, cut at the template's first stop word. A stopped answer keeps what was
            generated; one stopped before any text is dropped from the conversation with its turn.
        """
        images = images or []
        self.messages.append(Message("user", _with_images(text, images)))
        self.images += images
        ids = self.pipeline.prompt_ids(self.conversation())
        cut = self._reusable_prefix(ids)
        embeds, new_images = self._embed_after(ids, cut)
        interrupt = _Interrupt(stop_requested or (lambda: False))
        streamer = AnswerStreamer(self.pipeline, on_text) if on_text is not None else None
        sequences = self.pipeline.model.llm.generate(
            input_ids=torch.tensor([ids], device=embeds.device),
            inputs_embeds=embeds,
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=embeds.device),
            past_key_values=self._cache,
            use_cache=True,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([interrupt]),
            **self.pipeline.generate_kwargs(self.options),
        )
        new_tokens = sequences[0, len(ids) :].tolist()
        answer = self.pipeline.cut(self.pipeline.tokenizer.decode(new_tokens, skip_special_tokens=False))
        # the cache holds every position the model has seen: all but the last generated token
        self._cached_ids = (ids + new_tokens)[: self._cache.get_seq_length()]
        self.stats = TurnStats(len(ids), cut, new_images, len(new_tokens), interrupt.fired)
        if answer or not interrupt.fired:
            self.messages.append(Message("assistant", answer))
        else:
            self.messages.pop()
            del self.images[len(self.images) - len(images) :]
        return answer

    def _reusable_prefix(self, ids: list[int]) -> int:
        """Crop the cache to the longest prefix it shares with ``ids`` (never inside an image's block)."""
        cut = 0
        for cached, new in zip(self._cached_ids, ids[:-1], strict=False):  # at least one id must be fed
            if cached != new:
                break
            cut += 1
        image_id = self.pipeline.model.image_token_id
        while 0 < cut < len(ids) and ids[cut] == image_id and ids[cut - 1] == image_id:
            cut -= 1
        if cut == 0 or self._cache is None:
            self._cache = DynamicCache(config=self.pipeline.model.llm.config)
            return 0
        self._cache.crop(cut - self._cache.get_seq_length())
        return cut

    def _embed_after(self, ids: list[int], cut: int) -> tuple[torch.Tensor, int]:
        """Input embeddings ``[1, len(ids), hidden]``; only the part after ``cut`` is computed.

        ``generate`` feeds the model only the positions the cache lacks, so the cached prefix's
        rows are placeholders that are never read.

        Returns:
            The embeddings and how many images were encoded for them.
        """
        model = self.pipeline.model
        cached_images = ids[:cut].count(model.image_token_id) // model.image_seq_length
        fresh = self.images[cached_images:]
        suffix = torch.tensor([ids[cut:]], device=self.pipeline.device)
        embeds = model.embed(suffix, self.pipeline.pixel_values([item.image for item in fresh]))
        prefix = embeds.new_zeros((1, cut, embeds.shape[-1]))
        return torch.cat([prefix, embeds], dim=1), len(fresh)

    def to_sample(self) -> dict[str, Any]:
        """The conversation in vltool's messages format: a training sample (``vltool train`` reads it)."""
        return {
            "messages": [{"role": m.role, "content": m.content} for m in self.conversation()],
            "images": [item.source for item in self.images],
        }


def _with_images(text: str, images: list[ChatImage]) -> str:
    """A user message with one ``<image>`` line per image before the text (LLaVA's layout)."""
    return f"{IMAGE_TOKEN}\n" * len(images) + text
