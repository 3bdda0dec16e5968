"""A Qwen3 LLaVA (the shipped recipe's model, tiny) exports to the huggingface format and computes the same there.

``LlavaForConditionalGeneration`` takes any causal LM config as ``text_config``; Qwen3 differs from
Qwen2 in its per-head q/k RMSNorm and a ``head_dim`` that need not be ``hidden_size / heads``
(128 with 16 heads of a 1024-wide Qwen3-0.6B), so the tiny model keeps both.
"""

import pytest
import torch
from conftest import TINY_QWEN2, TINY_VISION, tiny_image_processor
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from vltool.convert.huggingface import save_huggingface
from vltool.data.images import ImageTransform
from vltool.engine.config import load_config
from vltool.infer.load import load_pipeline
from vltool.infer.pipeline import Pipeline
from vltool.model.builder import build_model
from vltool.model.tokenizer import add_image_token, load_qwen2_tokenizer
from vltool.templates import load_template
from vltool.templates.message import Message

RECIPE = "qwen3_0_6b_clip_l14_336_finetune"
# head_dim 32 with 4 heads of a 64-wide model: decoupled as in the real Qwen3 sizes
TINY_QWEN3 = {**{k: v for k, v in TINY_QWEN2.items() if k != "tie_word_embeddings"}, "head_dim": 32}
QUESTION = [Message("user", "<image>\nWhat colour is it?")]


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    """Qwen2's BPE (which Qwen3 shares) with Qwen3's think markers added and ``<image>``."""
    tokenizer = load_qwen2_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    add_image_token(tokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    """Non-square (padding to square matters): red left, blue right."""
    image = Image.new("RGB", (80, 56), "red")
    image.paste(Image.new("RGB", (40, 56), "blue"), (40, 0))
    return image


def tiny_recipe_model(tokenizer, tie_word_embeddings: bool):
    """The recipe's model through ``build_model``, its hub parts swapped for tiny random ones of the same classes."""
    cfg = load_config(RECIPE)
    assert cfg.template == "qwen3_chat"
    assert cfg.model.llm.pretrained_model_name_or_path == "Qwen/Qwen3-0.6B"
    cfg.model.vision_encoder.model = dict(type=CLIPVisionModel, config=CLIPVisionConfig(image_size=32, **TINY_VISION))
    config = Qwen3Config(**TINY_QWEN3, tie_word_embeddings=tie_word_embeddings)
    cfg.model.llm = dict(type=Qwen3ForCausalLM, config=config)
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer).eval()
    with torch.no_grad():  # norms start at exactly 1: move every weight so a dropped or swapped one shows
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model, load_template(cfg.template)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def exported(request, qwen3_tokenizer, module_tmp):
    """A tiny Qwen3 LLaVA, written as huggingface; tied embeddings as Qwen3-0.6B/1.7B, untied as Qwen3-8B."""
    model, template = tiny_recipe_model(qwen3_tokenizer, tie_word_embeddings=request.param)
    save_dir = module_tmp("qwen3_hf")
    processor = tiny_image_processor(32)
    save_huggingface(model, qwen3_tokenizer, processor, "pad", template, save_dir, torch.float32, "2GB")
    pipeline = Pipeline(model, qwen3_tokenizer, template, ImageTransform(processor, "pad"))
    return pipeline, save_dir


def test_plain_transformers_gives_vltools_logits(exported, picture):
    pipeline, save_dir = exported
    hf = LlavaForConditionalGeneration.from_pretrained(save_dir, dtype=torch.float32).eval()
    assert hf.config.text_config.model_type == "qwen3" and hf.config.text_config.head_dim == 32
    assert hf.config.text_config.tie_word_embeddings == pipeline.model.llm.config.tie_word_embeddings
    processor = AutoProcessor.from_pretrained(save_dir)
    pixels = pipeline.image_transform([picture])
    assert torch.equal(processor.image_processor(picture, return_tensors="pt")["pixel_values"], pixels)
    input_ids, attention_mask = pipeline.encode([QUESTION])
    think = pipeline.tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    assert input_ids[0, -4:].tolist() == [think[0], 271, think[1], 271]  # the prompt ends in the empty think block
    with torch.no_grad():
        expected = pipeline.model(input_ids, attention_mask, pixels)
        actual = hf(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_vltool_reads_the_export_back_with_its_template(exported, picture):
    pipeline, save_dir = exported
    loaded = load_pipeline(save_dir, dtype=torch.float32)
    assert loaded.template == pipeline.template  # final_reply_header travels in vltool_template.json
    input_ids, attention_mask = loaded.encode([QUESTION])
    assert torch.equal(input_ids, pipeline.encode([QUESTION])[0])
    pixels = loaded.image_transform([picture])
    with torch.no_grad():
        expected = pipeline.model(input_ids, attention_mask, pixels)
        actual = loaded.model(input_ids, attention_mask, pixels)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_exported_chat_template_gives_vltools_prompt(exported, picture):
    pipeline, save_dir = exported
    processor = AutoProcessor.from_pretrained(save_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    plain = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, return_dict=False)
    ids = processor(images=[picture], text=plain, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, pipeline.encode([QUESTION])[0])
