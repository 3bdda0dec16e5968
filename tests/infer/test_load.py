"""Loading for inference: XTuner-style parts and quantised LLMs, compared with in-memory models."""

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForCausalLM, CLIPConfig, CLIPModel, CLIPVisionModel

from tests.conftest import TINY_VISION, tiny_clip, tiny_image_processor, tiny_qwen2
from tests.convert.trained_runs import assert_same_logits, inputs
from tests.engine.train_runs import vltool_command
from vltool.convert.huggingface import save_huggingface
from vltool.convert.vltool_format import projector_spec, save_projector, save_vltool
from vltool.errors import ConfigError
from vltool.infer.load import load_parts_pipeline, load_pipeline
from vltool.infer.pipeline import GenerationOptions, Pipeline
from vltool.model.projectors import MLPProjector
from vltool.model.tokenizer import load_qwen2_tokenizer
from vltool.model.vision_encoder import VisionEncoder
from vltool.model.vlm import VisionLanguageModel
from vltool.templates import load_template
from vltool.templates.message import Message

PROJECTOR_KWARGS = {"in_features": 32, "out_features": 64, "depth": 2}


@dataclass
class Parts:
    """Tiny random parts saved as XTuner's workflow leaves them, and the models they must reproduce."""

    llm: Path  # base LLM with its tokenizer (no <image> yet)
    encoder: Path  # CLIP vision tower with its image processor
    llava: Path  # llm_adapter/ + projector/ (vltool layout)
    with_adapter: VisionLanguageModel  # what llm + encoder + llava compute
    base: VisionLanguageModel  # the same without the LLM adapter


def fresh_llm(parts: Parts) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(parts.llm, dtype=torch.float32)


@pytest.fixture(scope="module")
def parts(module_tmp) -> Parts:
    root = module_tmp("parts")
    tokenizer = load_qwen2_tokenizer()
    torch.manual_seed(0)
    llm, vision = tiny_qwen2(), tiny_clip()
    projector = MLPProjector(**PROJECTOR_KWARGS)
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    vision.save_pretrained(root / "clip")
    tiny_image_processor().save_pretrained(root / "clip")
    (root / "llava").mkdir()
    save_projector(projector, projector_spec(projector, PROJECTOR_KWARGS), root / "llava" / "projector", torch.float32)
    image_token_id = len(tokenizer)  # <image> is the next token the loader adds
    base = VisionLanguageModel(VisionEncoder(vision), projector, llm, image_token_id).eval()
    # random B (init_lora_weights=False) so the adapter changes the logits
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "llm", dtype=torch.float32), config)
    adapted.save_pretrained(root / "llava" / "llm_adapter")
    with_adapter = VisionLanguageModel(VisionEncoder(vision), projector, adapted, image_token_id).eval()
    return Parts(root / "llm", root / "clip", root / "llava", with_adapter, base)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    picture = Image.new("RGB", (48, 32), "red")
    picture.paste(Image.new("RGB", (24, 32), "blue"), (24, 0))
    return picture


def load_parts(parts: Parts, llava: Path | None = None, **options) -> Pipeline:
    options = {"visual_encoder": str(parts.encoder), "dtype": torch.float32, "template": "qwen_chat", **options}
    return load_parts_pipeline(str(parts.llm), llava or parts.llava, **options)


def test_parts_with_llm_adapter_match_the_assembled_model(parts, image):
    loaded = load_parts(parts)
    assert isinstance(loaded.model.llm, PeftModel)
    assert isinstance(loaded.model.projector, MLPProjector) and loaded.template.name == "qwen_chat"
    assert loaded.model.image_token_id == loaded.tokenizer.convert_tokens_to_ids("<image>") == 151646
    # Qwen2's spare embedding rows hold <image>: nothing is resized
    assert loaded.model.llm.get_input_embeddings().num_embeddings == 151936
    assert_same_logits(parts.with_adapter, loaded, image)


def write_xtuner_projector(folder: Path, sequential: nn.Sequential, bias: bool, weights_file: str) -> None:
    """The layout of XTuner's ``ProjectorModel.save_pretrained``: an ``nn.Sequential`` under ``model.``."""
    folder.mkdir(parents=True)
    config = {
        "architectures": ["ProjectorModel"],
        "model_type": "projector",
        "visual_hidden_size": 32,
        "llm_hidden_size": 64,
        "depth": 2,
        "hidden_act": "gelu",
        "bias": bias,
    }
    (folder / "config.json").write_text(json.dumps(config))
    state = {f"model.{name}": value.contiguous() for name, value in sequential.state_dict().items()}
    if weights_file.endswith(".safetensors"):
        save_file(state, folder / weights_file)
    else:
        torch.save(state, folder / weights_file)


