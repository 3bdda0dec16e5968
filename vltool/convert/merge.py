"""Fold a PEFT LoRA adapter into its base model (``vltool convert merge``): an LLM or a CLIP/SigLIP tower.

Before any weights load, the adapter is checked against a weightless (meta-device) copy of
BASE, so a wrong BASE or a wrong ``--is-clip`` is a one-line :class:`ConfigError` naming the
layer, not a PEFT traceback minutes into loading a 7B model.
"""

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    CLIPConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedModel,
    SiglipConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from vltool.convert.output import check_save_dir, check_shard_size, staged_save_dir
from vltool.errors import ConfigError
from vltool.model.tokenizer import has_tokenizer_files, load_tokenizer

# PEFT's prefix on every saved adapter tensor: PeftModel.base_model (the tuner) .model (the base)
ADAPTER_PREFIX = "base_model.model."
# config class of BASE -> the vision tower vltool trains encoder adapters on; a full CLIP/SigLIP
# checkpoint (text + vision) loads its vision half into the same class
VISION_TOWERS: dict[type[PretrainedConfig], type[PreTrainedModel]] = {
    CLIPConfig: CLIPVisionModel,
    CLIPVisionConfig: CLIPVisionModel,
    SiglipConfig: SiglipVisionModel,
    SiglipVisionConfig: SiglipVisionModel,
}
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
Preprocessor = Any  # a tokenizer or an image processor: anything with save_pretrained(dir)


def merge_adapter(
    base: str | Path,
    adapter: str | Path,
    save_dir: str | Path,
    is_clip: bool = False,
    max_shard_size: str = "2GB",
    overwrite: bool = False,
) -> Path:
    """Merge a LoRA adapter into BASE and save the merged model with its tokenizer or image processor.

    The merged weights are ``W + scale * B @ A`` per adapted layer (PEFT's ``merge_and_unload``);
    trained token rows and ``modules_to_save`` tables replace BASE's. When the adapter was trained
    on an LLM whose embedding grew for new tokens (``<image>``), BASE's embedding is grown to the
    same size first. The merged model keeps BASE's dtype.

    Args:
        base: the model the adapter was trained on: an LLM folder or Hub id, or with ``is_clip``
            a CLIP/SigLIP checkpoint, full or vision-only.
        adapter: a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``),
            e.g. ``work_dirs/RUN/adapters/llm_adapter``.
        save_dir: where the merged model goes; it must be empty or missing unless ``overwrite``.
        is_clip: merge a vision-encoder adapter into ``CLIPVisionModel``/``SiglipVisionModel``.
        max_shard_size: largest safetensors shard (``2GB``, ``500MB``).
        overwrite: replace a non-empty ``save_dir``.

    Returns:
        ``save_dir``, holding ``config.json``, the safetensors shards, and the tokenizer (LLM)
        or image processor (vision tower, when ADAPTER or BASE has one).

    Raises:
        ConfigError: a bad size or ``save_dir``, a folder that is not an adapter, a missing BASE,
            or an adapter whose layers do not fit BASE.
    """
    check_shard_size(max_shard_size)
    check_save_dir(save_dir, overwrite)
    adapter = Path(adapter)
    adapter_config, adapter_shapes = read_adapter(adapter)
    base_config = read_base_config(base, is_clip)
    rows = check_adapter_fits(skeleton(base_config, is_clip), adapter_config, adapter_shapes, base, adapter, is_clip)
    preprocessor = load_preprocessor(base, adapter, is_clip)
    if not is_clip:
        # every id of the saved tokenizer gets a row, as build_model ensured in training
        rows = max(rows, len(preprocessor))

    model = load_base(base, base_config, is_clip)
    if not is_clip and rows > model.get_input_embeddings().num_embeddings:
        # new rows start random; rows the adapter trained (trainable tokens, whole tables) replace them
        model.resize_token_embeddings(rows)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with staged_save_dir(save_dir, overwrite) as staging:
        merged.save_pretrained(staging, max_shard_size=max_shard_size)
        if preprocessor is not None:
            preprocessor.save_pretrained(staging)
    return Path(save_dir)


