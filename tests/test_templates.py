import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from vltool.constants import IGNORE_INDEX, QWEN2_TOKENIZER_DIR
from vltool.data.tokenization import tokenize_conversation
from vltool.errors import ConfigError
from vltool.model.tokenizer import add_image_token
from vltool.templates import available_templates, load_template
from vltool.templates.message import Message

IM_START, IM_END, NL = 151644, 151645, 198
SYSTEM, USER, ASSISTANT = 8948, 872, 77091
HELPFUL = [2610, 525, 264, 10950, 17847, 13]  # "You are a helpful assistant."
THINK, END_THINK, NL_NL = 151667, 151668, 271
# Qwen3's own tokenizer_config.json (Qwen/Qwen3-0.6B's, Apache-2.0) is not in the repository: it was
# found in a public GitHub copy, and data fetched that way is not committed here. The parity tests run
# where it is given (VLTOOL_QWEN3_TOKENIZER_CONFIG=PATH); the literal-text tests below always run.
QWEN3_CONFIG = Path(os.environ.get("VLTOOL_QWEN3_TOKENIZER_CONFIG", "/nonexistent/tokenizer_config.json"))


def test_all_shipped_templates_load():
    names = available_templates()
    assert set(names) >= {"qwen_chat", "qwen3_chat", "qwen_vl", "vicuna", "llama3_chat", "internlm2_chat", "plain"}
    for name in names:
        template = load_template(name)
        assert template.stop_words, name
        assert "{input}" in template.user and "{output}" in template.assistant


def test_unknown_template_suggests_close_names():
    with pytest.raises(ConfigError, match="unknown template 'qwen_chta'.*Did you mean qwen_chat"):
        load_template("qwen_chta")


def test_qwen_chat_ids_and_labels_hand_checked(tokenizer):
    messages = [Message("system", "You are a helpful assistant."), Message("user", "Hello"), Message("assistant", "Hi")]
    conv = tokenize_conversation(messages, load_template("qwen_chat"), tokenizer, image_seq_length=4)
    expected = [
        IM_START,
        SYSTEM,
        NL,
        *HELPFUL,
        IM_END,
        NL,
        IM_START,
        USER,
        NL,
        9707,
        IM_END,
        NL,
        IM_START,
        ASSISTANT,
        NL,
        13048,
        IM_END,
        NL,
    ]
    assert conv.input_ids == expected
    # only the reply and its <|im_end|> are learned; the trailing separator is not
    learned = [i for i, label in enumerate(conv.labels) if label != IGNORE_INDEX]
    assert [conv.input_ids[i] for i in learned] == [13048, IM_END]
    assert conv.labels[-1] == IGNORE_INDEX


def test_qwen_chat_default_system_prompt(tokenizer):
    template = load_template("qwen_chat")
    text, _ = template.render([Message("user", "Hello"), Message("assistant", "Hi")])
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.")


def test_multi_turn_labels_cover_every_reply(tokenizer):
    messages = [
        Message("user", "Hello"),
        Message("assistant", "Hi"),
        Message("user", "Hello"),
        Message("assistant", "Hello world"),
    ]
    conv = tokenize_conversation(messages, load_template("qwen_chat"), tokenizer, image_seq_length=4)
    learned = [conv.input_ids[i] for i, label in enumerate(conv.labels) if label != IGNORE_INDEX]
    assert learned == [13048, IM_END, 9707, 1879, IM_END]


def test_generation_prompt_ends_with_assistant_header(tokenizer):
    conv = tokenize_conversation([Message("user", "Hello")], load_template("qwen_chat"), tokenizer, 4)
    assert conv.input_ids[-3:] == [IM_START, ASSISTANT, NL]
    assert conv.num_supervised == 0


def test_qwen_vl_numbers_pictures():
    template = load_template("qwen_vl")
    text, _ = template.render([Message("user", "<image>\n<image>\nCompare."), Message("assistant", "Same.")])
    assert "Picture 1: <img><image></img>\nPicture 2: <img><image></img>\nCompare." in text


