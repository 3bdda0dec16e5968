"""Load a model for inference as a :class:`Pipeline`: a ``vltool convert pth_to_hf`` directory or XTuner-style parts.

Either way the LLM may load quantised to 4 or 8 bits with bitsandbytes (``bits``); the vision
encoder and the projector always load unquantised.
"""

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import PeftModel
from transformers import (
    MODEL_MAPPING,
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)

from vltool.constants import IMAGE_TOKEN
from vltool.data.images import ASPECT_MODES, ImageTransform
from vltool.errors import ConfigError
from vltool.infer.encoders import cast_encoder, load_saved_encoder
from vltool.infer.pipeline import Pipeline
from vltool.infer.projector_folder import load_projector
from vltool.infer.quantization import DType, adapter_base_quantization, bits_quantization, load_options
from vltool.model import projectors
from vltool.model.saved_format import MANIFEST, TEMPLATE_FILE
from vltool.model.tokenizer import add_image_token, load_tokenizer
from vltool.model.vision_encoder import FEATURE_SELECT_STRATEGIES, VisionEncoder
from vltool.model.vlm import VisionLanguageModel
from vltool.templates import Template, available_templates, load_template

LLAVA_UNQUANTIZED = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
"""``LlavaForConditionalGeneration`` modules that stay unquantised: full dotted prefixes, since
transformers matches ``llm_int8_skip_modules`` from the start of a name or as a whole suffix."""

# folders of an XTuner (or vltool) LLaVA directory; the first name is XTuner's
VISION_FOLDERS = ("visual_encoder", "vision_encoder")
VISION_ADAPTER_FOLDERS = ("visual_encoder_adapter", "vision_encoder_adapter")

PIL_IMAGE_PROCESSOR = {"backend": "pil"}
"""``AutoImageProcessor`` options: the PIL class that vltool's configs train with, also where
torchvision is installed (its resize gives slightly different pixels); saved processor configs
name the base class (``CLIPImageProcessor``), which would pick torchvision when it is there."""


def load_pipeline(
    model_dir: str | Path,
    dtype: DType = "auto",
    device: str = "cpu",
    template: str | None = None,
    bits: int | None = None,
) -> Pipeline:
    """Load a converted model with its tokenizer, template and image transform, ready to answer.

    Args:
        model_dir: a ``vltool`` format directory (``vltool_model.json``) or a ``huggingface``
            one (LLaVA ``config.json``).
        dtype: weights' dtype; ``auto`` keeps the saved one.
        device: where the model runs.
        template: a shipped template name to use instead of the saved one.
        bits: load the LLM quantised to 4 (NF4) or 8 bits; None keeps full precision. Without
            CUDA a quantised LLM computes in float32 whatever ``dtype`` says. An LLM saved as
            an adapter on a quantised base (QLoRA) always loads on that base as trained;
            ``bits``, if given, must name the same width.

    Raises:
        ConfigError: the directory is missing, is neither format, lacks a part (named), or
            ``bits`` is not 4, 8 or None.
    """
    path = Path(model_dir)
    quantization = bits_quantization(bits, dtype)  # an invalid `bits` fails before anything loads
    if not path.is_dir():
        raise ConfigError(f"model directory {path} does not exist.")
    override = load_template(template) if template is not None else None
    if (path / MANIFEST).is_file():
        pipeline = _load_vltool(path, dtype, device, override, bits)
    elif _config_model_type(path) == "llava":
        pipeline = _load_huggingface(path, load_options(quantization, dtype, device, LLAVA_UNQUANTIZED), override)
    else:
        raise ConfigError(
            f"{path} is not a model directory from `vltool convert pth_to_hf` (no {MANIFEST} and no LLaVA "
            "config.json); convert a checkpoint first."
        )
    return _ready(pipeline, device)


