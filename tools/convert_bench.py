"""Time ``vltool convert pth_to_hf`` on a Qwen2.5-0.5B-shaped LLaVA, report its peak memory, and predict it at 7B.

The model has random weights (no downloads): a Qwen2.5-0.5B-shaped LLM, a CLIP ViT-L/14-336-shaped
encoder and the MLP projector, as a full-finetune checkpoint (LLM and projector trained in fp32,
encoder frozen). Two ways to get the frozen parts, as configs do:

- ``name``: the LLM and the encoder are saved as model folders, bf16 and fp32 as the Hub stores
  Qwen2.5 and OpenAI's CLIP, and the config loads them by name (what the shipped recipes do);
- ``config``: both are built from their configs with seeded random weights (as the demo does).

Each conversion runs as its own ``vltool`` process, so the peak resident memory printed is that
process's alone. The baseline is the peak of a process that has only imported what a conversion
imports. The last table is :func:`predicted_peak` (the memory accounting in
``docs/benchmarks.md``) on a meta-device model, checked here against the measured figures and
evaluated at Qwen2.5-7B + CLIP-L/336.

    .venv/bin/python tools/convert_bench.py [--work-dir /tmp/convert_bench] [--parts name config]
"""

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from mmengine.config import Config

from vltool.engine.config import load_config
from vltool.engine.gpu_check import CLIP_L14_336, QWEN2_5_0_5B, QWEN2_5_7B
from vltool.engine.model import TrainingModel
from vltool.model.builder import build_seeded_parts
from vltool.model.vlm import VisionLanguageModel

GiB = 2**30
RUNS = [
    ("vltool, bf16", ()),
    ("huggingface, bf16", ("--save-format", "huggingface")),
    ("huggingface, fp32", ("--save-format", "huggingface", "--fp32")),
]
# a process that has imported what `vltool convert pth_to_hf` imports, and the model classes it builds
IMPORTS = (
    "import resource, vltool.cli.app, vltool.convert.pth_to_hf, vltool.engine.checkpoint; "
    "from transformers import CLIPVisionModel, Qwen2ForCausalLM; "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)
# runs a command as its only child, so RUSAGE_CHILDREN is that command's own peak
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


@dataclass(frozen=True)
class PartMemory:
    """What one part of the model (vision encoder, LLM, projector) costs a conversion."""

    numel: int
    largest: int  # elements of its largest tensor
    stored: torch.dtype | None  # the dtype of the folder it loads from by name; None: built from its config
    trained: bool  # the checkpoint holds it


def part_memory(vlm: VisionLanguageModel, stored: dict[str, torch.dtype | None]) -> list[PartMemory]:
    """The parts in the order they are built, from a model on any device (the meta device costs nothing)."""
    parts = []
    for name in ("vision_encoder", "llm", "projector"):
        params = list(getattr(vlm, name).parameters())
        trained = any(param.requires_grad for param in params)
        numel, largest = sum(p.numel() for p in params), max(p.numel() for p in params)
        parts.append(PartMemory(numel, largest, stored.get(name), trained))
    return parts


def _size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def peak_after(parts: list[PartMemory], save_dtype: torch.dtype) -> int:
    """Bytes a conversion peaks at above the baseline, with the checkpoint read lazily (this code).

    A part loaded by name in its stored dtype (a trained one always) stays pages of its file until
    written or saved; a frozen one loaded in another dtype holds its file mapped next to the new
    tensors while it converts; one built from its config is float32 and its initialisation
    copies its largest tensor once. Then the checkpoint is copied in, a :data:`CHUNK_BYTES`
    window at a time, into tensors in the save dtype, and saving writes from the tensors
    themselves: at the end the whole model is held in the dtype each part has.
    """
    from vltool.engine.lazy_weights import CHUNK_BYTES  # here: the script also measures checkouts without it

    held = [part.numel * (4 if part.stored is None else _size(save_dtype)) for part in parts]
    peak, touched = 0, 0
    for part, size in zip(parts, held, strict=True):
        if part.stored is None:
            peak, touched = max(peak, touched + size + 4 * part.largest), touched + size
        elif part.stored != save_dtype and not part.trained:
            peak, touched = max(peak, touched + size + part.numel * _size(part.stored)), touched + size
    return max(peak, sum(held) + CHUNK_BYTES)


def peak_before(parts: list[PartMemory], checkpoint_bytes: int) -> int:
    """The same before this change: the parts in their stored dtypes, and the checkpoint read whole next to them.

    Loading the checkpoint writes every trained part (pages of a part's file become its own);
    the dominant term at 7B.
    """
    held = [part.numel * (4 if part.stored is None else _size(part.stored)) for part in parts]
    built = [size for part, size in zip(parts, held, strict=True) if part.stored is None or part.trained]
    return max(sum(built) + checkpoint_bytes, sum(held))


def meta_parts(llm: dict, tied: bool, stored: dict[str, torch.dtype | None]) -> list[PartMemory]:
    """:func:`part_memory` of the benchmark model at the LLM shape ``llm``, built on the meta device."""
    with torch.device("meta"):
        vlm = build_seeded_parts(load_config("demo", bench_options(llm, tied))).model
    return part_memory(vlm, stored)


