"""A first run prints vltool's lines only: ``vltool check-dataset demo`` and a one-iteration ``vltool train demo``.

What the libraries say about themselves (bitsandbytes, DeepSpeed, transformers, torchrun,
mmengine's environment, config and hook dump, Python warnings) stays off the terminal unless
``--debug``; mmengine's dump is still in the run's log file.

vltool's lines are: its log lines (mmengine's one-line format, which vltool logs through; the
training loop's progress and checkpoint lines among them), the rows of its tables, and nothing
on stderr for a command that succeeds. Anything else (a continuation line of a multi-line dump,
another library's own format, a warning) is someone else's, and so is a log line that carries
one of the libraries' known notices.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SMALL_DEMO = ["data_preparation.num_train=200", "data_preparation.num_eval=8"]  # the demo's data, smaller
DEMO_TRAIN_FILE = "data/vltool_demo/train.json"  # check-dataset's table title

LOG_LINE = re.compile(r"\d\d/\d\d \d\d:\d\d:\d\d - mmengine - (INFO|WARNING|ERROR) - \S")
TABLE_CHARS = set("┌┐└┘├┤┬┴┼─│")
THIRD_PARTY = (
    "gemm_4bit_forward",  # bitsandbytes
    "Setting accelerator to CPU",  # DeepSpeed
    "requires torchvision",  # transformers
    "LOAD REPORT",  # transformers
    "OMP_NUM_THREADS",  # torchrun, mmengine
    "MKL_NUM_THREADS",  # mmengine
    "Warning:",  # a Python warning: "UserWarning: ...", "FutureWarning: ..."
    "System environment",  # mmengine's start-up dump
    "Config:",
    "Hooks will be executed",
    "has no metainfo",  # mmengine about itself
    "FileClient",
    "HardDiskBackend",
)
# what vltool decides for its processes: a test starts from the user's defaults
DECIDED = ("TRANSFORMERS_VERBOSITY", "DS_ACCELERATOR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
LAUNCH = ("NPROC_PER_NODE", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def train_options(iterations: int = 1) -> list[str]:
    """``--cfg-options`` for a short demo run: every iteration logged."""
    limits = [f"train_cfg.max_iters={iterations}", "train_dataloader.batch_size=4", "default_hooks.logger.interval=1"]
    return ["--cfg-options", *SMALL_DEMO, *limits]


def vltool(*args: str, cwd: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    """The installed ``vltool`` console script (``python -m vltool`` without one), run in ``cwd``."""
    script = Path(sys.executable).with_name("vltool")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "vltool"]
    env = {k: v for k, v in os.environ.items() if k not in DECIDED + LAUNCH}
    env["HF_HUB_OFFLINE"] = "1"
    if nproc > 1:
        env["NPROC_PER_NODE"] = str(nproc)
    result = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def foreign_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The lines of ``result`` that are not vltool's (see the module docstring)."""
    foreign = [f"stderr: {line}" for line in result.stderr.splitlines() if line.strip()]
    for line in result.stdout.splitlines():
        ours = not line.strip() or LOG_LINE.match(line) or TABLE_CHARS & set(line) or line.strip() == DEMO_TRAIN_FILE
        if not ours or any(marker in line for marker in THIRD_PARTY):
            foreign.append(f"stdout: {line}")
    return foreign


@pytest.fixture(scope="module")
def demo(module_tmp) -> Path:
    """A folder where ``check-dataset demo`` ran first (it writes the demo's data there, as for a new user)."""
    return module_tmp("quiet")


@pytest.fixture(scope="module")
def check(demo) -> subprocess.CompletedProcess:
    return vltool("check-dataset", "demo", "--cfg-options", *SMALL_DEMO, cwd=demo)


@pytest.fixture(scope="module")
def train(demo, check) -> subprocess.CompletedProcess:
    return vltool("train", "demo", "--work-dir", "work", *train_options(), cwd=demo)


def test_check_dataset_prints_its_table_only(check):
    assert foreign_lines(check) == []
    assert "writing the demo dataset" in check.stdout and "problems" in check.stdout


def test_train_prints_progress_and_keeps_mmengine_dump_in_the_log(demo, train):
    assert foreign_lines(train) == []
    # vltool's own lines and the training loop's still show
    assert "train.json: 200 samples" in train.stdout
    assert "Iter(train) [1/1]" in train.stdout and "loss:" in train.stdout
    assert "Saving checkpoint at 1 iterations" in train.stdout
    assert "held-out" in train.stdout  # the demo's MC hook
    log = next((demo / "work").glob("*/*.log")).read_text()
    assert "System environment:" in log and "Config:" in log and "Hooks will be executed" in log
    assert "Iter(train) [1/1]" in log


def test_debug_lets_the_libraries_speak(demo, check):
    result = vltool(
        "--debug", "train", "demo", "--work-dir", "work_debug", *train_options(), "custom_hooks=[]", cwd=demo
    )
    assert "System environment:" in result.stdout and "Hooks will be executed" in result.stdout
    if not torch.cuda.is_available():
        assert "Setting accelerator to CPU" in result.stdout  # DeepSpeed, imported through accelerate


@pytest.mark.slow
def test_two_processes_are_quiet_too(demo, check):
    """Under ``NPROC_PER_NODE=2`` torchrun and both processes inherit the decisions (and decide again)."""
    options = [*train_options(2), "train_dataloader.num_workers=1", "custom_hooks=[]"]
    result = vltool("train", "demo", "--work-dir", "work_2", *options, cwd=demo, nproc=2)
    assert foreign_lines(result) == []
    assert "Iter(train) [2/2]" in result.stdout
