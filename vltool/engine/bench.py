"""``vltool bench``: what a config's training steps cost, padded or packed, on the same samples.

Each run builds the config's model afresh (same seed, so the same weights), its dataset and
dataloader (sampler, workers and collate function as configured, or the collate function
forced to padding or packing), its optimizer wrapper, then times ``steps`` training steps after
``warmup`` untimed ones. Timing waits for the GPU only at the start and the end of the timed
steps, so the loop itself has no host-device sync beyond what training has.
"""

import resource
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner

from vltool.build import resolve_type
from vltool.data.collate import pad_collate
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.packing import pack_collate
from vltool.engine.data_parts import build_data_parts, build_train_dataset, prepare_data
from vltool.engine.flops import peak_flops, training_flops
from vltool.engine.model import TrainingModel
from vltool.engine.precision import optim_wrapper_cfg, prepare_for_training
from vltool.engine.runner import dataloader_cfg
from vltool.errors import ConfigError
from vltool.model.builder import build_seeded_parts

COLLATES = {"padded": pad_collate, "packed": pack_collate}


@dataclass
class BenchResult:
    """The figures of one timed run.

    Attributes:
        mode: ``padded`` or ``packed``.
        steps: timed training steps.
        seconds: their wall-clock time, data loading included.
        data_seconds: the part spent waiting for the dataloader.
        samples: samples trained on.
        tokens: real tokens (image tokens included, padding excluded).
        slots: token positions computed (rows x row length: real tokens plus padding).
        supervised: learned tokens (where the loss is taken).
        peak_memory: bytes: peak resident memory of the process (CPU) or peak allocated (GPU).
        first_loss: the loss of the first warm-up step (the same batch in every mode).
        flops: model FLOPs of the timed steps (useful work, :func:`vltool.engine.flops.training_flops`).
        peak_flops: the device's peak FLOP/s, on a GPU in the table (else None).
        peak_reserved: bytes: peak memory the CUDA caching allocator held (GPU only; else None).
        attention: the LLM's attention implementation during the run (``vltool_segment_sdpa``,
            ``flash_attention_2``, ...).
        trainable: trainable parameters by dtype name (``{"float32": 494_032_768}``).
    """

    mode: str
    steps: int
    seconds: float
    data_seconds: float
    samples: int
    tokens: int
    slots: int
    supervised: int
    peak_memory: int
    first_loss: float
    flops: float
    peak_flops: float | None
    peak_reserved: int | None = None
    attention: str = ""
    trainable: dict[str, int] = field(default_factory=dict)

    @property
    def padding_fraction(self) -> float:
        """Share of computed token positions that were padding."""
        return 1 - self.tokens / self.slots

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation: achieved useful FLOP/s over the device's peak (GPU only)."""
        return self.flops / self.seconds / self.peak_flops if self.peak_flops else None

    def per_second(self, count: int) -> float:
        """``count`` per second of the timed steps."""
        return count / self.seconds


def collate_mode(cfg: Config) -> str:
    """``packed`` when the config's collate function packs, else ``padded``."""
    collate = cfg.train_dataloader.get("collate_fn") or {"type": pad_collate}
    return "packed" if resolve_type(collate["type"]) is pack_collate else "padded"


def prepare(cfg: Config) -> VisionLanguageDataset:
    """Write the config's data if it generates it, and build the training dataset once for every run."""
    prepare_data(cfg)
    return build_train_dataset(cfg, build_data_parts(cfg))