def load_parts_pipeline(
    llm: str,
    llava_dir: str | Path,
    visual_encoder: str | None = None,
    dtype: DType = "auto",
    device: str = "cpu",
    template: str | None = None,
    bits: int | None = None,
    feature_layer: int = -2,
    select_strategy: str = "default",
    image_aspect: str = "pad",
) -> Pipeline:
    """Assemble a model from XTuner-style parts, as ``xtuner chat LLM --visual-encoder ENC --llava DIR`` does.

    ``llava_dir`` holds what training produced (``xtuner convert pth_to_hf``): ``projector/``
    (XTuner's ``ProjectorModel`` or vltool's layout), optionally ``llm_adapter/``,
    ``visual_encoder/`` (a full encoder; vltool's name ``vision_encoder/`` works too) and
    ``visual_encoder_adapter/`` (or ``vision_encoder_adapter/``). Adapters load with PEFT onto
    their bases; a fully fine-tuned LLM saved as ``llava_dir/llm/`` must be passed as ``llm``.
    The tokenizer comes from ``llm`` with ``<image>`` added (the embedding grows only when the
    new id does not fit); the image processor from the encoder's folder.

    Args:
        llm: the base LLM, a folder or Hub id.
        llava_dir: the trained parts.
        visual_encoder: the vision encoder (folder or Hub id; a full CLIP or SigLIP gives its
            vision half); leave out when ``llava_dir`` holds one.
        dtype, device, bits: as in :func:`load_pipeline`.
        template: a shipped template name; required, parts carry none.
        feature_layer, select_strategy: which encoder features the projector was trained on
            (XTuner's LLaVA: ``-2`` and ``default``, CLS dropped).
        image_aspect: ``pad`` (to square, as XTuner's LLaVA) or ``resize``.

    Raises:
        ConfigError: a part is missing (named, with the option to pass), an option is invalid,
            or the projector has no vltool equivalent.
    """
    llava = Path(llava_dir)
    chat_template = _required_template(template)
    quantization = bits_quantization(bits, dtype)
    _check_parts(llm, llava, select_strategy, image_aspect)
    encoder_source = _encoder_source(llava, visual_encoder)
    # the small parts first: a missing one fails before the LLM loads
    no_tokenizer = f"LLM {llm}: no tokenizer loads from it (tokenizer.json, vocab.json...); pass the LLM's folder."
    tokenizer = load_tokenizer(llm, no_tokenizer)
    image_token_id = add_image_token(tokenizer)
    image_processor = _pretrained(
        AutoImageProcessor, encoder_source, f"image processor of {encoder_source}", PIL_IMAGE_PROCESSOR
    )
    projector = load_projector(llava / "projector")
    language_model = _causal_lm(
        llm, _first_folder(llava, ("llm_adapter",)), load_options(quantization, dtype, device), len(tokenizer)
    )
    vision = _vision_model(encoder_source, _first_folder(llava, VISION_ADAPTER_FOLDERS), dtype)
    model = _inference_model(
        VisionEncoder(vision, feature_layer, select_strategy), projector, language_model, image_token_id
    )
    return _ready(Pipeline(model, tokenizer, chat_template, ImageTransform(image_processor, image_aspect)), device)


def _check_parts(llm: str, llava: Path, select_strategy: str, image_aspect: str) -> None:
    if select_strategy not in FEATURE_SELECT_STRATEGIES or image_aspect not in ASPECT_MODES:
        raise ConfigError(
            f"select_strategy must be one of {', '.join(FEATURE_SELECT_STRATEGIES)} and image_aspect one of "
            f"{', '.join(ASPECT_MODES)}; got {select_strategy!r} and {image_aspect!r}."
        )
    if not llava.is_dir():
        raise ConfigError(f"--llava {llava} is not a directory; pass the folder `xtuner convert pth_to_hf` wrote.")
    if not (llava / "projector").is_dir():
        raise ConfigError(f"{llava / 'projector'} is missing; --llava must name a folder with the trained projector/.")
    trained_llm = llava / "llm"
    if trained_llm.is_dir() and Path(llm).resolve() != trained_llm.resolve():
        raise ConfigError(f"{trained_llm} holds the fine-tuned LLM; pass it as the LLM instead of {llm}.")


def _ready(pipeline: Pipeline, device: str) -> Pipeline:
    # a quantised LLM is already on `device` (device_map), so this moves only what is not
    pipeline.model.to(device).eval()
    return pipeline


def _required_template(name: str | None) -> Template:
    if name is None:
        raise ConfigError(
            "XTuner-style parts carry no prompt template; pass --prompt-template with one of "
            f"{', '.join(available_templates())}."
        )
    return load_template(name)


def _encoder_source(llava: Path, visual_encoder: str | None) -> str | Path:
    """The vision encoder to load: ``llava``'s own full encoder, else ``--visual-encoder``."""
    saved = _first_folder(llava, VISION_FOLDERS)
    if saved is not None and not (saved / "config.json").is_file():
        saved = None  # an empty or partial folder holds no encoder
    if saved is not None and visual_encoder is not None:
        raise ConfigError(
            f"{saved} holds the trained vision encoder; leave out --visual-encoder {visual_encoder}, which it replaces."
        )
    if saved is None and visual_encoder is None:
        raise ConfigError(
            f"no vision encoder: {llava} has no {VISION_FOLDERS[0]}/ folder; pass --visual-encoder with the encoder "
            "the projector was trained on."
        )
    return saved if saved is not None else visual_encoder


def _first_folder(parent: Path, names: tuple[str, ...]) -> Path | None:
    return next((parent / name for name in names if (parent / name).is_dir()), None)


# ---- parts shared by both loaders


def _pretrained(cls: Any, source: str | Path, what: str, options: dict[str, Any]) -> Any:
    try:
        return cls.from_pretrained(source, **options)
    except OSError as err:
        reason = " ".join(str(err).split())
        raise ConfigError(f"{what} cannot be loaded ({reason}); make it available at that path or Hub id.") from None


def _with_adapter(model: PreTrainedModel, adapter: Path | None) -> PreTrainedModel:
    return PeftModel.from_pretrained(model, adapter) if adapter is not None else model


