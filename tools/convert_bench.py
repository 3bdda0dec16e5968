"""Time ``vltool convert pth_to_hf`` on a Qwen2.5-0.5B-shaped LLaVA and report its peak memory.

The model has random weights built from configs (no downloads): a Qwen2.5-0.5B-shaped LLM, a
CLIP ViT-L/14-336-shaped encoder and the MLP projector, as a full finetune checkpoint (LLM and
projector trained, encoder frozen). Each conversion runs as its own ``vltool`` process, so the
peak resident memory printed is that process's alone.

    .venv/bin/python tools/convert_bench.py [--work-dir /tmp/convert_bench]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from vltool.engine.config import load_config
from vltool.engine.model import TrainingModel
from vltool.model.builder import build_seeded_parts

QWEN2_5_0_5B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
)
CLIP_L14_336 = dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24)


def bench_config() -> list[str]:
    """``--cfg-options`` that turn the demo into the benchmark model."""
    options = [f"model.llm.config.{key}={value}" for key, value in QWEN2_5_0_5B.items()]
    options += [f"model.vision_encoder.model.config.{key}={value}" for key, value in CLIP_L14_336.items()]
    return [
        *options,
        "model.llm.config.tie_word_embeddings=True",
        "model.vision_encoder.model.config.num_attention_heads=16",
        "model.vision_encoder.feature_layer=-2",
        "model.freeze_vision_encoder=True",
        "model.freeze_llm_input_embeddings=False",
        "image_processor.size.shortest_edge=336",
        "image_processor.crop_size.height=336",
        "image_processor.crop_size.width=336",
        "data_preparation=None",
    ]


def write_checkpoint(work_dir: Path) -> tuple[Path, Path, int]:
    """Dump the config and a checkpoint of its trainable weights; return both paths and the parameter count."""
    cfg = load_config("demo", bench_config())
    config = work_dir / "bench.py"
    cfg.dump(str(config))
    model = TrainingModel(build_seeded_parts(cfg).model)
    checkpoint = work_dir / "iter_1.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint, sum(p.numel() for p in model.parameters())


# runs a command as its only child, so RUSAGE_CHILDREN is that command's own peak
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def convert(config: Path, checkpoint: Path, save_dir: Path, *options: str) -> tuple[float, float]:
    """Run one conversion in a fresh process; returns (seconds, its peak RSS in GiB)."""
    command = [sys.executable, "-m", "vltool.cli.app", "convert", "pth_to_hf", str(config), str(checkpoint)]
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *command, str(save_dir), "--overwrite", *options],
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - start, int(result.stdout.split()[-1]) / 2**20  # ru_maxrss is in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="/tmp/convert_bench", type=Path)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    config, checkpoint, params = write_checkpoint(args.work_dir)
    size = checkpoint.stat().st_size / 2**30
    print(f"model: {params / 1e6:.0f}M parameters; checkpoint {size:.2f} GiB (fp32 LLM + projector)")
    runs = [
        ("vltool, bf16", ()),
        ("huggingface, bf16", ("--save-format", "huggingface")),
        ("huggingface, fp32", ("--save-format", "huggingface", "--fp32")),
    ]
    print("| format | seconds | peak RSS GiB | output GiB |\n|---|---|---|---|")
    for name, options in runs:
        save_dir = args.work_dir / name.replace(", ", "_")
        seconds, peak = convert(config, checkpoint, save_dir, *options)
        output = sum(f.stat().st_size for f in save_dir.rglob("*") if f.is_file()) / 2**30
        print(f"| {name} | {seconds:.1f} | {peak:.2f} | {output:.2f} |")


if __name__ == "__main__":
    main()