@pytest.mark.parametrize(("bias", "weights_file"), [(True, "model.safetensors"), (False, "pytorch_model.bin")])
def test_xtuner_projector_and_encoder_inside_llava_dir(parts, image, tmp_path, bias, weights_file):
    torch.manual_seed(1)
    sequential = nn.Sequential(nn.Linear(32, 64, bias=bias), nn.GELU(), nn.Linear(64, 64, bias=bias))
    write_xtuner_projector(tmp_path / "llava" / "projector", sequential, bias, weights_file)
    shutil.copytree(parts.encoder, tmp_path / "llava" / "visual_encoder")  # XTuner saves the full encoder here
    loaded = load_parts(parts, tmp_path / "llava", visual_encoder=None)
    assert not isinstance(loaded.model.llm, PeftModel)  # no llm_adapter/ in this folder
    reference = VisionLanguageModel(
        VisionEncoder(parts.base.vision_encoder.model), sequential, fresh_llm(parts), parts.base.image_token_id
    )
    assert_same_logits(reference.eval(), loaded, image)


def test_full_clip_as_visual_encoder_gives_its_vision_half(parts, tmp_path):
    clip = CLIPModel(CLIPConfig(vision_config={"image_size": 32, **TINY_VISION}, text_config=TINY_VISION))
    clip.save_pretrained(tmp_path / "clip")
    tiny_image_processor().save_pretrained(tmp_path / "clip")
    vision = load_parts(parts, visual_encoder=str(tmp_path / "clip")).model.vision_encoder.model
    assert type(vision) is CLIPVisionModel
    torch.testing.assert_close(vision.state_dict(), clip.vision_model.state_dict(), atol=0, rtol=0)


def test_missing_parts_name_what_to_pass(parts, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty/projector is missing; --llava must name a folder"):
        load_parts(parts, tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"no vision encoder: .*llava has no visual_encoder/ folder; pass --visual"):
        load_parts(parts, visual_encoder=None)
    with pytest.raises(ConfigError, match=r"pass --prompt-template with one of .*qwen_chat"):
        load_parts(parts, template=None)
    with pytest.raises(ConfigError, match=r"select_strategy must be one of default, full .* got 'cls'"):
        load_parts(parts, select_strategy="cls")
    with pytest.raises(ConfigError, match=r"--llava .*nowhere is not a directory"):
        load_parts(parts, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"LLM .*nope: no tokenizer loads from it"):
        load_parts_pipeline(str(tmp_path / "nope"), parts.llava, str(parts.encoder), template="qwen_chat")
    # transformers 5 would build an empty tokenizer from an LLM folder without tokenizer files
    shutil.copytree(parts.llm, tmp_path / "weights_only", ignore=shutil.ignore_patterns("tokenizer*", "vocab.json"))
    with pytest.raises(ConfigError, match=r"LLM .*weights_only: no tokenizer loads from it \(tokenizer.json"):
        load_parts_pipeline(str(tmp_path / "weights_only"), parts.llava, str(parts.encoder), template="qwen_chat")
    shutil.copytree(parts.llava, tmp_path / "full")
    (tmp_path / "full" / "llm").mkdir()  # a fully fine-tuned LLM is the LLM to pass
    with pytest.raises(ConfigError, match=r"full/llm holds the fine-tuned LLM; pass it as the LLM instead of"):
        load_parts(parts, tmp_path / "full")
    shutil.copytree(parts.llava, tmp_path / "both")
    shutil.copytree(parts.encoder, tmp_path / "both" / "visual_encoder")
    with pytest.raises(ConfigError, match=r"holds the trained vision encoder; leave out --visual-encoder"):
        load_parts(parts, tmp_path / "both")


def test_unsupported_xtuner_projector_is_refused(parts, tmp_path):
    sequential = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))
    write_xtuner_projector(tmp_path / "llava" / "projector", sequential, True, "model.safetensors")
    config = json.loads((tmp_path / "llava" / "projector" / "config.json").read_text())
    (tmp_path / "llava" / "projector" / "config.json").write_text(json.dumps({**config, "hidden_act": "silu"}))
    with pytest.raises(ConfigError, match=r"hidden_act='silu' and depth=2 has no vltool equivalent"):
        load_parts(parts, tmp_path / "llava")


# ---- quantised LLMs


def save_settings() -> tuple:
    """Tokenizer (with ``<image>``), image processor, aspect and template, as a conversion saves them."""
    tokenizer = load_qwen2_tokenizer()
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return tokenizer, tiny_image_processor(), "pad", load_template("qwen_chat")


