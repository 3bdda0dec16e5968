"""DeepSpeed: the shipped ZeRO configs, "auto" fields from the vltool config, and the mmengine strategy.

A DeepSpeed JSON says how to shard; the vltool config says what to train. Batch size, gradient
accumulation, clipping and precision are filled from the vltool config wherever the JSON says
``"auto"``; where a user's JSON sets a different value, a warning names both and the vltool
config wins, because the dataloader, sampler and schedule are built from it.

Importing this module imports deepspeed (seconds): the runner does so only for DeepSpeed runs.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import deepspeed
from mmengine._strategy.deepspeed import DeepSpeedStrategy
from mmengine.config import Config
from mmengine.logging import print_log
from transformers.integrations.deepspeed import HfDeepSpeedConfig

from vltool.constants import CONFIGS_DIR
from vltool.engine import safe_load
from vltool.errors import ConfigError

DEEPSPEED_DIR = CONFIGS_DIR / "deepspeed"


def shipped_deepspeed_configs() -> dict[str, Path]:
    """The shipped DeepSpeed JSONs by name: ``zero1``, ``zero2``, ``zero2_offload``, ``zero3``, ``zero3_offload``."""
    return {path.stem: path for path in sorted(DEEPSPEED_DIR.glob("*.json"))}


def read_deepspeed_config(name_or_path: str) -> dict[str, Any]:
    """A DeepSpeed config dict from a shipped name or a JSON file.

    Raises:
        ConfigError: an unknown name (the valid ones are listed) or a file that is not JSON.
    """
    shipped = shipped_deepspeed_configs()
    path = shipped.get(name_or_path, Path(name_or_path))
    if not path.is_file():
        raise ConfigError(
            f"--deepspeed {name_or_path!r} is neither a shipped config ({', '.join(shipped)}) nor a JSON file."
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg}).") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object.")
    return config


def zero_stage(ds_config: dict[str, Any]) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it has no ``zero_optimization``)."""
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def offloads(ds_config: dict[str, Any]) -> bool:
    """Whether the config moves optimizer state or parameters off the GPU."""
    zero = ds_config.get("zero_optimization", {})
    return any(zero.get(key, {}).get("device", "none") != "none" for key in ("offload_optimizer", "offload_param"))


