"""Processes that write DeepSpeed ZeRO checkpoints and load them as ``pretrained_pth``, on gloo, for the tests.

Run as ``python -m tests.engine.zero_runs save|load ...`` by :func:`run_ranks`, once per rank; each
rank prints one ``RESULT {json}`` line.
"""

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

RESULT = "RESULT "
# a VLM whose checkpoint (LLM with its embeddings, encoder, projector: 86M fp32 parameters) is
# large enough that reading it whole shows in a process's memory next to the noise of a load
VLM_OPTIONS = [
    "data_preparation=None",
    "model.llm.config.hidden_size=256",
    "model.llm.config.intermediate_size=512",
    "model.freeze_llm_input_embeddings=False",
]


class Toy(nn.Module):
    """Odd sizes (ZeRO pads them), two parameter groups, a buffer, a frozen parameter and a tied pair."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(7, 13)
        self.second = nn.Linear(13, 5)
        self.frozen = nn.Parameter(torch.randn(3, 11), requires_grad=False)
        self.tied = nn.Linear(7, 13)
        self.tied.weight = self.first.weight
        self.register_buffer("scale", torch.randn(9))


class TiedHead(nn.Module):
    """An LM's tied embedding and head: one parameter under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight


MODELS = {"toy": Toy, "tied": TiedHead}


def run_ranks(args: list[str], nproc: int, timeout: float = 300) -> list[dict]:
    """``python -m tests.engine.zero_runs ARGS`` as ``nproc`` gloo ranks; their results, by rank.

    A rank that fails ends the others (which would wait for it in a collective) and the test.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(nproc), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "tests.engine.zero_runs", *args]
    with tempfile.TemporaryDirectory() as folder:
        logs = [Path(folder) / f"rank{rank}.log" for rank in range(nproc)]
        ranks = [
            subprocess.Popen(
                command,
                env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).parents[2],
            )
            for rank, log in enumerate(logs)
        ]
        deadline = time.monotonic() + timeout
        while any(rank.poll() is None for rank in ranks):
            if any(rank.poll() for rank in ranks) or time.monotonic() > deadline:
                for rank in ranks:
                    rank.kill()
            time.sleep(0.1)
        outputs = [log.read_text() for log in logs]
    for rank, output in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, output[-4000:]
    return [
        json.loads(next(line for line in out.splitlines() if line.startswith(RESULT))[len(RESULT) :]) for out in outputs
    ]


def build(model: str) -> nn.Module:
    """The model the checkpoint is written from and loaded into (seeded: the same on every rank)."""
    torch.manual_seed(0)
    if model in MODELS:
        return MODELS[model]()
    from vltool.engine.config import load_config
    from vltool.engine.model import TrainingModel
    from vltool.model.builder import build_seeded_parts

    return TrainingModel(build_seeded_parts(load_config("demo", VLM_OPTIONS)).model)


def save(model_name: str, stage: int, out: Path, exclude_frozen: bool) -> dict:
    """One DeepSpeed step-free save: initial weights moved by a known amount, so they differ from a fresh build."""
    import deepspeed

    model = build(model_name)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.5)
    params = [param for param in model.parameters() if param.requires_grad]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 1e-4}] if model_name == "toy" else params
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(groups, lr=1e-3), config=config)
    engine.save_checkpoint(str(out.parent), tag=out.name, save_latest=False, exclude_frozen_parameters=exclude_frozen)
    return {}


def _memory_kb() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def load(model_name: str, checkpoint: Path) -> dict:
    """Build the model, then ``load_pretrained`` the checkpoint; report the peak memory the load added."""
    from vltool.engine.checkpoint import load_pretrained
    from vltool.errors import ConfigError

    model = build(model_name)
    vlm = model.vlm if hasattr(model, "vlm") else model
    gc.collect()
    dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    before = _memory_kb()["VmRSS"]
    try:
        load_pretrained(vlm, checkpoint)
    except ConfigError as err:  # raised on every rank, or the others would wait for rank 0 forever
        return {"error": str(err)}
    growth = _memory_kb()["VmHWM"] - before
    dist.barrier()
    sums = {name: float(param.sum(dtype=torch.float64)) for name, param in vlm.named_parameters()}
    return {"growth_kb": growth, "sums": sums}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["save", "load"])
    parser.add_argument("--model", default="toy", choices=["toy", "tied", "vlm"])
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--exclude-frozen", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    if args.action == "save":
        result = save(args.model, args.stage, args.checkpoint, args.exclude_frozen)
    else:
        result = load(args.model, args.checkpoint)
    print(RESULT + json.dumps(result), flush=True)
    # every rank's last collective done before any tears gloo down: a rank that leaves while a peer
    # still receives its broadcast can abort ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
