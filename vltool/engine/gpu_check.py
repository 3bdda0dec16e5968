"""A prepared GPU check: the shipped recipes' training steps at their real shapes, random weights, no downloads.

On one GPU, :func:`run_gpu_check` runs

- ``qwen2_5_0_5b_clip_l14_336_finetune`` (Qwen2.5-0.5B + CLIP ViT-L/14-336, LLM and projector
  train) with packed batches, once with vltool's SDPA segment attention and once with
  flash-attn when it is importable;
- ``qwen2_5_7b_clip_l14_336_finetune`` the same way, with gradient checkpointing and as many
  of the 28 decoder layers as fit the GPU (:mod:`vltool.engine.gpu_check_memory`; the report
  says how many);
- ``qwen2_5_7b_clip_l14_336_qlora_finetune`` (NF4 + LoRA r=128, all 28 layers): its peak memory.

Each recipe is loaded as ``vltool train`` loads it, with ``--cfg-options`` that point its LLM,
encoder and data at folders written here (:mod:`vltool.engine.gpu_check_data`); so the model
is built by the normal path (``from_pretrained`` of a bf16 checkpoint, the builder's dtype
handling, bf16 autocast through ``AmpOptimWrapper``), and
:func:`vltool.engine.bench.run_bench` times it: step time, tokens/s, MFU against the device's
bf16 peak (:mod:`vltool.engine.flops`), peak memory. Without CUDA the same code runs tiny
shapes in fp32 (the test suite does); nothing is downloaded either way.
"""

import gc
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers.utils import is_flash_attn_2_available

from vltool.data.dataset import length_stats
from vltool.engine.bench import BenchResult, prepare, run_bench
from vltool.engine.config import load_config
from vltool.engine.gpu_check_data import Folders, write_conversations, write_models
from vltool.engine.gpu_check_memory import full_finetune_bytes, layers_that_fit
from vltool.errors import ConfigError

QWEN2_5_0_5B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
QWEN2_5_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    tie_word_embeddings=False,
)
CLIP_L14_336 = dict(
    image_size=336,
    patch_size=14,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
)
# the tiny stand-ins keep what matters to the code paths: the real vocabulary, tied (0.5B) and untied (7B) heads
TINY_QWEN2 = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)
TINY_CLIP = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)


@dataclass(frozen=True)
class Check:
    """One timed configuration: a shipped recipe, its attention and batch.

    Attributes:
        key: short name (``--only``).
        recipe: the shipped config it runs.
        llm: ``0.5b`` or ``7b``: which random LLM folder.
        attention: ``sdpa`` (segment attention for packed batches) or ``flash_attention_2``.
        gradient_checkpointing: recompute the LLM's layers in the backward pass.
        fit_layers: keep only the decoder layers that fit the GPU (full finetunes at 7B).
        steps, warmup: timed and untimed steps.
    """

    key: str
    recipe: str
    llm: str
    attention: str = "sdpa"
    gradient_checkpointing: bool = False
    fit_layers: bool = False
    steps: int = 5
    warmup: int = 2


CHECKS = (
    Check("0.5b", "qwen2_5_0_5b_clip_l14_336_finetune", "0.5b"),
    Check("0.5b-flash", "qwen2_5_0_5b_clip_l14_336_finetune", "0.5b", attention="flash_attention_2"),
    Check("7b", "qwen2_5_7b_clip_l14_336_finetune", "7b", gradient_checkpointing=True, fit_layers=True),
    Check(
        "7b-flash",
        "qwen2_5_7b_clip_l14_336_finetune",
        "7b",
        attention="flash_attention_2",
        gradient_checkpointing=True,
        fit_layers=True,
    ),
    Check(
        "7b-qlora",
        "qwen2_5_7b_clip_l14_336_qlora_finetune",
        "7b",
        gradient_checkpointing=True,
        steps=3,
        warmup=1,
    ),
)


