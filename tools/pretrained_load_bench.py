"""Peak memory per rank of loading a DeepSpeed ZeRO-2 checkpoint as ``pretrained_pth``, on 2 gloo processes.

The model is tools/convert_bench.py's Qwen2.5-0.5B + CLIP-L/336-shaped LLaVA with random weights
(no downloads), LLM and projector trainable. The checkpoint is a real DeepSpeed ZeRO-2 save from
``--save-ranks`` processes (``deepspeed.initialize`` and ``save_checkpoint`` as mmengine's
strategy calls it, trainable weights only, as ``vltool train --deepspeed zero2`` writes it), made
once and reused. Then ``--load-ranks`` processes each build the model and call
``load_pretrained`` (what ``vltool train`` does with a ``pretrained_pth``); each reports how far
its resident memory rose above where it was before the load (``VmHWM`` reset through
``/proc/self/clear_refs``), and the largest anonymous and file-backed parts seen by a 5 ms sampler.

    .venv/bin/python tools/pretrained_load_bench.py [--work-dir /tmp/pretrained_load_bench]

Run it from another checkout (``PYTHONPATH=that/checkout``) to measure that code on the same checkpoint.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

GiB = 2**30
RESULT = "RESULT "


def spawn(args: list[str], nproc: int) -> list[dict]:
    """This script with ``args`` as ``nproc`` gloo ranks on this machine; their results, by rank.

    A rank that fails ends the others, which would otherwise wait for it in a collective.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc)}
    command = [sys.executable, __file__, *args]
    with tempfile.TemporaryDirectory() as folder:
        logs = [Path(folder) / f"rank{rank}.out" for rank in range(nproc)]
        ranks = [
            subprocess.Popen(command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=log.open("w"))
            for rank, log in enumerate(logs)
        ]
        while any(rank.poll() is None for rank in ranks):
            if any(rank.poll() for rank in ranks):
                for rank in ranks:
                    rank.kill()
            time.sleep(0.2)
        outputs = [log.read_text() for log in logs]
    if any(rank.returncode for rank in ranks):
        raise SystemExit(f"a rank failed: exit codes {[rank.returncode for rank in ranks]}")
    return [
        json.loads(next(line for line in out.splitlines() if line.startswith(RESULT))[len(RESULT) :]) for out in outputs
    ]


def build_model() -> tuple[Any, Any]:
    """The config and the benchmark model, wrapped for training (``vlm.`` names), seeded: the same on every rank."""
    from convert_bench import bench_options

    from vltool.engine.config import load_config
    from vltool.engine.model import TrainingModel
    from vltool.model.builder import build_seeded_parts

    cfg = load_config("demo", bench_options())
    return cfg, TrainingModel(build_seeded_parts(cfg).model)


def save(checkpoint: Path) -> dict:
    """A DeepSpeed ZeRO-2 save of the model's trainable weights, as ``vltool train --deepspeed zero2`` makes it."""
    import deepspeed
    import torch

    from vltool.engine import deepspeed as ds

    cfg, model = build_model()
    config = ds.fill_deepspeed_config(ds.read_deepspeed_config("zero2"), cfg, on_gpu=False)
    params = [param for param in model.parameters() if param.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=1e-5), config=config)
    engine.save_checkpoint(
        str(checkpoint.parent), tag=checkpoint.name, save_latest=False, exclude_frozen_parameters=True
    )
    return {}


def _status_mib() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def load(checkpoint: Path) -> dict:
    """Build the model, then ``load_pretrained`` the checkpoint, sampling memory while it loads."""
    import gc

    import torch.distributed as dist

    from vltool.engine.checkpoint import load_pretrained

    _, model = build_model()
    gc.collect()
    dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    before, peaks, done = _status_mib(), {"RssAnon": 0, "RssFile": 0}, threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            now = _status_mib()
            for key in peaks:
                peaks[key] = max(peaks[key], now[key])

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        load_pretrained(model.vlm, checkpoint)
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    after = _status_mib()
    return {
        "seconds": seconds,
        "before_mib": before["VmRSS"],
        "growth_mib": after["VmHWM"] - before["VmRSS"],
        "anon_growth_mib": peaks["RssAnon"] - before["RssAnon"],
        "file_growth_mib": peaks["RssFile"] - before["RssFile"],
    }


def worker(action: str, checkpoint: Path) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # one core per rank on the 2-core machine
    dist.init_process_group("gloo")
    result = save(checkpoint) if action == "save" else load(checkpoint)
    print(RESULT + json.dumps(result), flush=True)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="/tmp/pretrained_load_bench", type=Path)
    parser.add_argument("--save-ranks", type=int, default=2)
    parser.add_argument("--load-ranks", type=int, default=2)
    parser.add_argument("--worker", choices=["save", "load"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkpoint = args.work_dir / f"zero2_{args.save_ranks}_ranks" / "iter_1.pth"
    if args.worker:
        return worker(args.worker, checkpoint)
    if not checkpoint.is_dir():
        spawn(
            ["--work-dir", str(args.work_dir), "--save-ranks", str(args.save_ranks), "--worker", "save"],
            args.save_ranks,
        )
    files = {file.name: file.stat().st_size / GiB for file in sorted(checkpoint.iterdir())}
    print(
        f"checkpoint {checkpoint} (ZeRO-2, {args.save_ranks} ranks): "
        + ", ".join(f"{n} {s:.2f} GiB" for n, s in files.items())
    )
    import vltool

    print(f"vltool from {Path(vltool.__file__).parent}")
    ranks = spawn(
        ["--work-dir", str(args.work_dir), "--save-ranks", str(args.save_ranks), "--worker", "load"], args.load_ranks
    )
    print("| rank | RSS before GiB | peak growth GiB | anonymous GiB | file-backed GiB | seconds |")
    print("|---|---|---|---|---|---|")
    for rank, result in enumerate(ranks):
        figures = [result[key] / 1024 for key in ("before_mib", "growth_mib", "anon_growth_mib", "file_growth_mib")]
        print(f"| {rank} | " + " | ".join(f"{value:.2f}" for value in figures) + f" | {result['seconds']:.1f} |")


if __name__ == "__main__":
    main()
