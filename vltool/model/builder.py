"""Build what a config describes.

The vision-language model from ``cfg.model`` (encoder, LLM with LoRA or QLoRA, projector), and
with it the tokenizer, template and image processor.
"""

from dataclasses import dataclass

from mmengine.config import Config, ConfigDict
from mmengine.runner import set_random_seed
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from vltool.build import build
from vltool.model.config_parts import check_required_keys, part_cfg
from vltool.model.lora import (
    add_lora,
    enable_gradient_checkpointing,
    float32_compute_without_cuda,
    prepare_quantized_llm,
)
from vltool.model.quantization import quantization_settings, quantized_llm_cfg
from vltool.model.tokenizer import add_image_token
from vltool.model.vlm import VisionLanguageModel
from vltool.templates import Template, load_template


@dataclass
class Parts:
    """What a config builds besides the training loop."""

    tokenizer: PreTrainedTokenizerBase
    template: Template
    image_processor: BaseImageProcessor
    model: VisionLanguageModel


def build_parts(cfg: Config) -> Parts:
    """Tokenizer, template, image processor and model from ``cfg``."""
    check_required_keys(cfg)
    template = load_template(cfg.template)
    tokenizer = build(part_cfg(cfg, "tokenizer"))
    model = build_model(cfg.model, tokenizer)
    return Parts(tokenizer, template, build(part_cfg(cfg, "image_processor")), model)


def build_seeded_parts(cfg: Config) -> Parts:
    """:func:`build_parts` right after seeding with the config's ``randomness``.

    Parts built from a config rather than loaded by name (the demo's LLM and encoder) start
    from random weights, and checkpoints hold only what trains. Seeding here, the one place
    training and ``convert`` both build through, gives frozen random weights that are the same
    at conversion time as they were in training.
    """
    randomness = cfg.get("randomness", dict(seed=0))
    set_random_seed(randomness.get("seed", 0), deterministic=randomness.get("deterministic", False))
    return build_parts(cfg)


def build_model(model_cfg: ConfigDict, tokenizer: PreTrainedTokenizerBase) -> VisionLanguageModel:
    """Build a :class:`VisionLanguageModel` from ``cfg.model``.

    ``model_cfg`` holds ``vision_encoder``, ``projector`` and ``llm`` dicts plus the freeze
    flags. Derived numbers come from the built parts: the projector's widths from the
    encoder's and LLM's hidden sizes, the image token id from the tokenizer. The LLM's
    embedding grows if the tokenizer has more tokens than it has rows.

    Optional keys:
        llm_lora, vision_encoder_lora: ``dict(type=LoraConfig, ...)``; see
            :func:`vltool.model.lora.add_lora`. With ``llm_lora``, rows appended to the
            embedding train as well (:func:`vltool.model.lora.train_new_token_rows`).
        llm_gradient_checkpointing: recompute the LLM's activations in the backward pass
            (default False).
        vision_encoder_gradient_checkpointing: the same for the vision encoder's layers, when
            it trains (default False).

        llm_quantization: ``"nf4"``, ``"int8"`` or BitsAndBytesConfig settings: the LLM loads
            in 4 or 8 bits (QLoRA; :mod:`vltool.model.quantization`), with float32 compute when
            there is no CUDA device.
    """
    model_cfg = dict(model_cfg)
    quantization = quantization_settings(model_cfg)
    model_cfg.pop("llm_quantization", None)
    if quantization is not None:
        model_cfg["llm"] = quantized_llm_cfg(model_cfg["llm"], quantization)
    image_token_id = add_image_token(tokenizer)
    vision_encoder = build(model_cfg.pop("vision_encoder"))
    if model_cfg.pop("vision_encoder_gradient_checkpointing", False):
        enable_gradient_checkpointing(vision_encoder.model)
    llm = build(float32_compute_without_cuda(model_cfg.pop("llm")))
    old_rows = llm.get_input_embeddings().num_embeddings
    if len(tokenizer) > old_rows:
        llm.resize_token_embeddings(len(tokenizer))
    prepare_quantized_llm(llm)
    if model_cfg.pop("llm_gradient_checkpointing", False):
        enable_gradient_checkpointing(llm)
    llm_lora, vision_lora = model_cfg.pop("llm_lora", None), model_cfg.pop("vision_encoder_lora", None)
    projector = build(
        model_cfg.pop("projector"), in_features=vision_encoder.hidden_size, out_features=llm.config.hidden_size
    )
    model = VisionLanguageModel(vision_encoder, projector, llm, image_token_id=image_token_id, **model_cfg)
    # adapters are added after the freeze flags apply, so they train even when their base is frozen
    if llm_lora is not None:
        model.llm = add_lora(model.llm, build(llm_lora), new_token_ids=range(old_rows, len(tokenizer)))
    if vision_lora is not None:
        model.vision_encoder.model = add_lora(model.vision_encoder.model, build(vision_lora))
    return model
