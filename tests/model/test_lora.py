"""LoRA and QLoRA: default targets, training, PEFT-format adapters, 4/8-bit loading, new token rows."""

import bitsandbytes as bnb
import pytest
import torch
from conftest import IMAGE_SIZE, TINY_VISION, tiny_clip, tiny_qwen2, tiny_qwen2_config
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, CLIPVisionConfig, CLIPVisionModel, Qwen2ForCausalLM

from vltool.constants import IGNORE_INDEX
from vltool.engine.precision import prepare_for_training
from vltool.errors import ConfigError
from vltool.model.builder import build_model
from vltool.model.lora import add_lora, float32_compute_without_cuda, prepare_quantized_llm, save_adapters
from vltool.model.projectors import MLPProjector
from vltool.model.quantization import PRESETS, quantized_llm_cfg
from vltool.model.vision_encoder import VisionEncoder

IMAGE_ID = 151646
SEED = 0


def qwen2_cfg(**overrides) -> dict:
    """A fresh tiny Qwen2 dict: the built model resizes its config in place, so never share one."""
    return dict(type=Qwen2ForCausalLM, config=tiny_qwen2_config(**overrides))


def model_cfg(llm: dict | None = None, **keys) -> dict:
    """A tiny model config: CLIP 32 px, a 2-layer Qwen2 (or ``llm``), an MLP projector."""
    return dict(
        vision_encoder=dict(
            type=VisionEncoder, model=dict(type=CLIPVisionModel, config=CLIPVisionConfig(image_size=32, **TINY_VISION))
        ),
        projector=dict(type=MLPProjector, depth=2),
        llm=llm or qwen2_cfg(),
        **keys,
    )


def seeded_build(cfg: dict, tokenizer):
    torch.manual_seed(SEED)  # the base weights depend only on the seed, not on the adapters added after
    return build_model(cfg, tokenizer)


def tiny_batch() -> dict[str, torch.Tensor]:
    """Two rows of one image (16 visual tokens) and 12 learned text tokens."""
    input_ids = torch.tensor([[151644] + [IMAGE_ID] * 16 + [1000, 1001, 1002] * 4] * 2)
    labels = input_ids.clone()
    labels[:, :17] = IGNORE_INDEX
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    return dict(input_ids=input_ids, labels=labels, pixel_values=pixel_values)