def bench_options(llm: dict | None = None, tied: bool = True) -> list[str]:
    """``--cfg-options`` that turn the demo into the benchmark model (its parts built from configs)."""
    options = [f"model.llm.config.{key}={value}" for key, value in (llm or QWEN2_5_0_5B).items()]
    options += [f"model.vision_encoder.model.config.{key}={value}" for key, value in CLIP_L14_336.items()]
    return [
        *options,
        f"model.llm.config.tie_word_embeddings={tied}",
        "model.vision_encoder.feature_layer=-2",
        "model.freeze_vision_encoder=True",
        "model.freeze_llm_input_embeddings=False",
        "image_processor.size.shortest_edge=336",
        "image_processor.crop_size.height=336",
        "image_processor.crop_size.width=336",
        "data_preparation=None",
    ]


def load_by_name(cfg: Config, llm_dir: Path, clip_dir: Path) -> None:
    """Load the LLM and the encoder from model folders, as the shipped recipes load them from the Hub."""
    cfg.model.llm = dict(
        type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=str(llm_dir)
    )
    cfg.model.vision_encoder.model = dict(
        type="transformers.CLIPVisionModel.from_pretrained", pretrained_model_name_or_path=str(clip_dir)
    )


def write_run(work_dir: Path, parts: str) -> tuple[Path, Path, int]:
    """Dump a config and a full-finetune checkpoint (fp32 trained weights); return both and the parameter count."""
    options = bench_options()
    cfg = load_config("demo", options)
    model = TrainingModel(build_seeded_parts(cfg).model)
    if parts == "name":
        llm_dir, clip_dir = work_dir / "qwen2_5_0_5b", work_dir / "clip_l14_336"
        model.vlm.llm.to(torch.bfloat16).save_pretrained(llm_dir)  # Qwen2.5 is stored in bf16
        model.vlm.vision_encoder.model.save_pretrained(clip_dir)  # OpenAI's CLIP in fp32
        load_by_name(cfg, llm_dir, clip_dir)
    config = work_dir / f"bench_{parts}.py"
    cfg.dump(str(config))
    checkpoint = work_dir / f"iter_1_{parts}.pth"
    weights = {name: value.float() for name, value in model.state_dict().items()}  # trained weights are fp32
    torch.save({"meta": {}, "state_dict": weights}, checkpoint)
    return config, checkpoint, sum(p.numel() for p in model.parameters())


def baseline_gib() -> float:
    """Peak RSS of a process that has imported what a conversion imports."""
    result = subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True, text=True)
    return int(result.stdout.split()[-1]) / 2**20  # ru_maxrss is in KiB


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
    return time.perf_counter() - start, int(result.stdout.split()[-1]) / 2**20


STORED = {  # how each scenario's parts are stored: Qwen2.5 in bf16 and OpenAI's CLIP in fp32, as on the Hub
    "name": {"vision_encoder": torch.float32, "llm": torch.bfloat16, "projector": None},
    "config": {},
}


def measure(work_dir: Path, scenarios: list[str], baseline: float) -> None:
    """Convert each scenario's checkpoint three ways; print the peaks next to :func:`peak_after`'s prediction."""
    print("| parts | format | seconds | peak RSS GiB | output GiB | peak - baseline | / output | predicted |")
    print("|---|---|---|---|---|---|---|---|")
    for parts in scenarios:
        config, checkpoint, params = write_run(work_dir, parts)
        memory = meta_parts(QWEN2_5_0_5B, True, STORED[parts])
        print(f"<!-- {parts}: {params / 1e6:.0f}M parameters; checkpoint {checkpoint.stat().st_size / GiB:.2f} GiB -->")
        for name, options in RUNS:
            save_dir = work_dir / f"{parts}_{name.replace(', ', '_')}"
            seconds, peak = convert(config, checkpoint, save_dir, *options)
            output = sum(f.stat().st_size for f in save_dir.rglob("*") if f.is_file()) / GiB
            predicted = baseline + peak_after(memory, torch.float32 if "fp32" in name else torch.bfloat16) / GiB
            print(
                f"| {parts} | {name} | {seconds:.1f} | {peak:.2f} | {output:.2f} | {peak - baseline:.2f} "
                f"| {(peak - baseline) / output:.2f} | {predicted:.2f} |",
                flush=True,
            )


def predict_7b(baseline: float) -> None:
    """:func:`peak_before` and :func:`peak_after` for a Qwen2.5-7B + CLIP-L/336 full finetune, loaded by name."""
    parts = meta_parts(QWEN2_5_7B, False, STORED["name"])
    checkpoint = 4 * sum(part.numel for part in parts if part.trained)
    print(
        f"\n7B-shaped (meta device): {sum(p.numel for p in parts) / 1e9:.2f}B parameters, fp32 checkpoint "
        f"{checkpoint / GiB:.1f} GiB, baseline {baseline:.2f} GiB"
    )
    print("| save dtype | output GiB | before: predicted peak GiB | after: predicted peak GiB | after / output |")
    print("|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        output = sum(part.numel for part in parts) * _size(dtype) / GiB
        before = baseline + peak_before(parts, checkpoint) / GiB
        after = baseline + peak_after(parts, dtype) / GiB
        print(
            f"| {str(dtype).removeprefix('torch.')} | {output:.1f} | {before:.1f} | {after:.1f} "
            f"| {(after - baseline) / output:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="/tmp/convert_bench", type=Path)
    parser.add_argument("--parts", nargs="*", default=["name", "config"], choices=["name", "config"])
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    baseline = baseline_gib()
    print(f"baseline (imports only): {baseline:.2f} GiB")
    measure(args.work_dir, args.parts, baseline)
    predict_7b(baseline)


if __name__ == "__main__":
    main()
