"""Load a model directory written by ``vltool convert pth_to_hf`` (either format) as a :class:`Pipeline`."""

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)

from vltool.constants import IMAGE_TOKEN
from vltool.convert.huggingface import TEMPLATE_FILE
from vltool.convert.vltool_format import MANIFEST, PROJECTOR_WEIGHTS
from vltool.data.images import ImageTransform
from vltool.errors import ConfigError
from vltool.infer.pipeline import Pipeline
from vltool.model import projectors
from vltool.model.lora import float32_compute_without_cuda
from vltool.model.vision_encoder import VisionEncoder
from vltool.model.vlm import VisionLanguageModel
from vltool.templates import Template, load_template

DType = torch.dtype | str


def load_pipeline(
    model_dir: str | Path, dtype: DType = "auto", device: str = "cpu", template: str | None = None
) -> Pipeline:
    """Load a converted model with its tokenizer, template and image transform, ready to answer.

    Args:
        model_dir: a ``vltool`` format directory (``vltool_model.json``) or a ``huggingface``
            one (LLaVA ``config.json``).
        dtype: weights' dtype; ``auto`` keeps the saved one.
        device: where the model runs.
        template: a shipped template name to use instead of the saved one.

    Raises:
        ConfigError: the directory is missing, is neither format, or lacks a part (named).
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ConfigError(f"model directory {path} does not exist.")
    override = load_template(template) if template is not None else None
    if (path / MANIFEST).is_file():
        pipeline = _load_vltool(path, dtype, override)
    elif _config_model_type(path) == "llava":
        pipeline = _load_huggingface(path, dtype, override)
    else:
        raise ConfigError(
            f"{path} is not a model directory from `vltool convert pth_to_hf` (no {MANIFEST} and no LLaVA "
            "config.json); convert a checkpoint first."
        )
    pipeline.model.to(device).eval()
    return pipeline


def _config_model_type(path: Path) -> str | None:
    config = path / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def _require(path: Path, folders: list[str]) -> None:
    missing = [folder for folder in folders if not (path / folder).exists()]
    if missing:
        raise ConfigError(f"{path} is missing {', '.join(missing)}; convert the checkpoint again into an empty folder.")


def _template(data: dict[str, Any]) -> Template:
    """A template saved as JSON (a manifest's or ``vltool_template.json``)."""
    return Template(**{**data, "stop_words": tuple(data["stop_words"])})


def _load_vltool(path: Path, dtype: DType, template: Template | None) -> Pipeline:
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    llm_entry, vision_entry = manifest["llm"], manifest["vision_encoder"]
    folders = [manifest["tokenizer"], manifest["image_processor"], manifest["projector"]["path"]]
    folders += [entry.get("path") or entry["adapter"] for entry in (llm_entry, vision_entry)]
    _require(path, folders)
    tokenizer = AutoTokenizer.from_pretrained(path / manifest["tokenizer"])
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != manifest["image_token_id"]:
        raise ConfigError(f"{path}: the tokenizer's {IMAGE_TOKEN} id differs from the manifest's; convert again.")
    llm = _load_llm(path, llm_entry, dtype, len(tokenizer))
    vision = _load_vision_model(path, vision_entry, dtype)
    encoder = VisionEncoder(
        vision, vision_entry["feature_layer"], vision_entry["select_strategy"], vision_entry["image_size"]
    )
    model = VisionLanguageModel(
        encoder,
        _load_projector(path / manifest["projector"]["path"], llm.dtype),
        llm,
        manifest["image_token_id"],
        freeze_vision_encoder=True,
        freeze_projector=True,
        freeze_llm=True,
    )
    image_processor = AutoImageProcessor.from_pretrained(path / manifest["image_processor"])
    return Pipeline(
        model,
        tokenizer,
        template or _template(manifest["template"]),
        ImageTransform(image_processor, manifest["image_aspect"]),
    )


def _load_llm(path: Path, entry: dict[str, Any], dtype: DType, vocab: int) -> PreTrainedModel:
    """The LLM saved whole, or its named base (quantised as in training) with the saved adapter."""
    if "path" in entry:
        return AutoModelForCausalLM.from_pretrained(path / entry["path"], dtype=dtype)
    options: dict[str, Any] = {"dtype": dtype}
    if entry.get("quantization"):
        options = float32_compute_without_cuda({"quantization_config": entry["quantization"], "dtype": dtype})
        options["quantization_config"] = BitsAndBytesConfig(**options["quantization_config"])
    base = _from_base(AutoModelForCausalLM, entry, options)
    if base.get_input_embeddings().num_embeddings < vocab:
        base.resize_token_embeddings(vocab)
    return PeftModel.from_pretrained(base, path / entry["adapter"])


def _load_vision_model(path: Path, entry: dict[str, Any], dtype: DType) -> PreTrainedModel:
    if "path" in entry:
        return AutoModel.from_pretrained(path / entry["path"], dtype=dtype)
    base = _from_base(getattr(transformers, entry["class"]), entry, {"dtype": dtype})
    return PeftModel.from_pretrained(base, path / entry["adapter"])


def _from_base(cls: Any, entry: dict[str, Any], options: dict[str, Any]) -> PreTrainedModel:
    try:
        return cls.from_pretrained(entry["base"], **options)
    except OSError as err:
        raise ConfigError(
            f"base model {entry['base']} of adapter {entry['adapter']} cannot be loaded ({err}); make it available "
            "at that path or Hub id."
        ) from None


def _load_projector(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    spec = json.loads((folder / "config.json").read_text())
    cls = getattr(projectors, spec.pop("type"))
    projector = cls(**spec)
    projector.load_state_dict(load_file(folder / PROJECTOR_WEIGHTS))
    return projector.to(dtype)


def _load_huggingface(path: Path, dtype: DType, template: Template | None) -> Pipeline:
    """Rebuild vltool's model around the modules of a ``LlavaForConditionalGeneration`` (no copies)."""
    hf = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype)
    config = hf.config
    if config.projector_hidden_act != "gelu" or not isinstance(config.vision_feature_layer, int):
        raise ConfigError(f"{path}: only LLaVA models with a GELU projector and one feature layer load in vltool.")
    encoder = VisionEncoder(hf.model.vision_tower, config.vision_feature_layer, config.vision_feature_select_strategy)
    projector = projectors.MLPProjector(encoder.hidden_size, config.text_config.hidden_size, depth=2)
    projector.load_state_dict(hf.model.multi_modal_projector.state_dict())
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(config.text_config)
    setattr(llm, llm.base_model_prefix, hf.model.language_model)
    llm.set_output_embeddings(hf.lm_head)
    llm.generation_config = hf.generation_config
    model = VisionLanguageModel(encoder, projector.to(hf.dtype), llm, config.image_token_id)
    model.requires_grad_(False)
    template_file = path / TEMPLATE_FILE
    if template is None:
        if not template_file.is_file():
            raise ConfigError(f"{path} has no {TEMPLATE_FILE}; name the prompt template (for example qwen_chat).")
        template = _template(json.loads(template_file.read_text(encoding="utf-8")))
    # the exported processor pads to square itself when training did
    transform = ImageTransform(AutoImageProcessor.from_pretrained(path), "resize")
    return Pipeline(model, AutoTokenizer.from_pretrained(path), template, transform)
