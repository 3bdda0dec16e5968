"""``--save-format huggingface``: plain transformers reproduces vltool's prompt ids, pixels, logits and answers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, CLIPImageProcessor, LlavaForConditionalGeneration

from tests.convert.trained_runs import QUESTION, assert_same_logits, inputs, variant_config
from vltool.convert.pth_to_hf import convert_checkpoint
from vltool.data.images import ImageTransform, load_image
from vltool.errors import ConfigError
from vltool.infer.load import load_pipeline
from vltool.infer.pipeline import GenerationOptions, Pipeline
from vltool.templates import load_template
from vltool.templates.message import Message

PLAIN_SCRIPT = Path(__file__).with_name("plain_transformers_llava.py")


def run_plain_transformers(model_dir: Path, image_path: Path, out: Path) -> dict:
    """What a user without vltool computes: apply_chat_template, logits, greedy generate (a fresh process)."""
    result = subprocess.run(
        [sys.executable, str(PLAIN_SCRIPT), str(model_dir), str(image_path), str(out), QUESTION],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


def vltool_pipeline(model, tokenizer) -> Pipeline:
    """vltool's inference path over the live trained model, as the demo config builds its inputs."""
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    return Pipeline(model, tokenizer, load_template("qwen_chat"), ImageTransform(processor, "pad"))


def test_plain_transformers_reproduces_vltool(runs, tokenizer, image_path, tmp_path):
    run = runs("full")
    convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "hf", save_format="huggingface", fp32=True)
    plain = run_plain_transformers(tmp_path / "hf", image_path, tmp_path / "plain.pt")

    pipeline = vltool_pipeline(run.model, tokenizer)
    image = load_image(image_path)
    input_ids, attention_mask, pixels = inputs(pipeline, image)
    assert torch.equal(plain["input_ids"], input_ids)  # chat template + processor = vltool's template
    assert torch.equal(plain["pixel_values"], pixels)  # padded to square with the same colour
    with torch.no_grad():
        logits = run.model(input_ids, attention_mask, pixels)
    torch.testing.assert_close(plain["logits"], logits, atol=1e-5, rtol=0)

    stops = [tokenizer.convert_tokens_to_ids(word) for word in pipeline.template.stop_words]
    vltool_tokens = run.model.generate(
        input_ids, attention_mask, pixels, max_new_tokens=12, do_sample=False, eos_token_id=stops, pad_token_id=0
    )[0]
    assert plain["new_tokens"].tolist() == vltool_tokens.tolist()
    answer = pipeline.answer(
        [[Message("user", f"<image>\n{QUESTION}")]], [[image]], GenerationOptions(max_new_tokens=12)
    )[0]
    plain_text = tokenizer.decode(plain["new_tokens"])
    assert plain_text.split("<|im_end|>")[0].split("<|endoftext|>")[0].strip() == answer


def test_export_layout_and_loading_back_in_vltool(runs, image, tmp_path):
    run = runs("full")
    convert_checkpoint(
        str(run.config), run.checkpoint, tmp_path / "hf", save_format="huggingface", max_shard_size="30MB"
    )
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["dtype"] == "bfloat16"
    assert config["image_token_index"] == 151646 and config["image_seq_length"] == 64
    assert config["vision_feature_layer"] == -1 and config["vision_feature_select_strategy"] == "default"
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]  # the template's stop words end generation
    template = (tmp_path / "hf" / "chat_template.jinja").read_text()
    assert "You are Qwen, created by Alibaba Cloud." in template  # the system prompt travels with it
    # vltool reads its own exports in this format too (bf16 weights: bf16 tolerance)
    loaded = load_pipeline(tmp_path / "hf", dtype=torch.float32)
    assert_same_logits(run.model, loaded, image, atol=0.1)


@pytest.mark.parametrize("kind", ["pretrain", "lora"])
def test_pretrain_and_lora_runs_export(runs, kind, image, tmp_path):
    run = runs(kind)
    convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "hf", save_format="huggingface", fp32=True)
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert not [name for name, _ in hf.named_parameters() if "lora" in name]
    assert_same_logits(run.model, load_pipeline(tmp_path / "hf"), image)


def test_qlora_adapters_merge_into_the_unquantised_base(runs, bases, tmp_path):
    run = runs("qlora")
    convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "vl", fp32=True)
    convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "hf", save_format="huggingface", fp32=True)
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    # plain PEFT: the exported adapter on the full-precision base, merged
    expected = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(bases[0]), tmp_path / "vl" / "llm_adapter"
    )
    expected = expected.merge_and_unload().state_dict()
    exported = hf.model.language_model.state_dict()
    for name, value in exported.items():
        torch.testing.assert_close(value, expected[f"model.{name}"], atol=1e-6, rtol=0, msg=name)
    assert not any("lora" in name for name in exported)


@pytest.mark.parametrize(
    "projector", ["vltool.model.projectors.ResamplerProjector", "vltool.model.projectors.LayerNormMLPProjector"]
)
def test_projectors_llava_cannot_hold_point_to_the_vltool_format(data, projector, tmp_path):
    cfg = variant_config("full", data)
    cfg.model.projector = dict(type=projector)
    config_file = tmp_path / "config.py"
    cfg.dump(config_file)
    unused = tmp_path / "never_read.pth"
    with pytest.raises(ConfigError, match=r"holds only LLaVA's two-layer GELU MLP projector.*--save-format vltool"):
        convert_checkpoint(str(config_file), unused, tmp_path / "hf", save_format="huggingface")