@dataclass
class CheckResult:
    """What one check gave: the bench figures, or why there are none.

    Attributes:
        check: the configuration.
        layers: decoder layers run, and of how many (``(10, 28)``).
        bench: the timed steps' figures.
        skipped: why it did not run (flash-attn missing).
        error: the exception that stopped it.
        notes: what the report should say beside the figures (layers cut, retries).
        seconds: wall-clock time of the whole check, building included.
    """

    check: Check
    layers: tuple[int, int] = (0, 0)
    bench: BenchResult | None = None
    skipped: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_options(check: Check, folders: Folders, batch_size: int, layers: int | None, workers: int) -> list[str]:
    """The ``--cfg-options`` that turn ``check.recipe`` into the check: what ``vltool train`` would take."""
    options = [
        f"model.llm.pretrained_model_name_or_path={folders.llm(check.llm)}",
        f"model.vision_encoder.model.pretrained_model_name_or_path={folders.encoder}",
        f"train_dataloader.dataset.data_path={folders.data / 'train.json'}",
        f"train_dataloader.dataset.image_folder={folders.data}",
        f"train_dataloader.dataset.cache_dir={folders.root / 'cache'}",
        f"train_dataloader.batch_size={batch_size}",
        f"train_dataloader.num_workers={workers}",
        f"train_dataloader.persistent_workers={workers > 0}",
        "randomness.seed=0",
    ]
    if layers is not None:
        options.append(f"model.llm.num_hidden_layers={layers}")
    if check.attention != "sdpa":
        options.append(f"model.llm.attn_implementation={check.attention}")
    if check.gradient_checkpointing:
        options.append("model.llm_gradient_checkpointing=True")
    return options