def train(vlm: nn.Module, steps: int = 10, lr: float = 5e-3) -> list[float]:
    """Plain AdamW on the trainable parameters over one fixed batch; returns the losses."""
    vlm.train()
    optimizer = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=lr)
    batch, losses = tiny_batch(), []
    for _ in range(steps):
        loss = vlm.loss(**batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    vlm.eval()
    return losses


def logits(model: nn.Module) -> torch.Tensor:
    """``[2, 12, vocab]`` next-token logits of ``model`` (an LLM) on text ids."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([[151644, 1000, 1001, 1002] * 3, [1002, 1001] * 6])).logits


def linear_names(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if type(module) is nn.Linear}


def lora_names(peft_model: PeftModel) -> set[str]:
    prefix = "base_model.model."
    return {n.removeprefix(prefix) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def test_default_targets_are_every_linear_but_the_lm_head(tokenizer):
    vlm = seeded_build(
        model_cfg(llm_lora=dict(type=LoraConfig, r=4), vision_encoder_lora=dict(type=LoraConfig, r=4)), tokenizer
    )
    llm_linears = linear_names(tiny_qwen2())
    assert len(llm_linears) == 2 * 7 + 1  # q k v o gate up down per layer, and the LM head
    assert lora_names(vlm.llm) == llm_linears - {"lm_head"}
    assert lora_names(vlm.vision_encoder.model) == linear_names(tiny_clip())  # a vision tower has no head
    assert len(lora_names(vlm.vision_encoder.model)) == 2 * 6  # q k v out fc1 fc2 per layer


@pytest.fixture(scope="module")
def lora_run(tokenizer):
    """A tiny VLM with LoRA on the LLM and the encoder, and its losses over 10 steps."""
    lora = dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.05)
    vlm = seeded_build(model_cfg(llm_lora=lora, vision_encoder_lora=lora), tokenizer)
    base_q_proj = vlm.llm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    losses = train(vlm)
    return vlm, losses, base_q_proj


def test_lora_trains_adapters_and_projector_only(lora_run):
    vlm, losses, base_q_proj = lora_run
    print(f"LoRA loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < losses[0] - 0.4
    trainable = [name for name, param in vlm.named_parameters() if param.requires_grad]
    assert trainable and all(name.startswith("projector.") or ".lora_" in name for name in trainable)
    assert any(name.startswith("vision_encoder.model.") for name in trainable)
    torch.testing.assert_close(
        vlm.llm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, base_q_proj, atol=0, rtol=0
    )


def test_saved_adapters_load_in_plain_peft(lora_run, tokenizer, tmp_path):
    vlm, _, _ = lora_run
    written = save_adapters(vlm, tmp_path / "live")
    assert written == [tmp_path / "live" / "llm_adapter", tmp_path / "live" / "vision_encoder_adapter"]
    save_adapters(vlm, tmp_path / "gathered", state_dict=vlm.trainable_state_dict())  # the ZeRO-3 path
    for folder in ("llm_adapter", "vision_encoder_adapter"):
        live = load_file(tmp_path / "live" / folder / "adapter_model.safetensors")
        gathered = load_file(tmp_path / "gathered" / folder / "adapter_model.safetensors")
        assert live.keys() == gathered.keys() and all(".lora_" in name for name in live)
        assert all(torch.equal(live[name], gathered[name]) for name in live)

    fresh = seeded_build(model_cfg(), tokenizer).eval()  # same seed, no adapters
    fresh.llm = PeftModel.from_pretrained(fresh.llm, tmp_path / "gathered" / "llm_adapter")
    fresh.vision_encoder.model = PeftModel.from_pretrained(
        fresh.vision_encoder.model, tmp_path / "gathered" / "vision_encoder_adapter"
    )
    torch.testing.assert_close(logits(fresh.llm), logits(vlm.llm), atol=1e-5, rtol=0)
    fresh.projector.load_state_dict(vlm.projector.state_dict())
    batch = tiny_batch()
    with torch.no_grad():
        expected = vlm(batch["input_ids"], pixel_values=batch["pixel_values"])
        torch.testing.assert_close(
            fresh(batch["input_ids"], pixel_values=batch["pixel_values"]), expected, atol=1e-5, rtol=0
        )


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer):
    grads = []
    for checkpointing in (False, True):
        vlm = seeded_build(
            model_cfg(llm_lora=dict(type=LoraConfig, r=4), llm_gradient_checkpointing=checkpointing), tokenizer
        ).train()
        assert vlm.llm.is_gradient_checkpointing == checkpointing
        vlm.loss(**tiny_batch()).backward()
        grads.append({n: p.grad for n, p in vlm.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name])


@pytest.fixture(scope="module")
def saved_qwen2(module_tmp):
    path = module_tmp("qwen2")
    torch.manual_seed(SEED)
    tiny_qwen2().save_pretrained(path)
    return path


def quantized_model_cfg(path, quantization) -> dict:
    """A tiny model config whose LLM loads from ``path`` with ``model.llm_quantization=quantization`` and LoRA r=8."""
    llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(path))
    lora = dict(type=LoraConfig, r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    return model_cfg(llm, llm_lora=lora, llm_quantization=quantization, freeze_llm=True)


def test_qlora_4bit_trains_and_its_adapter_loads_on_a_4bit_base(tokenizer, saved_qwen2, tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr("vltool.model.lora.print_log", lambda message, logger: logged.append(message))
    vlm = seeded_build(quantized_model_cfg(saved_qwen2, "nf4"), tokenizer)
    assert len(logged) == 1 and "float32" in logged[0]  # the CPU fallback says so, once
    decoder = vlm.llm.base_model.model.model
    quantized = [m.base_layer for m in decoder.modules() if isinstance(m, LoraLayer)]
    assert len(quantized) == 2 * 7 and all(type(layer) is bnb.nn.Linear4bit for layer in quantized)
    assert all(layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested for layer in quantized)
    assert all(layer.compute_dtype == torch.float32 for layer in quantized)

    losses = train(vlm)
    print(f"QLoRA 4-bit loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < losses[0] - 0.4

    save_adapters(vlm, tmp_path)
    assert not (tmp_path / "vision_encoder_adapter").exists()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(saved_qwen2, quantization_config=quantization, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, tmp_path / "llm_adapter")
    torch.testing.assert_close(logits(loaded), logits(vlm.llm), atol=1e-5, rtol=0)


def test_8bit_llm_builds_and_runs(tokenizer, saved_qwen2):
    vlm = seeded_build(quantized_model_cfg(saved_qwen2, "int8"), tokenizer).eval()
    quantized = [m.base_layer for m in vlm.llm.modules() if isinstance(m, LoraLayer)]
    assert len(quantized) == 2 * 7 and all(type(layer) is bnb.nn.Linear8bitLt for layer in quantized)
    assert quantized[0].weight.dtype == torch.int8
    batch = tiny_batch()
    with torch.no_grad():
        out = vlm(batch["input_ids"], pixel_values=batch["pixel_values"])
    assert out.shape == (2, 29, 151936) and torch.isfinite(out).all()


def test_a_settings_dict_quantizes_like_its_preset(tokenizer, saved_qwen2):
    settings = dict(type=BitsAndBytesConfig, load_in_4bit=True, bnb_4bit_quant_type="fp4")
    vlm = seeded_build(quantized_model_cfg(saved_qwen2, settings), tokenizer)
    layers = [m.base_layer for m in vlm.llm.modules() if isinstance(m, LoraLayer)]
    assert all(type(layer) is bnb.nn.Linear4bit and layer.weight.quant_state.quant_type == "fp4" for layer in layers)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (dict(llm_quantization="nf5"), "'nf5' is not one of nf4, int8"),
        (dict(llm_quantization=dict(bnb_4bit_quant_type="nf4")), "neither load_in_4bit nor load_in_8bit"),
        (dict(llm_quantization="nf4", llm_lora=None, freeze_llm=False), "cannot train its own weights"),
    ],
)
def test_bad_quantization_settings_are_one_line_errors(tokenizer, saved_qwen2, keys, message):
    cfg = {**quantized_model_cfg(saved_qwen2, "nf4"), **keys}
    with pytest.raises(ConfigError, match=message):
        build_model(cfg, tokenizer)


def test_quantization_written_into_the_llm_dict_is_refused(tokenizer):
    llm = dict(qwen2_cfg(), quantization_config=dict(type=BitsAndBytesConfig, load_in_4bit=True))
    with pytest.raises(ConfigError, match="set model.llm_quantization instead"):
        build_model(model_cfg(llm), tokenizer)


def test_float32_compute_only_without_cuda(monkeypatch):
    llm = quantized_llm_cfg(dict(type=AutoModelForCausalLM.from_pretrained), PRESETS["nf4"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert float32_compute_without_cuda(llm) == llm
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu = float32_compute_without_cuda(llm)
    assert on_cpu["dtype"] == on_cpu["quantization_config"]["bnb_4bit_compute_dtype"] == torch.float32
    assert llm["dtype"] == torch.bfloat16  # the config itself is not modified


def test_modules_to_save_trains_embeddings_and_head_and_saves_them(tokenizer, tmp_path):
    lora = dict(type=LoraConfig, r=8, lora_alpha=16, modules_to_save=["embed_tokens", "lm_head"])
    vlm = seeded_build(model_cfg(qwen2_cfg(tie_word_embeddings=False), llm_lora=lora), tokenizer)
    losses = train(vlm, lr=1e-2)
    print(f"LoRA + embeddings/head loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < losses[0] - 2  # the head can now sharpen the logits LoRA alone cannot
    head = vlm.llm.base_model.model.lm_head
    assert not torch.equal(head.modules_to_save["default"].weight, head.original_module.weight)

    save_adapters(vlm, tmp_path, state_dict=vlm.trainable_state_dict())
    saved = load_file(tmp_path / "llm_adapter" / "adapter_model.safetensors")
    torch.testing.assert_close(saved["base_model.model.lm_head.weight"], head.modules_to_save["default"].weight)
    assert saved["base_model.model.model.embed_tokens.weight"].shape == (151936, 64)
    fresh = seeded_build(model_cfg(qwen2_cfg(tie_word_embeddings=False)), tokenizer)
    loaded = PeftModel.from_pretrained(fresh.llm, tmp_path / "llm_adapter")
    torch.testing.assert_close(logits(loaded), logits(vlm.llm), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_rows_added_for_new_tokens_train_and_are_saved(tokenizer, tmp_path, tied):
    # one row short of the tokenizer: <image> gets a new, random row
    llm = dict(vocab_size=IMAGE_ID, tie_word_embeddings=tied)
    vlm = seeded_build(model_cfg(qwen2_cfg(**llm), llm_lora=dict(type=LoraConfig, r=4)), tokenizer)
    assert vlm.llm.config.vocab_size == IMAGE_ID + 1
    for table in (vlm.llm.get_input_embeddings(), vlm.llm.get_output_embeddings()):
        assert table.token_adapter.token_indices["default"] == [IMAGE_ID]
    head_row = vlm.llm.get_output_embeddings().token_adapter.trainable_tokens_delta["default"]  # [1, hidden]
    before = head_row.detach().clone()
    train(vlm, steps=3)
    # <image> never reaches the LLM as an input (features replace it), but its LM-head row learns
    assert not torch.equal(head_row, before)

    save_adapters(vlm, tmp_path, state_dict=vlm.trainable_state_dict())
    saved = load_file(tmp_path / "llm_adapter" / "adapter_model.safetensors")
    assert any("embed_tokens.token_adapter.trainable_tokens_delta" in name for name in saved)
    assert all(weight.shape[0] < IMAGE_ID for weight in saved.values())  # rows, not whole tables
    fresh = seeded_build(model_cfg(qwen2_cfg(**llm)), tokenizer)  # grows the same way
    loaded = PeftModel.from_pretrained(fresh.llm, tmp_path / "llm_adapter")
    torch.testing.assert_close(logits(loaded), logits(vlm.llm), atol=1e-5, rtol=0)


def test_qlora_embedding_and_untied_head_stay_in_the_compute_dtype(tmp_path):
    """On a GPU (bf16 compute) the frozen tables are not upcast: 2 GiB instead of 4.1 GiB at 7B."""
    torch.manual_seed(SEED)
    tiny_qwen2(tie_word_embeddings=False).to(torch.bfloat16).save_pretrained(tmp_path)
    # the GPU setting, loaded directly: on a machine without CUDA the builder would switch to float32
    quantization = BitsAndBytesConfig(**{**PRESETS["nf4"], "bnb_4bit_compute_dtype": torch.bfloat16})
    llm = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization, dtype=torch.bfloat16)
    prepare_quantized_llm(llm)
    assert llm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert llm.get_output_embeddings().weight.dtype == torch.bfloat16
    assert llm.model.norm.weight.dtype == torch.float32  # PEFT's upcast of the small norms stays
    lora = add_lora(llm, LoraConfig(r=4, lora_alpha=8, modules_to_save=["lm_head"]), new_token_ids=[151935])
    prepare_for_training(lora, "bf16")  # no CUDA here: fp32 training casts everything
    trained = {name: p.dtype for name, p in lora.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in name for name in trained) and set(trained.values()) == {torch.float32}
