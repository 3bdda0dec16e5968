"""Run ``vltool train`` in subprocesses on a small colour dataset, and read back per-iteration losses."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from PIL import Image

COLOURS = ("red", "green", "blue", "yellow")


def write_colour_dataset(root: Path, samples: int = 48) -> Path:
    """Image and text-only samples whose answers vary in length (1-12 words), so ranks get unequal tokens."""
    rng = random.Random(0)
    for colour in COLOURS:
        Image.new("RGB", (64, 64), colour).save(root / f"{colour}.png")
    records = []
    for i in range(samples):
        colour = rng.choice(COLOURS)
        answer = " ".join([colour] * rng.randint(1, 12))
        if i % 6 == 5:
            turns = [{"from": "human", "value": "Say a colour."}, {"from": "gpt", "value": answer}]
            records.append({"id": str(i), "conversations": turns})
        else:
            turns = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": answer}]
            records.append({"id": str(i), "image": f"{colour}.png", "conversations": turns})
    path = root / "colours.json"
    path.write_text(json.dumps(records))
    return path


def train_options(data: Path, max_iters: int, batch_size: int, *extra: str) -> list[str]:
    """``--cfg-options`` for a short demo run on ``data``: log every iteration, checkpoint every 2."""
    return [
        "--cfg-options",
        f"train_dataloader.dataset.data_path={data}",
        f"train_dataloader.dataset.image_folder={data.parent}",
        f"train_cfg.max_iters={max_iters}",
        f"train_dataloader.batch_size={batch_size}",
        "data_preparation=None",
        "default_hooks.logger.interval=1",
        "default_hooks.checkpoint.interval=2",
        "default_hooks.checkpoint.max_keep_ckpts=3",
        *extra,
    ]


def vltool_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vltool.cli.app", *args]


def run_train(args: list[str], nproc: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    """``[NPROC_PER_NODE=nproc] vltool train ARGS``; fails the test with the output tail on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NPROC_PER_NODE")}
    if nproc > 1:
        env["NPROC_PER_NODE"] = str(nproc)
    result = subprocess.run(
        vltool_command("train", *args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def logged_losses(work_dir: Path) -> dict[int, float]:
    """Per-iteration losses from every ``scalars.json`` under ``work_dir`` (later runs overwrite earlier)."""
    losses = {}
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in scalars.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                losses[record["step"]] = record["loss"]
    return losses
