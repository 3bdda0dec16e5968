"""Load Qwen-VL's visual tower from a Qwen-VL(-Chat) checkpoint folder, reading only its own tensors.

A Qwen-VL-Chat folder holds a 7B LLM and, under ``transformer.visual.``, the 1.9B-parameter
visual tower (594 tensors). The shard index (``*.index.json``) says which shards hold the tower;
only those are opened, and of them only the tower's tensors are read (safetensors reads tensors
by name; ``.bin`` shards are memory-mapped, so the LLM's bytes in a mixed shard stay on disk).
"""

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import SafetensorError, safe_open
from transformers.integrations import is_deepspeed_zero3_enabled

from vltool.errors import ConfigError
from vltool.model.qwen_vl_visual import QwenVLVisionTransformer, QwenVLVisualConfig

PREFIX = "transformer.visual."
"""Where a Qwen-VL checkpoint keeps the visual tower's tensors."""

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def load_qwen_vl_visual(
    pretrained_model_name_or_path: str, dtype: torch.dtype | str = "auto"
) -> QwenVLVisionTransformer:
    """Qwen-VL's visual tower with the weights of a local Qwen-VL(-Chat) checkpoint folder.

    Args:
        pretrained_model_name_or_path: a folder with ``config.json`` (its ``visual`` block) and the
            weights (sharded with an index json, or whole). A Hub name such as
            ``Qwen/Qwen-VL-Chat`` is not downloaded: it must be downloaded first.
        dtype: ``"auto"`` keeps the checkpoint's dtype (bf16 for Qwen-VL-Chat), as transformers'
            ``from_pretrained`` does; a dtype (or its name, ``"float32"``) converts to it.

    Raises:
        ConfigError: no such folder, no ``visual`` block, unreadable shards, or tensors missing,
            unexpected or of the wrong shape, in one line naming the file.
    """
    folder = resolve_checkpoint(pretrained_model_name_or_path)
    config = read_visual_config(folder)
    tensors, sources = read_visual_tensors(folder)
    if dtype != "auto":
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        tensors = {name: value.to(dtype) for name, value in tensors.items()}
    if is_deepspeed_zero3_enabled():
        # built under ZeRO-3's zero.Init (vltool.engine.deepspeed), which partitions each weight
        # as it is created: the checkpoint is copied into the gathered weights
        model = QwenVLVisionTransformer(config)
        check_tensors(model, tensors, sources, folder)
        _copy_into_partitions(model, tensors)
        return model
    with torch.device("meta"):  # no random init, no second copy of 1.9B parameters
        model = QwenVLVisionTransformer(config)
    check_tensors(model, tensors, sources, folder)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


def qwen_vl_visual_shapes(
    pretrained_model_name_or_path: str, dtype: torch.dtype | str = "auto"
) -> QwenVLVisionTransformer:
    """The tower :func:`load_qwen_vl_visual` would load, with placeholder weights: only ``config.json`` is read.

    For ``check-dataset``, which builds the encoder on the meta device to count its tokens.
    ``dtype`` is accepted for :func:`load_qwen_vl_visual`'s signature and ignored.
    """
    return QwenVLVisionTransformer(read_visual_config(resolve_checkpoint(pretrained_model_name_or_path)))


def save_qwen_vl_visual(
    model: QwenVLVisionTransformer, folder: Path, dtype: torch.dtype, max_shard_size: str = "5GB"
) -> None:
    """Write ``model`` as a Qwen-VL-style folder that :func:`load_qwen_vl_visual` reads back exactly.

    ``config.json`` holds only the ``visual`` block; the tensors keep the checkpoint's
    ``transformer.visual.`` names, in ``model.safetensors`` (or shards with
    ``model.safetensors.index.json``).

    Args:
        model: the tower, LoRA already merged.
        folder: created; must not exist.
        dtype: of every saved tensor (the original checkpoint holds one dtype too).
        max_shard_size: largest safetensors file, ``2GB``.
    """
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"visual": asdict(model.visual_config)}, indent=2) + "\n")
    state = {PREFIX + name: value.detach().to(dtype) for name, value in model.state_dict().items()}
    save_torch_state_dict(state, folder, max_shard_size=max_shard_size)


