"""The GPU check's output: what ran on which device, and a Markdown table of the figures."""

from importlib import metadata

import torch
from transformers.utils import is_flash_attn_2_available

from vltool.engine.flops import peak_flops
from vltool.engine.gpu_check import CheckResult


def describe_device() -> str:
    """One line: the device, its memory and bf16 peak, flash-attn, and the library versions that matter here."""
    names = ("torch", "transformers", "peft", "bitsandbytes", "mmengine")
    versions = ", ".join(f"{name} {_version(name)}" for name in names)
    flash = "flash-attn importable" if is_flash_attn_2_available() else "flash-attn not importable"
    if not torch.cuda.is_available():
        return f"no CUDA: tiny shapes in fp32 on the CPU; {flash}; {versions}"
    name = torch.cuda.get_device_name()
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    device_peak = peak_flops(name)
    peak = f"bf16 peak {device_peak / 1e12:.0f} TFLOP/s" if device_peak else "bf16 peak unknown (no MFU)"
    return f"{name}, {memory:.1f} GiB, {peak}; {flash}; {versions}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def _gib(count: int | None) -> str:
    return "-" if count is None else f"{count / 2**30:.2f}"


def _trainable(counts: dict[str, int]) -> str:
    """``494M float32``: what trains, in which dtype (fp32 expected under bf16 autocast)."""
    return ", ".join(f"{count / 1e6:.0f}M {dtype}" for dtype, count in sorted(counts.items())) or "-"


COLUMNS = (
    "check",
    "LLM layers",
    "trainable",
    "attention",
    "samples/step",
    "tokens/step",
    "step time (s)",
    "tokens/s",
    "MFU",
    "peak memory (GiB)",
    "peak reserved (GiB)",
    "check wall time (s)",
)


def _cells(result: CheckResult) -> list[str]:
    """One result's row, in :data:`COLUMNS` order."""
    check, bench = result.check, result.bench
    layers = "-" if result.skipped else f"{result.layers[0]} of {result.layers[1]}"
    wall = f"{result.seconds:.0f}"
    if bench is None:
        why = f"skipped: {result.skipped}" if result.skipped else f"failed: {result.error}"
        return [check.key, layers, "", check.attention, why, "", "", "", "", "", "", wall]
    mfu = f"{bench.mfu:.1%}" if bench.mfu is not None else "-"
    return [
        check.key,
        layers,
        _trainable(bench.trainable),
        bench.attention,
        str(bench.samples // bench.steps),
        str(bench.tokens // bench.steps),
        f"{bench.seconds / bench.steps:.3f}",
        f"{bench.per_second(bench.tokens):.0f}",
        mfu,
        _gib(bench.peak_memory),
        _gib(bench.peak_reserved),
        wall,
    ]


def format_report(results: list[CheckResult]) -> str:
    """A Markdown table of the results (ready for docs/benchmarks.md), then the notes."""
    rows = [COLUMNS, ["---"] * len(COLUMNS), *(_cells(result) for result in results)]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    notes = [f"- {result.check.key}: {note}" for result in results for note in result.notes]
    notes.append(
        "- peak memory: torch.cuda.max_memory_allocated over the timed steps (the process's peak RSS without "
        "CUDA); peak reserved: what the caching allocator held; trainable: parameters that train, by dtype."
    )
    return "\n".join([*lines, "", *notes])
