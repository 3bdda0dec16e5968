"""Build the mmengine Runner (and the parts it trains) from a vltool config."""

import inspect
import uuid
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.dist import get_world_size, is_distributed
from mmengine.optim import CosineAnnealingLR, LinearLR
from mmengine.runner import Runner

from vltool.build import build, resolve_type
from vltool.constants import RESUME_LATEST
from vltool.data.collate import pad_collate
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.distributed import DATASET_PREPARE_TIMEOUT_KEY, broadcast_from_rank0
from vltool.data.images import ImageTransform
from vltool.data.sampler import LengthGroupedSampler
from vltool.engine.checkpoint import check_pretrained_exists, find_resume_checkpoint, load_pretrained
from vltool.engine.console import QuietFlexibleRunner, QuietRunner
from vltool.engine.data_parts import DataParts, build_train_dataset, dataset_prepare_timeout, prepare_data
from vltool.engine.launch import init_distributed, resolve_launcher
from vltool.engine.model import TrainingModel
from vltool.engine.precision import check_precision, optim_wrapper_cfg, prepare_for_training
from vltool.engine.schedule import resolve_train_length
from vltool.engine.stages import pretrained_checkpoint
from vltool.errors import ConfigError
from vltool.infer.pipeline import Pipeline
from vltool.model.builder import Parts, build_seeded_parts
from vltool.model.quantization import quantization_settings


def dataloader_cfg(cfg: Config, dataset: VisionLanguageDataset, pad_token_id: int) -> dict[str, Any]:
    """Mmengine dataloader settings around an already built dataset."""
    loader = dict(cfg.train_dataloader)
    loader["dataset"] = dataset
    sampler = dict(loader.get("sampler") or dict(type=LengthGroupedSampler))
    sampler["type"] = resolve_type(sampler["type"])  # configs dumped by copy-cfg name types as strings
    if "batch_size" in inspect.signature(sampler["type"]).parameters:
        sampler.setdefault("batch_size", loader["batch_size"])
    loader["sampler"] = sampler
    collate = dict(loader.pop("collate_fn", None) or dict(type=pad_collate))
    loader["collate_fn"] = partial(resolve_type(collate.pop("type")), pad_token_id=pad_token_id, **collate)
    return loader