def test_plain_keeps_only_image_and_caption():
    template = load_template("plain")
    text, spans = template.render([Message("user", "Describe the photo.\n<image>"), Message("assistant", "A dog.")])
    assert text == "<image>A dog.\n"
    assert [text[a:b] for a, b in spans] == ["A dog.\n"]


def test_braces_in_content_are_kept_verbatim(tokenizer):
    template = load_template("vicuna")
    text, spans = template.render([Message("user", "print {input}"), Message("assistant", "{output} ok")])
    assert "USER: print {input} ASSISTANT: {output} ok</s>" in text
    assert text[spans[0][0] : spans[0][1]] == " {output} ok</s>"


# ---- qwen3_chat against Qwen3's own Jinja template (its tokenizer_config.json: see QWEN3_CONFIG)


def load_qwen3_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """Qwen3's tokenizer as transformers loads it from the Hub files, built in ``folder``.

    Qwen3's vocab.json and merges.txt are Qwen2's (vocab.json byte for byte); the real
    tokenizer_config.json brings the added tokens (``<think>`` 151667 ...) and the chat template.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).symlink_to(QWEN2_TOKENIZER_DIR / name)
    (folder / "tokenizer_config.json").write_bytes(QWEN3_CONFIG.read_bytes())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # transformers builds an empty BPE without error when it misreads the files
    assert tokenizer("Hello world", add_special_tokens=False).input_ids == [9707, 1879]
    assert tokenizer.convert_tokens_to_ids(["<think>", "</think>"]) == [THINK, END_THINK]
    add_image_token(tokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def qwen3_tokenizer(module_tmp):
    if not QWEN3_CONFIG.is_file():
        pytest.skip("set VLTOOL_QWEN3_TOKENIZER_CONFIG to Qwen3's tokenizer_config.json to compare with its template")
    return load_qwen3_tokenizer(module_tmp("qwen3") / "tokenizer")


def test_qwen3_chat_renders_qwen3s_non_thinking_format():
    """Qwen3's non-thinking text: the empty think block opens the last reply only."""
    messages = [
        Message("system", "Be brief."),
        Message("user", "<image>\nColour?"),
        Message("assistant", "Red."),
        Message("user", "Shape?"),
        Message("assistant", "A circle."),
    ]
    text, spans = load_template("qwen3_chat").render(messages)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image>\nColour?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n"
        "<|im_start|>user\nShape?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA circle.<|im_end|>\n"
    )
    assert [text[start:end] for start, end in spans] == ["Red.<|im_end|>", "A circle.<|im_end|>"]


def qwen3_reference(tokenizer, messages: list[Message], **options) -> list[int]:
    """Ids from Qwen3's own chat template (``apply_chat_template``)."""
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    encoding = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True, **options)
    return list(encoding["input_ids"])


SYSTEM_TURN = Message("system", "You are a helpful assistant.")
TRAINING_CONVERSATIONS = {
    "single_turn": [Message("user", "Hello"), Message("assistant", "Hi there.")],
    "system": [SYSTEM_TURN, Message("user", "Hello"), Message("assistant", "Hi there.")],
    "history": [
        Message("user", "Hello"),
        Message("assistant", "Hi there."),
        Message("user", "What is 2+2?"),
        Message("assistant", "2 + 2 = 4."),
        Message("user", "And 3+3?"),
        Message("assistant", "6"),
    ],
    "system_and_history": [
        SYSTEM_TURN,
        Message("user", "Hello"),
        Message("assistant", "Hi there."),
        Message("user", "Bye"),
        Message("assistant", "Goodbye!"),
    ],
    "images": [
        Message("user", "<image>\nWhat colour is it?"),
        Message("assistant", "Red."),
        Message("user", "And this one?\n<image>"),
        Message("assistant", "Blue, with a white stripe."),
    ],
}


