"""The exported LlavaProcessor prompts and preprocesses exactly as vltool does."""

import pytest
import torch
from conftest import ASSETS, tiny_image_processor
from jinja2 import TemplateError
from PIL import Image
from transformers import AutoProcessor, SiglipImageProcessor, SiglipImageProcessorPil

from vltool.convert.hf_processor import chat_template, llava_image_processor, llava_processor
from vltool.data.images import ImageTransform, load_image
from vltool.data.tokenization import tokenize_conversation
from vltool.errors import ConfigError
from vltool.templates import Template, available_templates, load_template
from vltool.templates.message import Message

IMAGE = object()  # stands for one image in CONVERSATIONS
PHOTOS = ("extreme_ironing.jpg", "waterview.jpg")  # 570x380 and 1000x667: padding matters

# (role, parts): a part is text or IMAGE
CONVERSATIONS = {
    "one_image": [("user", [IMAGE, "What is unusual about this image?"])],
    "two_images_one_turn": [("user", [IMAGE, IMAGE, "Compare the two pictures."])],
    "image_in_second_turn": [
        ("user", ["Hello!"]),
        ("assistant", ["Hi, how can I help?"]),
        ("user", ["Look: ", IMAGE, "What is it?"]),
    ],
    "text_only": [("user", ['Quote "this" {input} {n} {{x}} {% raw %} and\nthat.'])],
    "multi_turn_replies": [
        ("user", [IMAGE, "Describe it."]),
        ("assistant", ["A man irons clothes on a taxi."]),
        ("user", ["Why?", IMAGE]),
        ("assistant", ["No one knows."]),
    ],
    "custom_system": [("system", ["You are terse. 简洁。"]), ("user", [IMAGE, "What?"])],
}

SIGLIP_SIZE = {"height": 48, "width": 48}
# CLIP-like: 32 px, patch 8, CLS dropped -> 16 tokens; SigLIP-like: 48 px, patch 8, all -> 36 tokens
SETUPS = {
    "clip": dict(processor=lambda: tiny_image_processor(32), strategy="default", additional=1, seq_len=16),
    "siglip": dict(processor=lambda: SiglipImageProcessor(size=SIGLIP_SIZE), strategy="full", additional=0, seq_len=36),
}


def hf_messages(conversation) -> list[dict]:
    """Transformers' list form: images as {"type": "image"} items."""
    return [
        {
            "role": role,
            "content": [{"type": "image"} if part is IMAGE else {"type": "text", "text": part} for part in parts],
        }
        for role, parts in conversation
    ]


def vltool_messages(conversation) -> list[Message]:
    """vltool's string form: each image item is "<image>\n", LLaVA's convention."""
    return [Message(role, "".join("<image>\n" if p is IMAGE else p for p in parts)) for role, parts in conversation]


def photos() -> list[Image.Image]:
    return [load_image(ASSETS / "images" / name) for name in PHOTOS]


def make_processor(tokenizer, template_name: str, setup: str, aspect: str = "pad"):
    s = SETUPS[setup]
    return llava_processor(
        tokenizer, s["processor"](), aspect, load_template(template_name), 8, s["strategy"], s["additional"]
    )


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("template_name", available_templates())
def test_chat_template_renders_like_template(tokenizer, template_name, name):
    template = load_template(template_name)
    processor = make_processor(tokenizer, template_name, "clip")
    expected = template.render(vltool_messages(CONVERSATIONS[name]))[0]
    as_list = hf_messages(CONVERSATIONS[name])
    as_string = [{"role": m.role, "content": m.content} for m in vltool_messages(CONVERSATIONS[name])]
    for messages in (as_list, as_string):
        assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected
        # the user format already opens the assistant's reply: the generation prompt adds nothing
        assert processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False) == expected


def test_chat_template_escapes_awkward_template_strings(tokenizer):
    """Quotes, backslashes, newlines, Jinja syntax and non-ASCII in a template survive as text."""
    awkward = Template(
        name="awkward",
        description="",
        prefix="{% if x %}\"'\\n\\{{ bos }}#}\n",
        system="[{system}|{system}] 😀\t",
        default_system="{%- endfor -%}",
        user="U{{ {input} }}%}\r\n",
        assistant="A'{output}'",
        separator="\\\n",
        image="<{n}:<image>:{n}>",
        stop_words=(),
    )
    conversation = CONVERSATIONS["multi_turn_replies"]
    expected = awkward.render(vltool_messages(conversation))[0]
    processor = make_processor(tokenizer, "qwen_chat", "clip")
    rendered = processor.apply_chat_template(
        hf_messages(conversation), chat_template=chat_template(awkward), add_generation_prompt=True, tokenize=False
    )
    assert rendered == expected


def test_chat_template_rejects_unknown_content_items(tokenizer):
    processor = make_processor(tokenizer, "qwen_chat", "clip")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}]
    with pytest.raises(TemplateError, match="unsupported content item type video"):
        processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("template_name", ["qwen_chat", "qwen_vl"])
