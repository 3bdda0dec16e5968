"""``vltool bench``: padded and packed steps on the same samples, and the FLOPs behind MFU."""

import re
import subprocess
import sys

import pytest

from vltool.engine.flops import peak_flops, training_flops


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
