import pytest

from vltool.constants import IGNORE_INDEX
from vltool.data.tokenization import tokenize_conversation
from vltool.errors import ConfigError
from vltool.templates import available_templates, load_template
from vltool.templates.message import Message

IM_START, IM_END, NL = 151644, 151645, 198
SYSTEM, USER, ASSISTANT = 8948, 872, 77091
HELPFUL = [2610, 525, 264, 10950, 17847, 13]  # "You are a helpful assistant."


def test_all_shipped_templates_load():
    names = available_templates()
    assert set(names) == {"qwen_chat", "qwen_vl", "vicuna", "llama3_chat", "internlm2_chat", "plain"}
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
