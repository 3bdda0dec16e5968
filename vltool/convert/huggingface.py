"""The ``huggingface`` format: ``LlavaForConditionalGeneration`` + ``LlavaProcessor``, loadable without vltool.

Weights move by renaming only (Hugging Face's LLaVA computes exactly what
:class:`~vltool.model.vlm.VisionLanguageModel` computes for a CLIP/SigLIP encoder and a
two-layer GELU MLP projector); LoRA adapters are merged first. The vltool template is also
written as ``vltool_template.json`` so vltool's own tools prompt the export the same way.
"""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from vltool.convert.hf_processor import llava_processor
from vltool.errors import ConfigError
from vltool.infer.pipeline import stop_token_ids
from vltool.model.projectors import MLPProjector
from vltool.model.saved_format import TEMPLATE_FILE
from vltool.model.vision_encoder import VisionEncoder
from vltool.model.vlm import VisionLanguageModel
from vltool.templates import Template

VISION_MODEL_TYPES = ("clip_vision_model", "siglip_vision_model")
VLTOOL_FORMAT_HINT = "use --save-format vltool, which stores every projector kind"


def check_projector(projector_type: type, depth: int) -> None:
    """Refuse projectors other than LLaVA's two-layer GELU MLP, before any weights load.

    Raises:
        ConfigError: naming the projector and pointing to the vltool format.
    """
    if projector_type is not MLPProjector or depth != 2:
        kind = projector_type.__name__ + (f" of depth {depth}" if projector_type is MLPProjector else "")
        raise ConfigError(
            f"the huggingface format holds only LLaVA's two-layer GELU MLP projector, not {kind}; {VLTOOL_FORMAT_HINT}."
        )


def check_encoder(encoder_type: type) -> None:
    """Refuse encoders other than vltool's CLIP/SigLIP ``VisionEncoder``, before any weights load.

    LLaVA in transformers has no vision tower for Qwen-VL's ViT + resampler or BLIP-2's ViT +
    Q-Former, so no layout of this format computes what they compute.

    Raises:
        ConfigError: naming the encoder and pointing to the vltool format.
    """
    if not issubclass(encoder_type, VisionEncoder):
        raise ConfigError(
            f"the huggingface format holds CLIP or SigLIP encoders, not {encoder_type.__name__} (LLaVA in "
            f"transformers has no such vision tower); {VLTOOL_FORMAT_HINT}."
        )


def check_expressible(vlm: VisionLanguageModel) -> None:
    """Refuse models that ``LlavaForConditionalGeneration`` cannot compute exactly.

    Raises:
        ConfigError: naming what does not fit (projector kind or depth, encoder kind or
            resolution) and pointing to the vltool format.
    """
    check_projector(type(vlm.projector), getattr(vlm.projector, "depth", 0))
    encoder = vlm.vision_encoder
    check_encoder(type(encoder))
    model_type = encoder.model.config.model_type
    if model_type not in VISION_MODEL_TYPES:
        raise ConfigError(
            f"the huggingface format holds CLIP or SigLIP encoders, not {model_type}; {VLTOOL_FORMAT_HINT}."
        )
    if encoder.image_size != encoder.model.config.image_size:
        raise ConfigError(
            f"the encoder runs at {encoder.image_size} px with interpolated positions (trained at "
            f"{encoder.model.config.image_size} px), which LLaVA in transformers cannot do; {VLTOOL_FORMAT_HINT}."
        )


def additional_image_tokens(vlm: VisionLanguageModel) -> int:
    """Tokens the encoder outputs besides its patches: 1 for CLIP's CLS token, 0 for SigLIP."""
    embeddings = vlm.vision_encoder.model.embeddings
    return embeddings.num_positions - embeddings.num_patches


def llava_config(vlm: VisionLanguageModel) -> LlavaConfig:
    """The ``LlavaConfig`` that computes what ``vlm`` computes (its LoRA already merged)."""
    encoder, llm = vlm.vision_encoder, vlm.llm
    return LlavaConfig(
        vision_config=encoder.model.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_id=vlm.image_token_id,
        image_seq_length=vlm.image_seq_length,
        projector_hidden_act="gelu",
        vision_feature_layer=encoder.feature_layer,
        vision_feature_select_strategy=encoder.select_strategy,
        multimodal_projector_bias=True,
        tie_word_embeddings=llm.config.tie_word_embeddings,
    )


def llava_state_dict(vlm: VisionLanguageModel) -> dict[str, torch.Tensor]:
    """``vlm``'s weights under ``LlavaForConditionalGeneration``'s names."""
    parts = {
        "model.vision_tower.": vlm.vision_encoder.model,
        "model.multi_modal_projector.": vlm.projector,
        "model.language_model.": vlm.llm.get_decoder(),
        "lm_head.": vlm.llm.get_output_embeddings(),
    }
    return {prefix + name: value for prefix, module in parts.items() for name, value in module.state_dict().items()}


def save_huggingface(
    vlm: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    image_processor: BaseImageProcessor,
    image_aspect: str,
    template: Template,
    save_dir: Path,
    dtype: torch.dtype,
    max_shard_size: str,
) -> None:
    """Write ``vlm`` (LoRA merged, unquantised) as a Hugging Face LLaVA model directory.

    Args:
        vlm: the model; its adapters must already be merged.
        tokenizer: with the ``<image>`` token.
        image_processor: the encoder's processor; ``image_aspect`` (``pad``/``resize``) as in training.
        template: rendered into the processor's chat template, system prompt included.
        save_dir: an empty folder.
        dtype: weights are saved in this dtype.
        max_shard_size: safetensors shard size (``2GB``).
    """
    check_expressible(vlm)
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(llava_config(vlm))
    state = {name: value.to(dtype) for name, value in llava_state_dict(vlm).items()}
    hf.load_state_dict(state, strict=False, assign=True)
    hf.tie_weights()
    missing = [name for name, param in hf.named_parameters() if param.is_meta]
    if missing:
        raise RuntimeError(f"LLaVA weights not filled from the vltool model: {missing[:5]}")
    stops = stop_token_ids(tokenizer, template)
    hf.generation_config = GenerationConfig(eos_token_id=stops or None, pad_token_id=tokenizer.pad_token_id)
    hf.save_pretrained(save_dir, max_shard_size=max_shard_size)
    config = vlm.vision_encoder.model.config
    processor = llava_processor(
        tokenizer,
        image_processor,
        image_aspect,
        template,
        patch_size=config.patch_size,
        vision_feature_select_strategy=vlm.vision_encoder.select_strategy,
        num_additional_image_tokens=additional_image_tokens(vlm),
    )
    processor.save_pretrained(save_dir)
    (save_dir / TEMPLATE_FILE).write_text(json.dumps(asdict(template), indent=2, ensure_ascii=False) + "\n")
