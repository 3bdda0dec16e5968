from conftest import tiny_image_processor
from PIL import Image
from transformers import LlavaProcessor

from vltool.constants import IGNORE_INDEX
from vltool.data.tokenization import tokenize_conversation
from vltool.templates import load_template
from vltool.templates.message import Message

IMAGE_ID = 151646


def test_images_expand_to_projector_token_count(tokenizer):
    messages = [Message("user", "<image>\nfirst <image> second"), Message("assistant", "ok")]
    conv = tokenize_conversation(messages, load_template("qwen_chat"), tokenizer, image_seq_length=5)
    assert conv.input_ids.count(IMAGE_ID) == 10
    assert conv.num_images == 2
    assert all(conv.labels[i] == IGNORE_INDEX for i, t in enumerate(conv.input_ids) if t == IMAGE_ID)
    runs = "".join("I" if t == IMAGE_ID else "." for t in conv.input_ids)
    assert runs.count("IIIII") == 2 and "IIIIII" not in runs.replace("IIIII.", "")


def test_ids_equal_hugging_face_llava_processor(tokenizer):
    """The ids for a prompt are those LlavaProcessor produces for the same rendered text."""
    template = load_template("qwen_chat")
    messages = [Message("user", "<image>\nWhat is in the picture?\n\n  Be brief."), Message("assistant", "A dog.")]
    conv = tokenize_conversation(messages, template, tokenizer, image_seq_length=16)
    text, _ = template.render(messages)
    processor = LlavaProcessor(
        image_processor=tiny_image_processor(32),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    hf = processor(text=text, images=[Image.new("RGB", (40, 30), "red")], return_tensors="pt")
    assert hf["input_ids"][0].tolist() == conv.input_ids


def test_truncation_never_splits_an_image(tokenizer):
    template = load_template("qwen_chat")
    messages = [Message("user", "look <image> and <image>"), Message("assistant", "done " * 20)]
    full = tokenize_conversation(messages, template, tokenizer, image_seq_length=8)
    second_image_start = [i for i, t in enumerate(full.input_ids) if t == IMAGE_ID][8]
    cut = tokenize_conversation(messages, template, tokenizer, 8, max_length=second_image_start + 3)
    assert cut.truncated
    assert len(cut.input_ids) == second_image_start  # moved back before the split image
    assert cut.num_images == 1 and cut.input_ids.count(IMAGE_ID) == 8
    untouched = tokenize_conversation(messages, template, tokenizer, 8, max_length=len(full.input_ids))
    assert not untouched.truncated and untouched.input_ids == full.input_ids
