"""A run killed with SIGKILL and resumed (weights-only) logs exactly the losses of the uninterrupted run."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from tests.engine.train_runs import logged_losses, run_train, train_options, vltool_command, write_colour_dataset
from vltool.engine import safe_load
from vltool.engine.checkpoint import read_weights
from vltool.engine.config import load_config
from vltool.model.builder import build_parts

pytestmark = pytest.mark.slow
ITERS = 8
# LoRA with dropout on a frozen LLM: the resumed losses depend on the restored RNG streams too
LORA_CONFIG = """
model.update(
    freeze_llm=True,
    llm_lora=dict(type="peft.LoraConfig", r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear"),
)
custom_hooks = [h for h in custom_hooks if not any(n in str(h["type"]) for n in ("MultipleChoice", "SampleAnswers"))]
"""


@pytest.fixture(scope="module")
def setup(module_tmp):
    root = module_tmp("resume")
    data = write_colour_dataset(root)
    subprocess.run(vltool_command("copy-cfg", "demo", str(root)), check=True, capture_output=True)
    config = root / "demo.py"
    config.write_text(config.read_text() + LORA_CONFIG)
    return config, data


def kill_after_checkpoint(command: list[str], work_dir: Path, step: int) -> None:
    """Start training and SIGKILL it once ``last_checkpoint`` points at ``iter_{step}`` or later."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pointer, deadline = work_dir / "last_checkpoint", time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if pointer.is_file() and int(pointer.read_text().rsplit("iter_", 1)[1].split(".")[0]) >= step:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"


@pytest.mark.parametrize("deepspeed", [None, "zero2"])
def test_killed_and_resumed_run_logs_the_same_losses(setup, tmp_path, deepspeed):
    config, data = setup
    args = [str(config), *(["--deepspeed", deepspeed] if deepspeed else []), *train_options(data, ITERS, 8)]
    run_train([*args, "--work-dir", str(tmp_path / "full")])
    expected = logged_losses(tmp_path / "full")
    assert sorted(expected) == list(range(1, ITERS + 1))
    # every file the run wrote loads weights-only, DeepSpeed's shards included: what --resume reads
    written = tmp_path / "full" / f"iter_{ITERS}.pth"
    for path in sorted(written.glob("*.pt")) if written.is_dir() else [written]:
        assert safe_load.load_file(path, allowed=safe_load.deepspeed_globals())

    work_dir = tmp_path / "killed"
    kill_after_checkpoint(vltool_command("train", *args, "--work-dir", str(work_dir)), work_dir, step=4)
    resumed_from = int((work_dir / "last_checkpoint").read_text().rsplit("iter_", 1)[1].split(".")[0])
    assert not list(work_dir.glob(".iter_*.tmp")) or resumed_from >= 4  # a half-written save is never the target
    run_train([*args, "--work-dir", str(work_dir), "--resume"])
    resumed = logged_losses(work_dir)
    assert resumed_from < ITERS
    for step in range(resumed_from + 1, ITERS + 1):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step

    adapter = work_dir / "adapters" / "llm_adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    if deepspeed is None:  # the adapters hold the final checkpoint's LoRA weights and load in plain PEFT
        final = read_weights(work_dir / f"iter_{ITERS}.pth")
        cfg = load_config(str(config), ["data_preparation=None", "model.llm_lora=None"])
        peft_llm = PeftModel.from_pretrained(build_parts(cfg).model.llm, str(adapter))
        lora = {n: p for n, p in peft_llm.named_parameters() if "lora_A" in n}
        assert lora
        for name, param in lora.items():
            torch.testing.assert_close(param, final[f"vlm.llm.{name.replace('.default', '.default')}"], msg=name)


def test_resume_from_a_given_checkpoint_path(setup, tmp_path):
    config, data = setup
    args = [str(config), *train_options(data, 4, 8), "--work-dir", str(tmp_path / "a")]
    run_train(args)
    expected = logged_losses(tmp_path / "a")
    other = tmp_path / "b"
    result = run_train([*args[:-1], str(other), "--resume", str(tmp_path / "a" / "iter_2.pth")])
    assert "resumed" in (result.stdout + result.stderr).lower()
    resumed = logged_losses(other)
    assert sorted(resumed) == [3, 4]
    assert resumed[4] == pytest.approx(expected[4], abs=1e-6)