def _free_memory() -> None:
    """Drop the last check's model and optimizer (module cycles need the collector) before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@dataclass
class Plan:
    """What every check of one run shares.

    Attributes:
        folders: where models, data and cache are.
        shapes: LLM config keywords by name (``0.5b``, ``7b``).
        encoder: the vision encoder's config keywords.
        batch_size: samples per step.
        workers: dataloader worker processes.
        layers: decoder layers for the checks that fit them (None: what fits the GPU).
        tokens_per_step: the longest batch's tokens (batch size x longest sample), for fitting.
    """

    folders: Folders
    shapes: dict[str, dict[str, Any]]
    encoder: dict[str, Any]
    batch_size: int
    workers: int
    layers: int | None = None
    tokens_per_step: int = 0


def _attempt(check: Check, folders: Folders, batch_size: int, layers: int | None, workers: int) -> BenchResult:
    cfg = load_config(check.recipe, check_options(check, folders, batch_size, layers, workers))
    dataset = prepare(cfg)
    return run_bench(cfg, dataset, "packed", check.steps, check.warmup)


def _layer_tries(
    check: Check, llm: dict[str, Any], encoder: dict[str, Any], tokens: int, layers: int | None
) -> list[int]:
    """Decoder-layer counts to try in turn: what fits, then two thirds of it should the estimate be short."""
    total = llm["num_hidden_layers"]
    if not check.fit_layers:
        return [total]
    if layers is not None:
        return [min(layers, total)]
    if not torch.cuda.is_available():
        return [total]
    fit = layers_that_fit(llm, encoder, tokens, torch.cuda.get_device_properties(0).total_memory)
    return [fit] if fit == 1 else [fit, max(1, fit * 2 // 3)]


def _cut_note(layers: tuple[int, int], llm: dict[str, Any], plan: Plan) -> str:
    """Why the LLM has fewer layers than its model: asked for, or what fits the GPU by the estimate."""
    kept, total = layers
    if plan.layers is not None:
        return f"LLM cut to {kept} of {total} decoder layers (--layers {plan.layers})"
    needed = full_finetune_bytes(llm, plan.encoder, total, plan.tokens_per_step) / 2**30
    device = torch.cuda.get_device_properties(0).total_memory / 2**30
    return (
        f"LLM cut to {kept} of {total} decoder layers to fit the GPU's {device:.0f} GiB: all {total} need about "
        f"{needed:.0f} GiB at {plan.tokens_per_step} tokens per step (vltool.engine.gpu_check_memory)"
    )


def run_check(check: Check, plan: Plan) -> CheckResult:
    """Run one check; an error (out of memory included) is reported in the result, not raised."""
    started = time.perf_counter()
    llm = plan.shapes[check.llm]
    total = llm["num_hidden_layers"]
    result = CheckResult(check, layers=(total, total))
    if check.attention == "flash_attention_2" and not is_flash_attn_2_available():
        result.skipped = "flash-attn is not importable here (or there is no CUDA)"
        return result
    for layers in _layer_tries(check, llm, plan.encoder, plan.tokens_per_step, plan.layers):
        result.layers, out_of_memory = (layers, total), False
        try:
            bench = _attempt(check, plan.folders, plan.batch_size, None if layers == total else layers, plan.workers)
            result.bench, result.error = bench, None
        except torch.OutOfMemoryError:
            out_of_memory = True
            result.error = f"out of memory with {layers} of {total} decoder layers"
            result.notes.append(result.error)
        except Exception as err:  # a check that fails must not stop the others; its traceback goes to stderr
            traceback.print_exc()
            result.error = f"{type(err).__name__}: {err}"
        finally:
            _free_memory()  # after the handler: the traceback no longer holds the model
        if not out_of_memory:
            break
    if result.layers[0] < total:
        result.notes.append(_cut_note(result.layers, llm, plan))
    result.seconds = time.perf_counter() - started
    return result


def make_plan(work_dir: Path, tiny: bool, batch_size: int | None, layers: int | None) -> Plan:
    """The shapes, batch and workers of a GPU run, or of a tiny CPU run."""
    if tiny:
        shapes = {
            "0.5b": {**TINY_QWEN2, "tie_word_embeddings": True},
            "7b": {**TINY_QWEN2, "tie_word_embeddings": False},
        }
        return Plan(Folders(work_dir), shapes, TINY_CLIP, batch_size or 4, workers=0, layers=layers)
    shapes = {"0.5b": QWEN2_5_0_5B, "7b": QWEN2_5_7B}
    return Plan(Folders(work_dir), shapes, CLIP_L14_336, batch_size or 8, workers=4, layers=layers)


def prepare_run(plan: Plan, checks: list[Check], tiny: bool) -> str:
    """Write the models and data the checks read; return a line describing the data."""
    # bf16, as Qwen2.5's checkpoints are, on the CPU too: the trainable column then shows the
    # builder's dtype handling at work (fp32 master weights) wherever the check runs
    write_models(
        plan.folders,
        {name: plan.shapes[name] for name in {check.llm for check in checks}},
        plan.encoder,
        torch.bfloat16,
    )
    most_batches = max(check.steps + check.warmup for check in checks) + 1
    # 1.3-2k tokens per sample with 576 visual tokens: LLaVA-Instruct's longer samples
    text_words = (30, 120) if tiny else (600, 1300)
    image_size = plan.encoder["image_size"]
    write_conversations(plan.folders.data, plan.batch_size * most_batches, image_size, text_words)
    cfg = load_config(checks[0].recipe, check_options(checks[0], plan.folders, plan.batch_size, None, 0))
    lengths = prepare(cfg).lengths  # tokenised once here; every check then reads the cache
    plan.tokens_per_step = plan.batch_size * int(max(lengths))
    low, median, p95, high = length_stats(lengths)
    return f"{len(lengths)} samples, tokens per sample min {low}, median {median}, p95 {p95}, max {high}"


def run_gpu_check(
    work_dir: Path,
    tiny: bool | None = None,
    batch_size: int | None = None,
    layers: int | None = None,
    only: Sequence[str] = (),
    steps: int | None = None,
    echo: Callable[[str], None] = print,
) -> list[CheckResult]:
    """Write the models and data, run the checks one after another, and return their results.

    Args:
        work_dir: where models (about 17 GB for the GPU shapes), data and cache go; a rerun
            reuses what is already there.
        tiny: tiny shapes (default: when there is no CUDA).
        batch_size: samples per step (default 8 on a GPU, 4 tiny).
        layers: decoder layers for the 7B-shaped full finetunes (default: what fits the GPU).
        only: check keys to run (:data:`CHECKS`); default all.
        steps: timed steps of every check (default each check's own).
        echo: where progress lines go.

    Raises:
        ConfigError: an unknown key in ``only``.
    """
    unknown = set(only) - {check.key for check in CHECKS}
    if unknown:
        raise ConfigError(
            f"unknown check(s) {', '.join(sorted(unknown))}; the checks are {', '.join(c.key for c in CHECKS)}."
        )
    tiny = not torch.cuda.is_available() if tiny is None else tiny
    # tiny runs check the code paths: one untimed step is enough there
    warmup = 1 if tiny else None
    chosen = [check for check in CHECKS if not only or check.key in only]
    checks = [replace(check, steps=steps or check.steps, warmup=warmup or check.warmup) for check in chosen]
    plan = make_plan(work_dir, tiny, batch_size, layers)
    echo(f"data: {prepare_run(plan, checks, tiny)}")
    echo(f"batches: {plan.batch_size} samples packed into one row, at most {plan.tokens_per_step} tokens")
    results = []
    for check in checks:
        echo(f"[{check.key}] {check.recipe}, {check.attention} ...")
        results.append(run_check(check, plan))
        echo(f"[{check.key}] {status_line(results[-1])}")
    return results


def status_line(result: CheckResult) -> str:
    """How a check ended, in a few words."""
    if result.skipped:
        return f"skipped: {result.skipped}"
    if result.bench is None:
        return f"failed: {result.error}"
    return f"done in {result.seconds:.0f} s"
