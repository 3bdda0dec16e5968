"""Turn a conversation into token ids and labels with the template's learned spans.

The whole rendered conversation is tokenised in one call, so the ids are exactly those a
Hugging Face processor produces for the same prompt text (BPE merges never depend on where
vltool split the template). Labels come from character offsets: a token is learned when it
starts inside an assistant span.
"""

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from vltool.constants import IGNORE_INDEX, IMAGE_TOKEN
from vltool.templates import Template
from vltool.templates.message import Message

TRUNCATION_POLICIES = ("truncate", "drop")


@dataclass
class TokenizedConversation:
    """Token ids and labels of one conversation, image placeholders already expanded.

    Attributes:
        input_ids: ``[seq_len]`` token ids; each image is ``image_seq_length`` image-token ids.
        labels: ``[seq_len]``; ``IGNORE_INDEX`` except on learned tokens.
        num_images: how many images the ids hold (fewer than the sample's after truncation).
        truncated: the conversation was longer than ``max_length`` and was cut.
    """

    input_ids: list[int]
    labels: list[int]
    num_images: int
    truncated: bool = False

    @property
    def num_supervised(self) -> int:
        """How many positions carry a label."""
        return sum(label != IGNORE_INDEX for label in self.labels)


def tokenize_conversation(
    messages: list[Message],
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    image_seq_length: int,
    max_length: int | None = None,
) -> TokenizedConversation:
    """Render ``messages`` with ``template`` and tokenise them with label masks.

    A conversation ending with a user turn yields a generation prompt (no labels).

    Args:
        messages: the conversation; content holds one ``<image>`` marker per image.
        template: the chat format.
        tokenizer: a fast tokenizer that knows ``<image>`` as a special token.
        image_seq_length: visual tokens per image (what the projector outputs).
        max_length: cut longer conversations here, never inside an image's block.
    """
    text, spans = template.render(messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    input_ids: list[int] = []
    labels: list[int] = []
    span_iter = iter(spans)
    span = next(span_iter, None)
    for token_id, (start, _end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
        while span is not None and start >= span[1]:
            span = next(span_iter, None)
        if token_id == image_token_id:
            input_ids += [token_id] * image_seq_length
            labels += [IGNORE_INDEX] * image_seq_length
            continue
        learned = span is not None and span[0] <= start < span[1]
        input_ids.append(token_id)
        labels.append(token_id if learned else IGNORE_INDEX)
    num_images = sum(1 for token_id in encoding["input_ids"] if token_id == image_token_id)
    result = TokenizedConversation(input_ids, labels, num_images)
    if max_length is not None and len(input_ids) > max_length:
        result = _truncate(result, max_length, image_token_id, image_seq_length)
    return result


def _truncate(
    conv: TokenizedConversation, max_length: int, image_token_id: int, image_seq_length: int
) -> TokenizedConversation:
    """Cut at ``max_length``; a cut inside an image's block moves back to the block's start."""
    run_start = max_length
    while run_start > 0 and conv.input_ids[run_start - 1] == image_token_id:
        run_start -= 1
    cut = run_start + (max_length - run_start) // image_seq_length * image_seq_length
    ids = conv.input_ids[:cut]
    num_images = ids.count(image_token_id) // image_seq_length
    return TokenizedConversation(ids, conv.labels[:cut], num_images, truncated=True)