def read_adapter(adapter: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The adapter's config and the shape of every saved tensor, read without loading the tensors.

    Raises:
        ConfigError: no ``adapter_config.json`` or ``adapter_model.safetensors``, or not LoRA.
    """
    config_file, weights_file = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if not config_file.is_file():
        raise ConfigError(
            f"{adapter} has no adapter_config.json; pass a PEFT adapter folder such as "
            "work_dirs/RUN/adapters/llm_adapter."
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config_file} is not valid JSON ({error}); save the adapter again.") from None
    if config.get("peft_type") != "LORA":
        raise ConfigError(f"{config_file} is a {config.get('peft_type')} adapter; only LoRA adapters can be merged.")
    if not weights_file.is_file():
        raise ConfigError(f"{adapter} has no adapter_model.safetensors; save the adapter with PEFT's save_pretrained.")
    try:
        with safe_open(weights_file, framework="pt") as weights:
            shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    except SafetensorError as error:
        raise ConfigError(
            f"{weights_file} cannot be read ({str(error).splitlines()[0]}); save the adapter again."
        ) from None
    return config, shapes


def read_base_config(base: str | Path, is_clip: bool) -> PretrainedConfig:
    """BASE's config, checked to be the kind of model ``is_clip`` asks for.

    Raises:
        ConfigError: BASE has no config, or is a vision model without ``is_clip`` (or not one with it).
    """
    fix = "pass the folder or Hub id of the model the adapter was trained on"
    # a Hub id is "name" or "org/name"; a missing path that cannot be one is a mistyped folder: don't ask the Hub
    looks_like_path = Path(base).is_absolute() or str(base).startswith(".") or str(base).count("/") > 1
    if looks_like_path and not Path(base).exists():
        raise ConfigError(f"BASE {base} does not exist; {fix}.")
    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as error:
        raise ConfigError(f"BASE {base} cannot be loaded ({str(error).splitlines()[0]}); {fix}.") from None
    if is_clip and type(config) not in VISION_TOWERS:
        raise ConfigError(
            f"BASE {base} is a {config.model_type} model, not CLIP or SigLIP; drop --is-clip to merge an LLM "
            "adapter, or pass the vision encoder the adapter was trained on as BASE."
        )
    if not is_clip and type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        fix = "add --is-clip to merge a vision-encoder adapter" if type(config) in VISION_TOWERS else "pass an LLM"
        raise ConfigError(f"BASE {base} is a {config.model_type} model, not a causal LM; {fix}.")
    return config


def load_preprocessor(base: str | Path, adapter: Path, is_clip: bool) -> Preprocessor | None:
    """The tokenizer (LLM) or image processor (vision tower) to save: the adapter's own, else BASE's.

    Raises:
        ConfigError: an LLM adapter where neither the adapter folder nor BASE has a tokenizer.
    """
    if is_clip:
        source = adapter if (adapter / IMAGE_PROCESSOR_FILE).is_file() else base
        try:
            return AutoImageProcessor.from_pretrained(source)
        except OSError:
            return None  # the tower merges fine without one; vltool configs name their processor
    missing = f"neither {adapter} nor BASE {base} has a tokenizer; save the training tokenizer into the adapter folder."
    return load_tokenizer(adapter if has_tokenizer_files(adapter) else base, missing)


def skeleton(config: PretrainedConfig, is_clip: bool) -> PreTrainedModel:
    """BASE's modules with shapes but no memory (meta device), to check the adapter against."""
    with torch.device("meta"):
        if not is_clip:
            return AutoModelForCausalLM.from_config(config)
        tower_config = config.vision_config if isinstance(config, (CLIPConfig, SiglipConfig)) else config
        return VISION_TOWERS[type(config)]._from_config(tower_config)


def load_base(base: str | Path, config: PretrainedConfig, is_clip: bool) -> PreTrainedModel:
    """BASE's weights in its own dtype (transformers' ``dtype="auto"``), on the CPU."""
    if is_clip:
        return VISION_TOWERS[type(config)].from_pretrained(base)
    return AutoModelForCausalLM.from_pretrained(base)


def check_adapter_fits(
    model: PreTrainedModel,
    adapter_config: dict[str, Any],
    adapter_shapes: dict[str, tuple[int, ...]],
    base: str | Path,
    adapter: Path,
    is_clip: bool,
) -> int:
    """Check that every layer the adapter changes exists in BASE with the same shape.

    Only the vocabulary may differ: an LLM adapter can carry token rows past the end of BASE's
    embedding (rows appended for new tokens), which BASE must then grow to.

    Args:
        model: BASE, as :func:`skeleton` builds it.
        adapter_config: ``adapter_config.json``.
        adapter_shapes: saved tensor name -> shape, from :func:`read_adapter`.
        base, adapter, is_clip: for the error message.

    Returns:
        The embedding rows the adapter needs (BASE's own count when it needs no more).

    Raises:
        ConfigError: the first layer that is missing from BASE or has another shape.
    """
    tables = _vocab_tables(model, is_clip)
    rows = model.get_input_embeddings().num_embeddings if tables else 0
    rows = max([rows, *(index + 1 for index in _trainable_token_indices(adapter_config))])
    trained_on = adapter_config.get("base_model_name_or_path")
    fix = f"pass the model it was trained on{f' ({trained_on})' if trained_on else ''} as BASE"
    fix += _kind_hint(adapter_config, is_clip)
    for (module_name, tensor_name), wanted in _required_shapes(adapter_shapes).items():
        where = f"{adapter}: layer {module_name}"
        try:
            module = model.get_submodule(module_name)
            have = tuple(getattr(module, tensor_name).shape)
        except AttributeError:
            raise ConfigError(f"{where} is not in BASE {base} ({type(model).__name__}); {fix}.") from None
        compared = wanted
        if module_name in tables and len(wanted) == len(have) == 2 and (wanted[0] or 0) > have[0]:
            rows = max(rows, wanted[0])
            compared = (None, wanted[1])  # BASE grows to these rows before the merge
        if len(compared) != len(have) or any(w not in (None, h) for w, h in zip(compared, have, strict=True)):
            raise ConfigError(
                f"{where} is {_describe(module, wanted)} in the adapter but {_describe(module, have)} "
                f"in BASE {base}; {fix}."
            )
    return rows


def _required_shapes(adapter_shapes: dict[str, tuple[int, ...]]) -> dict[tuple[str, str], tuple[int | None, ...]]:
    """The shape each BASE tensor must have for the adapter to fit; ``None`` where any size fits.

    Keys are ``(module name, tensor name)`` in BASE. LoRA's ``A [r, in]`` and ``B [out, r]`` pin
    a linear layer's ``weight [out, in]``; ``lora_embedding_A [r, rows]`` and ``B [dim, r]`` an
    embedding's ``weight [rows, dim]``; trained token rows ``[n, dim]`` the width of the table
    they replace rows in; ``modules_to_save`` tensors the whole tensor they replace. Other
    adapter tensors (DoRA magnitudes, LoRA on convolutions) are left to PEFT.
    """
    required: dict[tuple[str, str], list[int | None]] = {}
    for key, shape in adapter_shapes.items():
        name = key.removeprefix(ADAPTER_PREFIX)
        pinned = _pinned_dims(name, shape)
        if pinned is None:
            continue
        module_name, tensor_name, dims = pinned
        merged = required.setdefault((module_name, tensor_name), list(dims))
        # A pins one dimension of a weight and B the other: keep both
        merged[:] = [m if m is not None else d for m, d in zip(merged, dims, strict=False)]
    return {key: tuple(dims) for key, dims in required.items()}


def _pinned_dims(name: str, shape: tuple[int, ...]) -> tuple[str, str, tuple[int | None, ...]] | None:
    """``(module, tensor, dims)`` that one adapter tensor pins in BASE, or None if it is not checked."""
    for suffix, pin in (
        (".lora_A.weight", lambda s: (None, s[1])),
        (".lora_B.weight", lambda s: (s[0], None)),
        (".lora_embedding_A", lambda s: (s[1], None)),
        (".lora_embedding_B", lambda s: (None, s[0])),
        (".token_adapter.trainable_tokens_delta", lambda s: (None, s[1])),
    ):
        if name.endswith(suffix):
            return (name.removesuffix(suffix), "weight", pin(shape)) if len(shape) == 2 else None
    if "lora_" in name or "token_adapter" in name:
        return None
    module_name, _, tensor_name = name.rpartition(".")  # a modules_to_save copy: same name as in BASE
    return module_name, tensor_name, shape


def _vocab_tables(model: PreTrainedModel, is_clip: bool) -> set[str]:
    """Names of an LLM's token tables (input embedding, LM head), whose rows may grow; none for a tower."""
    if is_clip:
        return set()
    tables = [model.get_input_embeddings(), model.get_output_embeddings()]
    return {_module_name(model, table) for table in tables if table is not None}


def _trainable_token_indices(adapter_config: dict[str, Any]) -> list[int]:
    """Every token id whose rows the adapter trains (``trainable_token_indices``: a list or per-table dict)."""
    indices = adapter_config.get("trainable_token_indices") or []
    if isinstance(indices, dict):
        return [index for table in indices.values() for index in table]
    return list(indices)


def _kind_hint(adapter_config: dict[str, Any], is_clip: bool) -> str:
    """`` (drop --is-clip: ...)`` when the adapter says it was saved from the other kind of model."""
    kind = _adapter_kind(adapter_config)
    if kind == "llm" and is_clip:
        return " (drop --is-clip: this is an LLM adapter)"
    if kind == "vision" and not is_clip:
        return " (add --is-clip: this is a vision-encoder adapter)"
    return ""


def _adapter_kind(adapter_config: dict[str, Any]) -> str | None:
    """``"llm"`` or ``"vision"``: what PEFT recorded the adapter was saved from, or None if it did not.

    PEFT records the model class in ``auto_mapping`` when no ``task_type`` is set (vltool's
    adapters); the class's ``main_input_name`` tells token ids from pixels.
    """
    if adapter_config.get("task_type") == "CAUSAL_LM":
        return "llm"
    mapping = adapter_config.get("auto_mapping") or {}
    library, class_name = mapping.get("parent_library", ""), mapping.get("base_model_class", "")
    if not library.startswith("transformers."):
        return None
    try:
        model_class = getattr(importlib.import_module(library), class_name, None)
    except ImportError:
        return None
    return {"input_ids": "llm", "pixel_values": "vision"}.get(getattr(model_class, "main_input_name", None))


def _module_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model``."""
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _describe(module: nn.Module, shape: tuple[int | None, ...]) -> str:
    """A layer's size as a user reads it: ``64 -> 128 features``, ``151647 rows of 64``; ``?`` if unknown."""
    dims = ["?" if dim is None else str(dim) for dim in shape]
    if isinstance(module, nn.Linear) and len(dims) == 2:
        return f"{dims[1]} -> {dims[0]} features"
    if isinstance(module, nn.Embedding) and len(dims) == 2:
        return f"{dims[0]} rows of {dims[1]}"
    return f"shape [{', '.join(dims)}]"
