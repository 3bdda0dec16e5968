"""Build the vision-language model from ``cfg.model``: encoder, LLM (LoRA, QLoRA), projector."""

from mmengine.config import ConfigDict
from transformers import PreTrainedTokenizerBase

from vltool.build import build
from vltool.model.lora import (
    add_lora,
    enable_gradient_checkpointing,
    float32_compute_without_cuda,
    prepare_quantized_llm,
)
from vltool.model.tokenizer import add_image_token
from vltool.model.vlm import VisionLanguageModel


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

    An LLM with a ``quantization_config`` loads in 4 or 8 bits (QLoRA), with float32 compute
    when there is no CUDA device.
    """
    model_cfg = dict(model_cfg)
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