def _causal_lm(
    source: str | Path, adapter: Path | None, options: dict[str, Any], vocab: int, what: str | None = None
) -> PreTrainedModel:
    """A causal LM with at least ``vocab`` embedding rows, with the PEFT ``adapter`` on it."""
    llm = _pretrained(AutoModelForCausalLM, source, what or f"LLM {source}", options)
    if llm.get_input_embeddings().num_embeddings < vocab:
        llm.resize_token_embeddings(vocab)
    return _with_adapter(llm, adapter)


def _vision_model(
    source: str | Path, adapter: Path | None, dtype: DType, cls: Any = None, what: str | None = None
) -> PreTrainedModel:
    """A vision tower (a full CLIP/SigLIP gives its vision half), with the PEFT ``adapter`` on it."""
    what = what or f"vision encoder {source}"
    if cls is None:
        config = _pretrained(AutoConfig, source, what, {})
        cls = MODEL_MAPPING[type(getattr(config, "vision_config", None) or config)]
    return _with_adapter(_pretrained(cls, source, what, {"dtype": dtype}), adapter)


def _inference_model(
    encoder: torch.nn.Module, projector: torch.nn.Module, llm: PreTrainedModel, image_token_id: int
) -> VisionLanguageModel:
    """A frozen model whose encoder (BLIP-2's Q-Former excepted) and projector compute in the LLM's dtype.

    The parts may be saved in different dtypes, and a quantised LLM on CPU computes in float32
    whatever ``dtype`` asked for; the projector's input and output must match both neighbours.
    """
    cast_encoder(encoder, llm.dtype)
    model = VisionLanguageModel(encoder, projector.to(llm.dtype), llm, image_token_id)
    return model.requires_grad_(False)


# ---- the vltool format


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


def _load_vltool(path: Path, dtype: DType, device: str, template: Template | None, bits: int | None) -> Pipeline:
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    llm_entry, vision_entry = manifest["llm"], manifest["vision_encoder"]
    folders = [manifest["tokenizer"], manifest["image_processor"], manifest["projector"]["path"]]
    folders += [entry.get("path") or entry["adapter"] for entry in (llm_entry, vision_entry)]
    _require(path, folders)
    tokenizer = load_tokenizer(path / manifest["tokenizer"], f"{path} has no tokenizer files; convert again.")
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != manifest["image_token_id"]:
        raise ConfigError(f"{path}: the tokenizer's {IMAGE_TOKEN} id differs from the manifest's; convert again.")
    model = _inference_model(
        load_saved_encoder(path, vision_entry, dtype, _load_vision_part),
        load_projector(path / manifest["projector"]["path"]),
        _load_llm_part(path, llm_entry, dtype, device, bits, len(tokenizer)),
        manifest["image_token_id"],
    )
    image_processor = AutoImageProcessor.from_pretrained(path / manifest["image_processor"], **PIL_IMAGE_PROCESSOR)
    return Pipeline(
        model,
        tokenizer,
        template or _template(manifest["template"]),
        ImageTransform(image_processor, manifest["image_aspect"]),
    )


def _load_llm_part(
    path: Path, entry: dict[str, Any], dtype: DType, device: str, bits: int | None, vocab: int
) -> PreTrainedModel:
    """The LLM saved whole (quantised as ``bits`` asks), or its named base (quantised as in training) + adapter."""
    if "path" in entry:
        options = load_options(bits_quantization(bits, dtype), dtype, device)
        return _causal_lm(path / entry["path"], None, options, vocab)
    options = load_options(adapter_base_quantization(path, entry, bits, dtype), dtype, device)
    return _causal_lm(entry["base"], path / entry["adapter"], options, vocab, _adapter_base(entry))


def _load_vision_part(path: Path, entry: dict[str, Any], dtype: DType) -> PreTrainedModel:
    if "path" in entry:
        return _vision_model(path / entry["path"], None, dtype)
    cls = getattr(transformers, entry["class"])
    return _vision_model(entry["base"], path / entry["adapter"], dtype, cls, _adapter_base(entry))


def _adapter_base(entry: dict[str, Any]) -> str:
    return f"base model {entry['base']} of adapter {entry['adapter']}"


# ---- the Hugging Face LLaVA format


def _load_huggingface(path: Path, options: dict[str, Any], template: Template | None) -> Pipeline:
    """Rebuild vltool's model around the modules of a ``LlavaForConditionalGeneration`` (no copies)."""
    hf = LlavaForConditionalGeneration.from_pretrained(path, **options)
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
    model = _inference_model(encoder, projector, llm, config.image_token_id)
    template_file = path / TEMPLATE_FILE
    if template is None:
        if not template_file.is_file():
            raise ConfigError(f"{path} has no {TEMPLATE_FILE}; name the prompt template (for example qwen_chat).")
        template = _template(json.loads(template_file.read_text(encoding="utf-8")))
    # the exported processor pads to square itself when training did
    transform = ImageTransform(AutoImageProcessor.from_pretrained(path, **PIL_IMAGE_PROCESSOR), "resize")
    tokenizer = load_tokenizer(path, f"{path} has no tokenizer files; convert the checkpoint again.")
    return Pipeline(model, tokenizer, template, transform)