@pytest.fixture(scope="module")
def saved_models(parts, module_tmp) -> dict[str, Path]:
    """``parts.base`` saved in both formats of ``vltool convert pth_to_hf``."""
    root = module_tmp("saved")
    (root / "vltool").mkdir()
    save_vltool(parts.base, *save_settings(), PROJECTOR_KWARGS, {}, root / "vltool", torch.float32, "2GB")
    (root / "huggingface").mkdir()
    save_huggingface(parts.base, *save_settings(), root / "huggingface", torch.float32, "2GB")
    return {"vltool": root / "vltool", "huggingface": root / "huggingface"}


def load_quantized(kind: str, bits: int, parts: Parts, saved_models: dict[str, Path]) -> Pipeline:
    if kind == "parts":
        return load_parts(parts, bits=bits)
    return load_pipeline(saved_models[kind], dtype=torch.float32, bits=bits)


def quantized_layers(module: nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if type(m).__name__ in {"Linear4bit", "Linear8bitLt"}}


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kind", ["vltool", "huggingface", "parts"])
def test_bits_quantise_only_the_llm(parts, saved_models, image, kind, bits, caplog):
    loaded = load_quantized(kind, bits, parts, saved_models)
    model = loaded.model
    assert quantized_layers(model.llm) == {"Linear4bit" if bits == 4 else "Linear8bitLt"}
    assert quantized_layers(model.vision_encoder) == quantized_layers(model.projector) == set()
    assert type(model.llm.get_output_embeddings()) is nn.Linear
    reference = parts.with_adapter if kind == "parts" else parts.base
    input_ids, attention_mask, pixels = inputs(loaded, image)
    with torch.no_grad():
        expected = reference(input_ids, attention_mask, pixels)[0, -8:]  # [8, vocab]: the prompt's last positions
        actual = model(input_ids, attention_mask, pixels)[0, -8:]
    # random tiny weights give flat logits, so the check is closeness rather than equal argmaxes
    assert nn.functional.cosine_similarity(actual, expected, dim=-1).min() > 0.99
    assert "will be cast" not in caplog.text  # bitsandbytes' per-matmul 8-bit notice is filtered out


def test_parts_compute_in_one_dtype(parts, image):
    # bf16 asked for, but a 4-bit LLM on CPU computes in float32: the encoder and projector follow it
    loaded = load_parts(parts, dtype="bfloat16", bits=4)
    model = loaded.model
    assert {p.dtype for p in [*model.vision_encoder.parameters(), *model.projector.parameters()]} == {torch.float32}
    with torch.no_grad():
        assert model(*inputs(loaded, image)).isfinite().all()
    assert load_parts(parts, dtype="bfloat16").model.projector.linear_1.weight.dtype == torch.bfloat16


def test_invalid_bits_fail_before_loading(parts, saved_models):
    with pytest.raises(ConfigError, match=r"--bits 3 is not supported; use 4 or 8"):
        load_pipeline(saved_models["vltool"], bits=3)
    with pytest.raises(ConfigError, match=r"--bits 16 is not supported"):
        load_parts(parts, bits=16)


def test_qlora_adapter_loads_on_its_saved_quantisation(parts, tmp_path):
    # what `vltool convert pth_to_hf` keeps of a QLoRA run: the adapter, naming its quantised base
    quantization = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    bases = {"llm": {"base": str(parts.llm), "quantization": quantization}}
    save_dir = tmp_path / "model"
    save_dir.mkdir()
    save_vltool(parts.with_adapter, *save_settings(), PROJECTOR_KWARGS, bases, save_dir, torch.float32, "2GB")
    with pytest.raises(ConfigError, match=r"adapter was trained on a 4-bit base and loads on it; pass --bits 4"):
        load_pipeline(save_dir, bits=8)
    for bits in (None, 4):
        loaded = load_pipeline(save_dir, dtype=torch.float32, bits=bits)
        assert quantized_layers(loaded.model.llm) == {"Linear4bit"}
        assert isinstance(loaded.model.vision_encoder.model, CLIPVisionModel)


def test_chat_command_takes_xtuner_style_parts(parts, image, tmp_path):
    image.save(tmp_path / "picture.png")
    command = vltool_command(
        "chat", str(parts.llm), "--visual-encoder", str(parts.encoder), "--llava", str(parts.llava),
        "--prompt-template", "qwen_chat", "--image", str(tmp_path / "picture.png"),
        "--prompt", "What is it?", "--max-new-tokens", "6",
    )  # fmt: skip
    result = subprocess.run(command, capture_output=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    pipeline = load_parts(parts)
    options = GenerationOptions(max_new_tokens=6)
    expected = pipeline.answer([[Message("user", "<image>\nWhat is it?")]], [[image]], options)[0]
    assert result.stdout.decode() == expected + "\n"
