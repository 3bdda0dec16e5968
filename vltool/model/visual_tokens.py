"""Visual tokens per image from the configs alone: no weights loaded, no LLM built.

``check-dataset`` and ``prepare-dataset`` need one number from the model, the image-token count
(:attr:`vltool.model.vlm.VisionLanguageModel.image_seq_length`). Building a 7B recipe's model for
it would read about 15 GB of weights, and a QLoRA recipe's would import bitsandbytes and peft.
Here the vision encoder and the projector are built on the meta device (shapes, no storage),
every ``X.from_pretrained`` replaced by ``X(config)`` with only ``config.json`` read (and each
other weight loader in :data:`CONFIG_ONLY_BUILDERS` by its config-only twin), and the LLM's width
is read from its config; the LLM itself is never built.
"""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from vltool.build import build, resolve_type
from vltool.errors import ConfigError
from vltool.model.qwen_vl_weights import load_qwen_vl_visual, qwen_vl_visual_shapes

HUB_KWARGS = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "proxies",
    "revision",
    "subfolder",
    "token",
    "trust_remote_code",
)
"""``from_pretrained`` arguments that say where the files are; reading the config alone honours them too."""

CONFIG_ONLY_BUILDERS: dict[Any, Any] = {load_qwen_vl_visual: qwen_vl_visual_shapes}
"""Weight loaders that are not a ``from_pretrained`` -> a function with the same arguments that
builds the same module from ``config.json`` alone (1.9B parameters of Qwen-VL's tower unread)."""


def image_seq_length_from_config(model_cfg: dict[str, Any]) -> int:
    """Visual tokens per image of the model that :func:`vltool.model.builder.build_model` builds from ``model_cfg``.

    Only ``vision_encoder``, ``projector`` and ``llm`` are read; the other keys (LoRA configs,
    freeze flags) are never touched, so nothing they name is imported.

    Args:
        model_cfg: ``cfg.model``.

    Raises:
        ConfigError: a part is missing, or a config file cannot be read (no ``config.json`` in
            the folder, a Hub id that is neither cached nor reachable).
    """
    for part in ("vision_encoder", "projector", "llm"):
        if part not in model_cfg:
            raise ConfigError(f"config has no 'model.{part}' entry; see docs/configs.md for the required keys.")
    vision_cfg = _without_weights(model_cfg["vision_encoder"], "model.vision_encoder")
    llm_hidden = llm_hidden_size(model_cfg["llm"])
    # meta tensors have shapes and no storage: a 300M-parameter encoder builds in milliseconds
    with torch.device("meta"):
        vision_encoder = build(vision_cfg)
        projector = build(model_cfg["projector"], in_features=vision_encoder.hidden_size, out_features=llm_hidden)
    # the same formula as VisionLanguageModel.image_seq_length
    return projector.num_output_tokens(vision_encoder.num_patches)


def llm_hidden_size(llm_cfg: dict[str, Any], key: str = "model.llm") -> int:
    """The LLM's embedding width, from its config alone.

    A ``from_pretrained`` type reads ``config.json``; ``dict(type=Qwen2ForCausalLM, config=...)``
    builds just the ``config`` entry. Loading options (``quantization_config``, ``dtype``,
    ``attn_implementation``) are not read.

    Raises:
        ConfigError: the config cannot be read, or has no ``hidden_size``.
    """
    model_class = _from_pretrained_class(resolve_type(llm_cfg["type"])) if "type" in llm_cfg else None
    if model_class is not None:
        config = pretrained_config(model_class, llm_cfg, key)
    elif "config" in llm_cfg:
        config = build(llm_cfg["config"])
    else:
        raise ConfigError(
            f"{key}: its width cannot be known without building it; give it a from_pretrained type "
            "(AutoModelForCausalLM.from_pretrained) or a config= entry."
        )
    hidden_size = getattr(config, "hidden_size", None)
    if not isinstance(hidden_size, int):
        raise ConfigError(f"{key}: its config ({type(config).__name__}) has no integer hidden_size.")
    return hidden_size


