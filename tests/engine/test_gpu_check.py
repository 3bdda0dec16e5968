"""The prepared GPU check, run at tiny shapes on the CPU: every recipe steps, nothing is downloaded."""

import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import vltool.model.builder as builder
from vltool.engine.gpu_check import (
    CLIP_L14_336,
    QWEN2_5_0_5B,
    QWEN2_5_7B,
    full_finetune_bytes,
    layers_that_fit,
    run_gpu_check,
)
from vltool.engine.gpu_check_report import format_report

ROOT = Path(__file__).resolve().parents[2]
H100, H200 = 81559 * 2**20, 143771 * 2**20  # total_memory as PyTorch reports it on the lent machines
TOKENS = 8 * 2048  # the GPU check's batch: 8 samples of up to 2048 tokens


def test_the_7b_full_finetune_is_cut_to_fit_one_gpu_and_the_0_5b_is_not():
    h100, h200 = (
        layers_that_fit(QWEN2_5_7B, CLIP_L14_336, TOKENS, H100),
        layers_that_fit(QWEN2_5_7B, CLIP_L14_336, TOKENS, H200),
    )
    assert 1 < h100 < h200 < 28
    assert full_finetune_bytes(QWEN2_5_7B, CLIP_L14_336, h100, TOKENS) <= 0.9 * H100
    assert full_finetune_bytes(QWEN2_5_7B, CLIP_L14_336, h100 + 1, TOKENS) > 0.9 * H100
    # 16 B per trainable parameter at least: 7.6B parameters cannot fit 80 GB
    assert full_finetune_bytes(QWEN2_5_7B, CLIP_L14_336, 28, TOKENS) > 16 * 7.6e9
    assert layers_that_fit(QWEN2_5_0_5B, CLIP_L14_336, TOKENS, H100) == 24


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the check must run from the folders it writes."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"the GPU check tried to open a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def built_llms(monkeypatch) -> list[tuple[bool, int]]:
    """Each LLM the builder prepared: whether it loaded quantised (bitsandbytes' quantizer attached), its layers."""
    seen = []
    prepare = builder.prepare_quantized_llm

    def record(llm):
        seen.append((getattr(llm, "hf_quantizer", None) is not None, llm.config.num_hidden_layers))
        return prepare(llm)

    monkeypatch.setattr(builder, "prepare_quantized_llm", record)
    return seen


def test_the_tiny_check_steps_every_recipe_on_the_cpu_without_downloads(tmp_path, no_network, built_llms):
    lines = []
    results = run_gpu_check(tmp_path, tiny=True, layers=2, steps=2, echo=lines.append)
    by_key = {result.check.key: result for result in results}
    assert list(by_key) == ["0.5b", "0.5b-flash", "7b", "7b-flash", "7b-qlora"]
    ran = [by_key[key] for key in ("0.5b", "7b", "7b-qlora")]
    for result in ran:
        bench = result.bench
        assert result.error is None and bench is not None, result.error
        assert bench.steps == 2 and bench.seconds > 0 and bench.per_second(bench.tokens) > 0
        assert bench.tokens > 4 * 100 and bench.peak_memory > 0 and torch.isfinite(torch.tensor(bench.first_loss))
        assert bench.attention == "vltool_segment_sdpa"  # packed batches through vltool's SDPA segment attention
        assert list(bench.trainable) == ["float32"] and bench.trainable["float32"] > 0
    # the 7B-shaped full finetune keeps the layers asked for, and says so; QLoRA keeps them all
    assert by_key["7b"].layers == (2, 4) and any("cut to 2 of 4" in note for note in by_key["7b"].notes)
    assert by_key["7b-qlora"].layers == (4, 4) and by_key["0.5b"].layers == (4, 4)
    # the LLMs built: the 7B-shaped full finetune with its 2 layers, the QLoRA recipe's in 4 bits
    assert built_llms == [(False, 4), (False, 2), (True, 4)]
    for key in ("0.5b-flash", "7b-flash"):  # no flash-attn on this machine: skipped, said why
        assert by_key[key].bench is None and "flash-attn" in by_key[key].skipped
    report = format_report(results)
    assert report.count("| vltool_segment_sdpa |") == 3 and "skipped: flash-attn" in report
    assert any(line.startswith("data: ") for line in lines)


def _wheel(folder: Path) -> Path:
    """A minimal wheel holding one module, as ``pip download`` would save it."""
    path = folder / "vltool_probe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("vltool_probe.py", "VALUE = 1\n")
        info = "vltool_probe-0.1.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: vltool-probe\nVersion: 0.1\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_the_wrapper_installs_wheels_from_a_folder_offline(tmp_path):
    pytest.importorskip("pip", reason="the wrapper installs with python -m pip")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    site = tmp_path / "site"
    result = subprocess.run(
        ["bash", str(ROOT / "tools/gpu_check.sh"), "--wheels", str(wheels), "--help"],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "GPU_CHECK_SITE": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (site / "vltool_probe.py").is_file()
    assert "--layers" in result.stdout and "--only" in result.stdout