@pytest.mark.parametrize("name", TRAINING_CONVERSATIONS)
def test_qwen3_chat_training_ids_equal_qwen3_template(qwen3_tokenizer, name):
    messages = TRAINING_CONVERSATIONS[name]
    conv = tokenize_conversation(messages, load_template("qwen3_chat"), qwen3_tokenizer, image_seq_length=1)
    assert conv.input_ids == qwen3_reference(qwen3_tokenizer, messages)
    # the empty think block opens the last reply only, as in Qwen3's template
    assert conv.input_ids.count(THINK) == 1 and conv.input_ids.count(END_THINK) == 1
    # learned: every reply and its <|im_end|>, nothing else (not the think block, not the separator)
    replies = [m.content for m in messages if m.role == "assistant"]
    expected = [i for reply in replies for i in qwen3_tokenizer(reply, add_special_tokens=False).input_ids + [IM_END]]
    learned = [token for token, label in zip(conv.input_ids, conv.labels, strict=True) if label != IGNORE_INDEX]
    assert learned == expected
    assert all(label in (token, IGNORE_INDEX) for token, label in zip(conv.input_ids, conv.labels, strict=True))
    block = conv.input_ids.index(THINK)
    assert conv.input_ids[block : block + 4] == [THINK, NL_NL, END_THINK, NL_NL]
    assert conv.labels[block : block + 4] == [IGNORE_INDEX] * 4  # part of the prompt, as at inference
    assert conv.labels[block + 4] != IGNORE_INDEX  # the last reply is learned from its first token


@pytest.mark.parametrize("history", [0, 1, 2])
@pytest.mark.parametrize("system", [False, True])
def test_qwen3_chat_generation_prompt_equals_non_thinking_prompt(qwen3_tokenizer, history, system):
    messages = [SYSTEM_TURN] if system else []
    for turn in range(history):
        messages += [Message("user", f"<image>\nQuestion {turn}?"), Message("assistant", f"Answer {turn}.")]
    messages.append(Message("user", "<image>\nWhat colour is it?"))
    conv = tokenize_conversation(messages, load_template("qwen3_chat"), qwen3_tokenizer, image_seq_length=1)
    reference = qwen3_reference(qwen3_tokenizer, messages, add_generation_prompt=True, enable_thinking=False)
    assert conv.input_ids == reference
    assert conv.input_ids[-7:] == [IM_START, ASSISTANT, NL, THINK, NL_NL, END_THINK, NL_NL]
    assert conv.labels[-7:] == [IGNORE_INDEX] * 7  # the header and the block are prompt
    assert conv.num_images == history + 1


def test_qwen3_chat_has_no_default_system_prompt():
    text, _ = load_template("qwen3_chat").render([Message("user", "Hello")])
    assert text == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_templates_without_final_reply_header_render_as_before():
    # the field defaults to empty: every other shipped template keeps its text bit for bit
    messages = [Message("user", "Hello"), Message("assistant", "Hi"), Message("user", "Bye")]
    text, _ = load_template("qwen_chat").render(messages)
    assert text.endswith("<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    assert all(load_template(name).final_reply_header == "" for name in available_templates() if name != "qwen3_chat")


def test_minigpt4qwen_wraps_each_image_in_img_tags(tokenizer):
    """MiniGPT4Qwen's prompt (Coobiw/MiniGPT4Qwen test_model_chat.py): ChatML, its system prompt, <Img>...</Img>."""
    template = load_template("minigpt4qwen")
    messages = [Message("user", "<image> What is in the image?"), Message("assistant", "A cat.")]
    assert template.render(messages)[0] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<Img><image></Img> What is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
    )
    conv = tokenize_conversation(messages, template, tokenizer, image_seq_length=32)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    first = conv.input_ids.index(image_id)
    assert conv.input_ids[first : first + 32] == [image_id] * 32 and conv.input_ids.count(image_id) == 32
    img_open, img_close = (tokenizer(tag, add_special_tokens=False).input_ids for tag in ("<Img>", "</Img>"))
    assert conv.input_ids[first - len(img_open) : first] == img_open
    assert conv.input_ids[first + 32 : first + 32 + len(img_close)] == img_close
    learned = [token for token, label in zip(conv.input_ids, conv.labels, strict=True) if label != IGNORE_INDEX]
    assert learned == tokenizer("A cat.", add_special_tokens=False).input_ids + [IM_END]