def test_ids_equal_tokenize_conversation(tokenizer, template_name, setup):
    template = load_template(template_name)
    processor = make_processor(tokenizer, template_name, setup)
    for name, conversation in CONVERSATIONS.items():
        messages = vltool_messages(conversation)
        expected = tokenize_conversation(messages, template, tokenizer, SETUPS[setup]["seq_len"]).input_ids
        images = photos()[:1] * sum(part is IMAGE for _, parts in conversation for part in parts)
        text = template.render(messages)[0]
        got = processor(text=text, images=images or None)["input_ids"][0]
        assert list(got) == expected, name


@pytest.mark.parametrize("image_key", ["image", "path"])
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_apply_chat_template_gives_vltool_ids_and_pixels(tokenizer, setup, image_key):
    """The whole user path: list-form messages with PIL images or file paths in, ids and pixels out."""
    template = load_template("qwen_vl")
    processor = make_processor(tokenizer, "qwen_vl", setup)
    conversation = CONVERSATIONS["multi_turn_replies"] + [("user", ["And these?", IMAGE, IMAGE])]
    paths = [ASSETS / "images" / name for name in PHOTOS + PHOTOS[::-1]]
    messages = hf_messages(conversation)
    image_items = iter(paths)
    for message in messages:
        for item in message["content"]:
            if item["type"] == "image":
                path = next(image_items)
                item[image_key] = load_image(path) if image_key == "image" else str(path)
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    seq_len = SETUPS[setup]["seq_len"]
    expected = tokenize_conversation(vltool_messages(conversation), template, tokenizer, seq_len).input_ids
    assert out["input_ids"][0].tolist() == expected
    vltool_pixels = ImageTransform(SETUPS[setup]["processor"](), "pad")([load_image(path) for path in paths])
    assert torch.equal(out["pixel_values"], vltool_pixels)


@pytest.mark.parametrize("aspect", ["pad", "resize"])
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_pixels_equal_image_transform(setup, aspect):
    source = SETUPS[setup]["processor"]()
    expected = ImageTransform(source, aspect)(photos())  # [2, 3, H, W]
    got = llava_image_processor(source, aspect)(photos(), return_tensors="pt")["pixel_values"]
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def test_round_trip_through_auto_processor(tokenizer, tmp_path):
    processor = make_processor(tokenizer, "qwen_vl", "siglip")
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "LlavaProcessor"
    assert loaded.chat_template == processor.chat_template
    conversation = CONVERSATIONS["two_images_one_turn"]
    text = load_template("qwen_vl").render(vltool_messages(conversation))[0]
    before = processor(text=text, images=photos(), return_tensors="pt")
    after = loaded(text=text, images=photos(), return_tensors="pt")
    assert torch.equal(before["input_ids"], after["input_ids"])
    assert torch.equal(before["pixel_values"], after["pixel_values"])
    prompt = loaded.apply_chat_template(hf_messages(conversation), add_generation_prompt=True, tokenize=False)
    assert prompt == text


def unnormalised(pixels: torch.Tensor, processor) -> torch.Tensor:
    """``[3, H, W]`` normalised pixels back to 0-255 values."""
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    return (pixels * std + mean) * 255


def test_padding_colour_is_truncated_mean():
    """LLaVA pads with int(mean * 255): 122,116,104 for CLIP's mean (rounding would give 123,117,104)."""
    source = tiny_image_processor(32)
    wide = Image.new("RGB", (64, 32), (255, 0, 0))  # padded to 64x64: 16 rows of border above and below
    transform = ImageTransform(source, "pad")
    assert transform.background == (122, 116, 104)
    exported = llava_image_processor(source, "pad")([wide], return_tensors="pt")["pixel_values"]
    for pixels in (transform([wide])[0], exported[0]):
        top_left = unnormalised(pixels, source)[:, 0, 0]
        assert torch.allclose(top_left, torch.tensor([122.0, 116.0, 104.0]), atol=1e-3)


class OwnWayProcessor(SiglipImageProcessorPil):
    def _preprocess(self, images, **kwargs):
        return super()._preprocess(images[::-1], **kwargs)


def test_inexpressible_processors_raise_config_error():
    varying = tiny_image_processor(32)
    varying.do_center_crop = False  # shortest_edge resize alone keeps the aspect ratio: sizes vary
    with pytest.raises(ConfigError, match="varying size"):
        llava_image_processor(varying, "pad")
    with pytest.raises(ConfigError, match="preprocesses in its own way"):
        llava_image_processor(OwnWayProcessor(size={"height": 32, "width": 32}), "pad")
    with pytest.raises(ConfigError, match="aspect mode 'crop'"):
        llava_image_processor(tiny_image_processor(32), "crop")


def test_processor_rejects_unknown_strategy(tokenizer):
    with pytest.raises(ConfigError, match="vision_feature_select_strategy 'cls'"):
        llava_processor(tokenizer, tiny_image_processor(32), "pad", load_template("qwen_chat"), 8, "cls", 1)
