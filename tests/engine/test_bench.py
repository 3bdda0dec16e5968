"""``vltool bench``: padded and packed steps on the same samples, and the FLOPs behind MFU."""

import re
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from tests.conftest import TINY_QWEN2, tiny_clip, tiny_qwen2
from vltool.engine.flops import peak_flops, training_flops
from vltool.model.projectors import MLPProjector
from vltool.model.tokenizer import add_image_token
from vltool.model.vision_encoder import VisionEncoder
from vltool.model.vlm import VisionLanguageModel


def test_peak_flops_by_device_name():
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12 and peak_flops("NVIDIA A10") == 125e12
    assert peak_flops("Tesla T4") is None


def test_training_flops_count_real_tokens_and_causal_attention_per_sample(tiny_vlm):
    config = tiny_vlm.llm.config
    one = training_flops(tiny_vlm, [10], supervised=0, images=0)
    # matrix multiplies are linear in tokens; attention is quadratic in each sample's own length
    attention = 3 * 2 * config.num_hidden_layers * config.hidden_size  # per squared token, forward and backward
    assert training_flops(tiny_vlm, [10, 10], 0, 0) == pytest.approx(2 * one)
    assert training_flops(tiny_vlm, [20], 0, 0) - 2 * one == pytest.approx(attention * (400 - 200))
    # the LM head (tied, so it trains with the embeddings): 3 x 2 x hidden x vocab per learned position
    head = training_flops(tiny_vlm, [10], supervised=4, images=0) - one
    assert head == pytest.approx(4 * 6 * config.hidden_size * config.vocab_size)
    assert training_flops(tiny_vlm, [10], 0, images=2) > one


def test_lora_counts_the_frozen_base_twice_and_only_the_adapters_three_times(tokenizer):
    torch.manual_seed(0)
    encoder = VisionEncoder(tiny_clip(), feature_layer=-2, select_strategy="default")
    projector = MLPProjector(encoder.hidden_size, TINY_QWEN2["hidden_size"], depth=2)
    vlm = VisionLanguageModel(encoder, projector, tiny_qwen2(), add_image_token(tokenizer))  # the projector trains
    # as the builder does: LoRA on the frozen LLM
    vlm.llm = llm = get_peft_model(vlm.llm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    config, decoder = llm.config, llm.get_decoder()
    adapters = sum(p.numel() for name, p in decoder.named_parameters() if "lora_" in name)
    base = sum(p.numel() for name, p in decoder.named_parameters() if "lora_" not in name)
    base -= decoder.get_input_embeddings().weight.numel()
    hidden, kv_width = config.hidden_size, config.num_key_value_heads * 16
    assert adapters == config.num_hidden_layers * 4 * (2 * hidden + hidden + kv_width)  # r=4 on q and v
    lengths = [10, 6]
    attention = 2 * config.num_hidden_layers * hidden * (10 * 10 + 6 * 6)
    expected_llm = 2 * 16 * (2 * base + 3 * adapters) + 3 * attention
    # without images or learned positions only the LLM counts
    assert training_flops(vlm, lengths, supervised=0, images=0) == pytest.approx(expected_llm)
    # fully trained, every LLM weight counts three times
    full = VisionLanguageModel(encoder, projector, tiny_qwen2(), add_image_token(tokenizer), freeze_llm=False)
    assert training_flops(full, lengths, 0, 0) == pytest.approx(2 * 16 * 3 * base + 3 * attention)


def test_a_4_bit_llm_counts_the_weights_it_stands_for(tokenizer, tmp_path):
    torch.manual_seed(0)
    tiny_qwen2().save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    counts = []
    for options in ({}, {"quantization_config": quantization}):
        llm = AutoModelForCausalLM.from_pretrained(tmp_path, **options)
        encoder = VisionEncoder(tiny_clip(), feature_layer=-2, select_strategy="default")
        projector = MLPProjector(encoder.hidden_size, llm.config.hidden_size, depth=2)
        vlm = VisionLanguageModel(encoder, projector, llm, add_image_token(tokenizer))
        vlm.llm = get_peft_model(vlm.llm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        counts.append(training_flops(vlm, [10, 6], supervised=3, images=1))
    assert "Linear4bit" in str(vlm.llm)  # the second one did load quantised
    assert counts[1] == pytest.approx(counts[0])


def test_bench_compares_padded_and_packed_on_the_same_samples(tmp_path):
    data = tmp_path / "lengths"
    options = [
        f"data_preparation.data_root={data}",
        "data_preparation.num_train=160",
        f"train_dataloader.dataset.data_path={data}/train.json",
        f"train_dataloader.dataset.image_folder={data}",
        "train_dataloader.batch_size=8",
    ]
    command = [sys.executable, "-m", "vltool", "bench", "demo_lengths", "--steps", "3", "--warmup", "1"]
    result = subprocess.run(
        [*command, "--compare-packing", "--cfg-options", *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    padding = re.search(r"│ padding\s+│\s+([\d.]+)% │\s+([\d.]+)% │", out)
    assert padding and float(padding.group(1)) > 5 and float(padding.group(2)) == 0.0, out
    for row in ("samples/s", "supervised tokens/s", "peak memory (GiB)", "waiting for data"):
        assert f"│ {row}" in out
    losses = re.search(r"first-step loss ([\d.]+) \(padded\) vs ([\d.]+) \(packed\)", " ".join(out.split()))
    assert losses and abs(float(losses.group(1)) - float(losses.group(2))) < 1e-4, out
    assert re.search(r"packed / padded supervised tokens/s: [\d.]+x", out)
    assert "ms per image" in out