def run_bench(cfg: Config, dataset: VisionLanguageDataset, mode: str, steps: int, warmup: int = 2) -> BenchResult:
    """Time ``steps`` training steps of ``cfg`` with padded or packed batches.

    Args:
        cfg: a loaded config.
        dataset: its training dataset (:func:`prepare`), shared by the runs compared.
        mode: ``padded`` or ``packed``: the collate function, whatever the config names.
        steps: timed steps.
        warmup: untimed steps first (allocator, kernels and caches warm up).

    Raises:
        ConfigError: ``steps`` below 1, or the dataset has fewer batches than the steps need.
    """
    if steps < 1:
        raise ConfigError(f"--steps {steps}: must be at least 1.")
    parts = build_seeded_parts(cfg)
    parts.model.use_attention_for(COLLATES[mode])  # packed: attention that keeps samples apart
    loader_cfg = dataloader_cfg(cfg, dataset, parts.tokenizer.pad_token_id)
    collate = loader_cfg["collate_fn"]
    loader_cfg["collate_fn"] = _with_collate(collate.keywords, COLLATES[mode])
    loader = Runner.build_dataloader(loader_cfg, seed=cfg.get("randomness", {}).get("seed", 0))
    if len(loader) < warmup + steps:
        raise ConfigError(f"the dataset has {len(loader)} batches; --steps {steps} needs {warmup + steps}.")
    prepare_for_training(parts.model, cfg.get("precision", "fp32"))  # the dtypes training gives each weight
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = TrainingModel(parts.model).to(device)
    optim_wrapper = build_optim_wrapper(model, optim_wrapper_cfg(cfg))
    pad_id = parts.tokenizer.pad_token_id
    result = _timed_steps(
        model, optim_wrapper, iter(loader), mode, steps, warmup, pad_id, cfg.train_dataloader.batch_size
    )
    trainable = Counter()
    for param in model.parameters():
        if param.requires_grad:
            trainable[str(param.dtype).removeprefix("torch.")] += param.numel()
    return replace(result, attention=parts.model.llm.config._attn_implementation, trainable=dict(trainable))


def _with_collate(keywords: dict, collate: object) -> object:
    """The collate function ``collate`` with the configured arguments it takes."""
    arguments = {"pad_token_id": keywords["pad_token_id"]}
    if collate is pack_collate:
        arguments["pack_length"] = keywords.get("pack_length")
    return partial(collate, **arguments)


def _timed_steps(
    model: TrainingModel,
    optim_wrapper: object,
    batches: object,
    mode: str,
    steps: int,
    warmup: int,
    pad_id: int,
    batch_size: int,
) -> BenchResult:
    cuda = torch.cuda.is_available()
    first_loss = float("nan")
    for step in range(warmup):
        outputs = model.train_step(next(batches), optim_wrapper)
        if step == 0:
            first_loss = float(outputs["loss"])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    counts = {"tokens": 0, "slots": 0, "supervised": 0}
    flops, data_seconds, peak_rss = 0.0, 0.0, _rss()
    started = time.perf_counter()
    for _ in range(steps):
        fetched = time.perf_counter()
        batch = next(batches)
        data_seconds += time.perf_counter() - fetched
        lengths = sample_lengths(batch, pad_id)
        counts["tokens"] += sum(lengths)
        counts["slots"] += batch["input_ids"].numel()
        counts["supervised"] += batch["supervised_index"].numel()
        flops += training_flops(model.vlm, lengths, batch["supervised_index"].numel(), _images(batch))
        model.train_step(batch, optim_wrapper)
        peak_rss = max(peak_rss, _rss())
    if cuda:
        torch.cuda.synchronize()  # the GPU's queued work belongs to the timed steps
    seconds = time.perf_counter() - started
    memory = torch.cuda.max_memory_allocated() if cuda else peak_rss
    device_peak = peak_flops(torch.cuda.get_device_name()) if cuda else None
    return BenchResult(
        mode,
        steps,
        seconds,
        data_seconds,
        steps * batch_size,
        **counts,
        peak_memory=memory,
        first_loss=first_loss,
        flops=flops,
        peak_flops=device_peak,
        peak_reserved=torch.cuda.max_memory_reserved() if cuda else None,
    )


def _images(batch: dict) -> int:
    return 0 if batch["pixel_values"] is None else batch["pixel_values"].shape[0]


def sample_lengths(batch: dict, pad_id: int) -> list[int]:
    """Each sample's token count in a padded or packed batch (padding excluded)."""
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"].sum(1).tolist()
    # a row's padding tail is its own segment, and it starts with the pad token; a sample never does
    ids = batch["input_ids"]
    return [end - start for row, start, end in batch["segments"] if int(ids[row, start]) != pad_id]


def _rss() -> int:
    """The process's resident memory now, in bytes (Linux); its lifetime peak elsewhere."""
    statm = Path("/proc/self/statm")
    if statm.is_file():
        return int(statm.read_text().split()[1]) * resource.getpagesize()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def image_decode_seconds(dataset: VisionLanguageDataset, samples: int = 32) -> float | None:
    """Mean seconds to decode and preprocess one image (what each sample costs the dataloader once)."""
    chosen = [i for i, has in enumerate(dataset.has_image) if has][:samples]
    if not chosen:
        return None
    started, images = time.perf_counter(), 0
    for index in chosen:
        pictures = dataset.load_images(index)
        dataset.image_transform(pictures)
        images += len(pictures)
    return (time.perf_counter() - started) / images