def resolve_checkpoint(name_or_path: str) -> Path:
    """The checkpoint folder ``name_or_path`` names; only a local folder is accepted."""
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"Qwen-VL checkpoint folder '{name_or_path}' not found: download it first "
            f"(huggingface-cli download Qwen/Qwen-VL-Chat --local-dir <folder>) and set "
            f"model.vision_encoder.model.pretrained_model_name_or_path=<folder>."
        )
    return folder


def read_visual_config(folder: Path) -> QwenVLVisualConfig:
    """The ``visual`` block of ``folder/config.json``."""
    path = folder / "config.json"
    try:
        block = json.loads(path.read_text())["visual"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: no readable 'visual' block ({type(error).__name__}: {error}).") from None
    return QwenVLVisualConfig.from_dict(block)


def visual_shards(folder: Path) -> list[Path]:
    """The weight files holding ``transformer.visual.*`` tensors, per the index json.

    Without an index, every ``*.safetensors`` file (whose headers say whether it holds any), or
    else every ``*.bin`` file, is a candidate.
    """
    for name in INDEX_NAMES:
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as error:
                raise ConfigError(f"{index}: no readable 'weight_map' ({type(error).__name__}: {error}).") from None
            shards = sorted({shard for key, shard in weight_map.items() if key.startswith(PREFIX)})
            if not shards:
                raise ConfigError(f"{index} lists no {PREFIX}* tensors: not a Qwen-VL checkpoint.")
            return [folder / shard for shard in shards]
    for suffix in WEIGHT_SUFFIXES:
        files = sorted(folder.glob(f"*{suffix}"))
        if files:
            return files
    raise ConfigError(f"{folder} has no *.safetensors or *.bin weights and no index json.")


def read_visual_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """The tower's tensors (names without ``transformer.visual.``) and the file each came from."""
    tensors: dict[str, torch.Tensor] = {}
    sources: dict[str, Path] = {}
    for shard in visual_shards(folder):
        for name, value in _visual_tensors_of(shard):
            tensors[name.removeprefix(PREFIX)] = value
            sources[name.removeprefix(PREFIX)] = shard
    return tensors, sources


def _visual_tensors_of(shard: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for the ``transformer.visual.*`` tensors of one shard."""
    try:
        if shard.suffix == ".safetensors":
            with safe_open(shard, framework="pt") as weights:
                for name in weights.keys():
                    if name.startswith(PREFIX):
                        yield name, weights.get_tensor(name)
            return
        # mmap: only the pages of the tensors kept here are read, not the LLM's in a mixed shard
        state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, SafetensorError, RuntimeError, ValueError) as error:
        raise ConfigError(f"{shard}: cannot read weights ({type(error).__name__}: {error}).") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{shard}: holds a {type(state).__name__}, not a dict of tensors.")
    yield from ((name, value) for name, value in state.items() if name.startswith(PREFIX))


def check_tensors(
    model: QwenVLVisionTransformer, tensors: dict[str, torch.Tensor], sources: dict[str, Path], folder: Path
) -> None:
    """Raise a one-line :class:`ConfigError` unless ``tensors`` are exactly ``model``'s, shape for shape."""
    expected = {name: _full_shape(value) for name, value in model.state_dict(keep_vars=True).items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise ConfigError(f"{folder}: the checkpoint has no {PREFIX}{name} (Qwen-VL visual weights incomplete).")
        if tensors[name].shape != shape:
            raise ConfigError(
                f"{sources[name]}: {PREFIX}{name} has shape {list(tensors[name].shape)}, but config.json's "
                f"'visual' block gives {list(shape)}."
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ConfigError(f"{sources[unexpected[0]]}: unexpected tensor {PREFIX}{unexpected[0]} for Qwen-VL's visual.")


def _full_shape(value: torch.Tensor) -> torch.Size:
    """A tensor's shape; for a ZeRO-3 partitioned parameter (empty here), the whole weight's."""
    return getattr(value, "ds_shape", value.shape)


def _copy_into_partitions(model: QwenVLVisionTransformer, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into ``model``'s ZeRO-3-partitioned parameters, and its buffers.

    Every rank read the same files and copies into the whole weight gathered from the
    partitions; on leaving the block DeepSpeed broadcasts rank 0's copy and re-partitions it.
    One weight at a time, so no rank holds more than one whole weight besides the tensors read.
    """
    import deepspeed  # only under ZeRO-3, where it is installed and initialised

    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=hasattr(param, "ds_id")):
            with torch.no_grad():
                param.copy_(tensors[name])
    for name, buffer in model.named_buffers():
        buffer.copy_(tensors[name])