def pretrained_config(model_class: type, model_cfg: dict[str, Any], key: str) -> PretrainedConfig:
    """The config that ``model_class.from_pretrained(**model_cfg)`` would load, read without the weights.

    A model class reads with its own ``config_class``, which takes its part of a composite
    repository (``CLIPVisionConfig`` takes ``vision_config`` from a full CLIP folder), as
    ``from_pretrained`` does; an Auto class reads with ``AutoConfig``.

    Args:
        model_class: a ``PreTrainedModel`` subclass or an Auto model class.
        model_cfg: the ``dict(type=model_class.from_pretrained, pretrained_model_name_or_path=...)``.
        key: where ``model_cfg`` sits in the config, for messages (``model.llm``).

    Raises:
        ConfigError: no ``pretrained_model_name_or_path``, no ``config.json`` there, or it cannot be read.
    """
    source = model_cfg.get("pretrained_model_name_or_path")
    path_key = f"{key}.pretrained_model_name_or_path"
    if source is None:
        raise ConfigError(f"{path_key} is not set; from_pretrained needs a model folder or Hub id.")
    hub = {name: model_cfg[name] for name in HUB_KWARGS if name in model_cfg}
    config_class = model_class.config_class if issubclass(model_class, PreTrainedModel) else AutoConfig
    try:
        # transformers 5 answers a folder without config.json with a default config, silently
        found, _ = PretrainedConfig.get_config_dict(source, **hub)
        config = config_class.from_pretrained(source, **hub) if found else None
    except (OSError, ValueError) as err:
        raise load_error(path_key, source, err) from None
    if config is None:
        raise ConfigError(
            f"{path_key}='{source}' has no config.json; point it at a model folder (with config.json) or a Hub id."
        )
    return config


def load_error(key: str, source: Any, err: Exception) -> ConfigError:
    """A one-line error for files that would not load: the key, its value, the cause and what to do."""
    lines = str(err).strip().splitlines()
    cause = lines[0].rstrip(".: ") if lines else type(err).__name__
    if Path(str(source)).is_dir():
        fix = f"check the files in {source}"
    else:
        fix = f"without network, download it first (`hf download {source}`) or set {key} to a local folder"
    return ConfigError(f"{key}='{source}': cannot load it ({cause}); {fix}.")


def _from_pretrained_class(type_: Any) -> type | None:
    """``CLIPVisionModel`` for ``CLIPVisionModel.from_pretrained`` (models and Auto model classes), else None."""
    owner = getattr(type_, "__self__", None)
    if getattr(type_, "__name__", None) != "from_pretrained" or not isinstance(owner, type):
        return None
    if issubclass(owner, PreTrainedModel) or hasattr(owner, "from_config"):
        return owner
    return None  # an image processor or tokenizer: small files, built as they are


def _without_weights(cfg: Any, key: str) -> Any:
    """``cfg`` with every ``X.from_pretrained`` model replaced by ``X(config)``, its config read alone."""
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_without_weights(item, f"{key}[{index}]") for index, item in enumerate(cfg))
    if not isinstance(cfg, dict):
        return cfg
    type_ = resolve_type(cfg["type"]) if "type" in cfg else None
    if type_ in CONFIG_ONLY_BUILDERS:
        return {**cfg, "type": CONFIG_ONLY_BUILDERS[type_]}
    model_class = _from_pretrained_class(type_)
    if model_class is None:
        return {
            name: value if name == "type" else _without_weights(value, f"{key}.{name}") for name, value in cfg.items()
        }
    config = pretrained_config(model_class, cfg, key)
    if issubclass(model_class, PreTrainedModel):
        return dict(type=model_class, config=config)
    return dict(type=model_class.from_config, config=config)