def _settle(ds_config: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Write ``value`` into ``ds_config[key]`` (``a.b`` for nested), warning if the JSON disagreed."""
    *parents, leaf = key.split(".")
    node = ds_config
    for parent in parents:
        node = node.setdefault(parent, {})
    current = node.get(leaf, "auto")
    if current != "auto" and current != value:
        print_log(
            f"DeepSpeed config sets {key}={current!r} but the vltool config has {source} -> {value!r}; "
            "the vltool config wins.",
            logger="current",
            level=30,
        )
    node[leaf] = value


def fill_deepspeed_config(ds_config: dict[str, Any], cfg: Config, on_gpu: bool) -> dict[str, Any]:
    """Resolve a DeepSpeed config against the vltool config.

    Args:
        ds_config: as read from JSON (left unchanged).
        cfg: the vltool config: ``train_dataloader.batch_size``, ``optim_wrapper.accumulative_counts``,
            ``optim_wrapper.clip_grad.max_norm`` and ``precision``.
        on_gpu: whether CUDA is available; without it training is fp32.

    Returns:
        A complete config with no ``"auto"`` left.

    Raises:
        ConfigError: a GPU-only setting (offloading) on a machine without a GPU.
    """
    ds = json.loads(json.dumps(ds_config))
    if offloads(ds) and not on_gpu:
        raise ConfigError(
            "this DeepSpeed config offloads optimizer state or parameters from GPU to CPU memory, which needs a "
            "GPU; this machine has none, so use --deepspeed zero2 or zero3 (the model already lives in CPU memory)."
        )
    for section in ("optimizer", "scheduler"):
        if ds.pop(section, None) is not None:
            print_log(
                f"DeepSpeed config's '{section}' section is ignored: vltool builds it from the config's "
                f"{'optim_wrapper' if section == 'optimizer' else 'lr_schedule'}.",
                logger="current",
                level=30,
            )
    optim = cfg.optim_wrapper
    clip = (optim.get("clip_grad") or {}).get("max_norm", 0.0)
    precision = cfg.get("precision", "fp32") if on_gpu else "fp32"
    _settle(ds, "train_micro_batch_size_per_gpu", cfg.train_dataloader.batch_size, "train_dataloader.batch_size")
    _settle(ds, "gradient_accumulation_steps", optim.get("accumulative_counts", 1), "optim_wrapper.accumulative_counts")
    _settle(ds, "gradient_clipping", float(clip), "optim_wrapper.clip_grad.max_norm")
    _settle(ds, "bf16.enabled", precision == "bf16", "precision")
    _settle(ds, "fp16.enabled", precision == "fp16", "precision")
    if ds.get("train_batch_size", "auto") == "auto":
        ds.pop("train_batch_size", None)  # DeepSpeed derives it: micro batch x accumulation x world size
    leftover = [key for key, value in _leaves(ds) if value == "auto"]
    if leftover:
        raise ConfigError(f"DeepSpeed config fields {', '.join(leftover)} are 'auto' but vltool cannot fill them.")
    return ds


def half_precision(ds_config: dict[str, Any]) -> bool:
    """Whether a filled DeepSpeed config trains in bf16 or fp16 (DeepSpeed then keeps fp32 master weights)."""
    return any(ds_config.get(key, {}).get("enabled", False) for key in ("bf16", "fp16"))


def _leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def deepspeed_optimizer_cfg(optimizer: dict[str, Any], ds_config: dict[str, Any]) -> dict[str, Any]:
    """The optimizer for DeepSpeed: offloaded optimizer state needs DeepSpeed's CPU Adam(W)."""
    optimizer = dict(optimizer)
    optimizer.pop("fused", None)  # a CUDA/CPU-fused torch kernel; DeepSpeed steps the optimizer itself
    if ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") != "none":
        optimizer["type"] = deepspeed.ops.adam.DeepSpeedCPUAdam
        optimizer["adamw_mode"] = True
    return optimizer


@contextmanager
def zero3_build_context(ds_config: dict[str, Any]) -> Iterator[None]:
    """Build the model partitioned across ranks under ZeRO-3, so no rank ever holds a full copy.

    ``HfDeepSpeedConfig`` makes transformers' ``from_pretrained`` and ``resize_token_embeddings``
    ZeRO-3 aware (they load into and resize partitioned weights); ``zero.Init`` partitions every
    parameter created inside the block, vltool's projector included. transformers keeps only a
    weak reference to the ``HfDeepSpeedConfig``, so it is held here for the whole run.
    """
    if zero_stage(ds_config) != 3:
        yield
        return
    zero3_build_context.hf_config = HfDeepSpeedConfig(ds_config)  # type: ignore[attr-defined]
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        yield


class CheckpointHookedDeepSpeedStrategy(DeepSpeedStrategy):
    """mmengine's ``DeepSpeedStrategy`` that runs the checkpoint hooks.

    mmengine 0.10.7's DeepSpeedStrategy ignores the ``callback`` that carries
    ``before_save_checkpoint`` and ``after_load_checkpoint``, so hook state (the RNG streams an
    exact resume needs) would be silently missing from DeepSpeed checkpoints. Its loads are
    weights-only here (DeepSpeed's own ask for ``weights_only=False``): see :mod:`vltool.engine.safe_load`.
    """

    def save_checkpoint(self, filename: str, *, extra_ckpt: dict | None = None, callback=None, **kwargs: Any) -> None:
        extra_ckpt = extra_ckpt if extra_ckpt is not None else {}
        if callback is not None:
            callback(extra_ckpt)
        super().save_checkpoint(filename, extra_ckpt=extra_ckpt, **kwargs)

    def resume(self, filename: str, *, callback=None, **kwargs: Any) -> dict:
        safe_load.check_directory(filename)
        with safe_load.weights_only_loading(filename):  # DeepSpeed's loads ask for weights_only=False
            checkpoint = super().resume(filename, **kwargs)
        safe_load.refuse_config_code(checkpoint, filename)
        if callback is not None:
            callback(checkpoint)
        return checkpoint

    def load_checkpoint(self, filename: str, **kwargs: Any) -> dict:
        safe_load.check_directory(filename)
        with safe_load.weights_only_loading(filename):
            return super().load_checkpoint(filename, **kwargs)


def strategy_cfg(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The mmengine strategy settings for a resolved DeepSpeed config."""
    # only trainable parameters are saved (as without DeepSpeed), so loading must be non-strict
    return dict(type=CheckpointHookedDeepSpeedStrategy, config=ds_config, exclude_frozen_parameters=True)