def _param_scheduler_cfg(cfg: Config) -> list[dict[str, Any]]:
    """Linear warmup then cosine decay over ``train_cfg.max_iters`` (unless the config lists its own).

    The warmup is ``lr_schedule.warmup_iters`` iterations when set (a fixed count, as BLIP-2-style
    recipes give it; at most half the run), else ``warmup_ratio`` of the run.
    """
    if cfg.get("param_scheduler"):
        return cfg.param_scheduler
    schedule = cfg.get("lr_schedule", {})
    max_iters = cfg.train_cfg.max_iters
    if schedule.get("warmup_iters") is not None:
        warmup = min(int(schedule["warmup_iters"]), max_iters // 2)
    else:
        warmup = round(schedule.get("warmup_ratio", 0.03) * max_iters)
    warmup = warmup if warmup >= 2 else 0  # a 1-iteration warmup would leave the lr at its start factor
    lr = cfg.optim_wrapper.optimizer.lr
    cosine = dict(
        type=CosineAnnealingLR,
        eta_min=lr * schedule.get("min_lr_ratio", 0.0),
        by_epoch=False,
        begin=warmup,
        end=max_iters,
    )
    if not warmup:
        return [cosine]
    return [dict(type=LinearLR, start_factor=1e-3, by_epoch=False, begin=0, end=warmup), cosine]


def _hooks(cfg: Config, parts: Parts) -> list[Any]:
    """Custom hooks; a hook that takes a ``pipeline`` argument gets the inference pipeline."""
    hooks = []
    for hook in cfg.get("custom_hooks", []):
        hook_type = resolve_type(hook["type"])
        if "pipeline" in inspect.signature(hook_type).parameters:
            aspect = cfg.train_dataloader.dataset.get("image_aspect", "pad")
            transform = ImageTransform(parts.image_processor, aspect)
            hooks.append(build(hook, pipeline=Pipeline(parts.model, parts.tokenizer, parts.template, transform)))
        else:
            hooks.append(hook)
    return hooks


def check_gpu_only_options(cfg: Config) -> None:
    """Refuse settings that need a GPU when there is none, saying so plainly.

    Raises:
        ConfigError: e.g. flash attention on a CPU-only machine.
    """
    if torch.cuda.is_available():
        return
    attention = cfg.model.get("llm", {}).get("attn_implementation")
    if attention == "flash_attention_2":
        raise ConfigError(
            "model.llm.attn_implementation='flash_attention_2' needs a CUDA GPU with flash-attn; this machine has "
            "no GPU: use 'sdpa' (or remove the setting)."
        )


def _ddp_wrapper_cfg(cfg: Config) -> dict[str, Any]:
    """DistributedDataParallel settings; a vision encoder idle on text-only batches needs unused-parameter search."""
    return dict(
        type="MMDistributedDataParallel",
        device_ids=[torch.cuda.current_device()] if torch.cuda.is_available() else None,  # CPU DDP takes None
        broadcast_buffers=False,
        find_unused_parameters=cfg.get("find_unused_parameters", True),
    )


def _config_resume(cfg: Config) -> str | None:
    """XTuner-style ``resume = True`` (latest) or ``resume = PATH`` in the config itself."""
    value = cfg.get("resume")
    if value is True:
        return RESUME_LATEST
    return value or None


def build_runner(
    cfg: Config,
    work_dir: str | None = None,
    deepspeed: str | None = None,
    resume: str | None = None,
    launcher: str | None = None,
) -> Runner:
    """Start the processes' group, prepare data, build the parts and dataset, and return a ready runner.

    Args:
        cfg: a loaded vltool config (see docs/configs.md for its keys).
        work_dir: where checkpoints and logs go; default ``work_dirs/<config name>``.
        deepspeed: a shipped DeepSpeed config name (``zero2``, ...) or a JSON path; the run then
            uses mmengine's ``FlexibleRunner`` with DeepSpeed.
        resume: ``auto`` for the work dir's latest checkpoint, or a checkpoint path.
        launcher: ``none``, ``pytorch`` or ``slurm``; default: ``pytorch`` under torchrun.
    """
    config_name = Path(cfg.filename).stem if cfg.filename else "vltool"
    cfg.work_dir = work_dir or cfg.get("work_dir") or str(Path("work_dirs") / config_name)
    check_gpu_only_options(cfg)
    precision = cfg.get("precision", "fp32")
    check_precision(precision)
    resume = resume or _config_resume(cfg)
    resume_from = find_resume_checkpoint(cfg.work_dir, resume) if resume else None
    # resuming restores every trained weight, so the previous stage's checkpoint is not needed then
    pretrained = pretrained_checkpoint(cfg) if resume_from is None else None
    if pretrained:
        check_pretrained_exists(pretrained)
    ds_config = None
    if deepspeed:
        from vltool.engine import deepspeed as ds  # imports deepspeed: only for DeepSpeed runs

        ds_config = ds.fill_deepspeed_config(ds.read_deepspeed_config(deepspeed), cfg, torch.cuda.is_available())
        if ds.zero_stage(ds_config) == 3 and quantization_settings(cfg.model):
            raise ConfigError("a quantised (QLoRA) LLM cannot be partitioned by ZeRO-3; use --deepspeed zero2.")
    init_distributed(resolve_launcher(launcher or cfg.get("launcher")), single_process=ds_config is not None)
    # rank 0 writes the data; the others wait under dataset_prepare_timeout and see its errors
    broadcast_from_rank0(partial(prepare_data, cfg), dataset_prepare_timeout(cfg), DATASET_PREPARE_TIMEOUT_KEY)
    with ds.zero3_build_context(ds_config) if ds_config else nullcontext():
        parts = build_seeded_parts(cfg)
    # before pretrained_pth loads, so that a previous stage's fp32 weights arrive whole
    prepare_for_training(parts.model, precision, deepspeed_half=ds_config is not None and ds.half_precision(ds_config))
    # packed batches: attention that keeps samples apart, chosen for this LLM only (or refused)
    parts.model.use_attention_for((cfg.train_dataloader.get("collate_fn") or {}).get("type"))
    if pretrained:
        load_pretrained(parts.model, pretrained)
    dataset = build_train_dataset(cfg, DataParts.from_parts(parts))
    cfg.train_cfg = resolve_train_length(cfg, dataset, get_world_size())
    common = dict(
        model=TrainingModel(parts.model),
        work_dir=cfg.work_dir,
        train_dataloader=dataloader_cfg(cfg, dataset, parts.tokenizer.pad_token_id),
        param_scheduler=_param_scheduler_cfg(cfg),
        train_cfg=cfg.train_cfg,
        default_hooks=cfg.get("default_hooks"),
        custom_hooks=_hooks(cfg, parts),
        log_processor=cfg.get("log_processor"),
        visualizer=cfg.get("visualizer"),
        randomness=cfg.get("randomness", dict(seed=0)),
        launcher="pytorch" if is_distributed() else "none",  # the group is already up; mmengine joins it
        load_from=resume_from or cfg.get("load_from"),
        resume=resume_from is not None,
        # mmengine names its logger, message hub and visualizer after the experiment and a
        # per-second timestamp; two runs built in the same second in one process (notebooks,
        # tests) would otherwise share them and log into the first run's folder
        experiment_name=f"{config_name}_{uuid.uuid4().hex[:8]}",
        cfg=cfg,
    )
    if ds_config is not None:
        optimizer = ds.deepspeed_optimizer_cfg(cfg.optim_wrapper.optimizer, ds_config)
        return QuietFlexibleRunner(
            strategy=ds.strategy_cfg(ds_config),
            optim_wrapper=dict(type="DeepSpeedOptimWrapper", optimizer=optimizer),
            **common,
        )
    if "model_wrapper_cfg" not in cfg:  # mmengine's Runner reads it from the config
        cfg.model_wrapper_cfg = _ddp_wrapper_cfg(cfg)
    return QuietRunner(optim_wrapper=optim_wrapper_cfg(cfg), env_cfg=cfg.get("env_cfg", {}), **common)
