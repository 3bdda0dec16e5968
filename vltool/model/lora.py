"""LoRA and QLoRA: adapters on the LLM and the vision encoder, k-bit loading, saving adapters.

The adapters are PEFT's own (:func:`peft.get_peft_model`), so what :func:`save_adapters`
writes loads with a plain ``PeftModel.from_pretrained(base, adapter_dir)``.
"""

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import print_log
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import PreTrainedModel

# VisionLanguageModel submodule that PEFT wraps -> the folder its adapter is saved in
ADAPTER_DIRS = {"llm": "llm_adapter", "vision_encoder.model": "vision_encoder_adapter"}


def float32_compute_without_cuda(llm_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The LLM config, switched to float32 compute when it loads quantised on a machine without CUDA.

    QLoRA configs ask for bfloat16 compute, which bitsandbytes' CPU kernels run about 40x
    slower than float32; the weights stay 4-bit or 8-bit either way. Configs without a
    ``quantization_config``, or machines with CUDA, get the config back unchanged.

    Args:
        llm_cfg: ``dict(type=AutoModelForCausalLM.from_pretrained, ..., quantization_config=dict(
            type=BitsAndBytesConfig, ...), dtype=...)``, not yet built.
    """
    llm_cfg = dict(llm_cfg)
    quantization = llm_cfg.get("quantization_config")
    if quantization is None or torch.cuda.is_available():
        return llm_cfg
    quantization = dict(quantization)
    if quantization.get("load_in_4bit"):
        quantization["bnb_4bit_compute_dtype"] = torch.float32
    print_log("No CUDA: the quantised LLM computes in float32 (bfloat16 is ~40x slower on CPU).", logger="current")
    return {**llm_cfg, "quantization_config": quantization, "dtype": torch.float32}


def prepare_quantized_llm(llm: PreTrainedModel) -> None:
    """Ready a 4-bit or 8-bit LLM for adapter training, in place; other LLMs are left alone.

    PEFT's ``prepare_model_for_kbit_training`` freezes the base weights and upcasts the
    unquantised ones (norms, embeddings, LM head) to float32 for stable updates. The embedding
    and an untied LM head then go back to the dtype the LLM loaded in (its compute dtype): they
    are frozen under LoRA, and at 7B they are a billion parameters, 4.1 GiB in float32 against
    2 GiB in bf16. One that trains (``modules_to_save``, appended token rows) is made float32
    when training starts (:func:`vltool.engine.precision.prepare_for_training`). The norms stay
    float32, as PEFT has them: they are small.

    PEFT's default also turns on gradient checkpointing, which buys memory with a second
    forward pass per layer; that is a separate config choice here
    (:func:`enable_gradient_checkpointing`).
    """
    if getattr(llm, "hf_quantizer", None) is None:
        return
    loaded_dtype = llm.get_input_embeddings().weight.dtype
    prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    for table in (llm.get_input_embeddings(), llm.get_output_embeddings()):
        table.to(loaded_dtype)  # a tied head is the same module: cast once, twice is a no-op


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each layer's activations (an LLM's decoder layers, a ViT's encoder layers) in the backward pass.

    The non-reentrant variant needs no ``enable_input_require_grads`` hook, so it works when
    every weight of the model is frozen and only adapters (or nothing inside it) train.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _module_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model``."""
    return next(name for name, candidate in model.named_modules() if candidate is module)


def train_new_token_rows(config: LoraConfig, llm: PreTrainedModel, token_ids: Sequence[int]) -> LoraConfig:
    """Make the embedding and LM-head rows of ``token_ids`` train alongside the adapters.

    The rows that :func:`vltool.model.builder.build_model` appends when the tokenizer outgrows
    the LLM (``<image>`` on an LLM without spare rows) start random, so they must learn even
    though the LLM's own weights are frozen. Only those rows train, as PEFT trainable tokens
    (``trainable_token_indices``): a tied LM head follows the embedding, an untied one gets its
    own rows. A table the config already trains whole (``modules_to_save``) is left to it, and a
    config that sets ``trainable_token_indices`` itself is returned unchanged.

    Args:
        config: the LLM's LoRA config; a copy is returned, ``config`` is not modified.
        llm: the (unwrapped) LLM the config will be applied to.
        token_ids: ids of the appended rows; nothing changes when empty.
    """
    if not token_ids or config.trainable_token_indices is not None:
        return config
    tables = {_module_name(llm, llm.get_input_embeddings()), _module_name(llm, llm.get_output_embeddings())}
    # PEFT matches modules_to_save entries against the end of a module's dotted name
    trained_whole = config.modules_to_save or ()
    tables = {name for name in tables if not any(f".{name}".endswith(f".{entry}") for entry in trained_whole)}
    if not tables:
        return config
    return replace(config, trainable_token_indices={name: list(token_ids) for name in tables})


def add_lora(model: PreTrainedModel, config: LoraConfig, new_token_ids: Sequence[int] = ()) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; everything but the adapters (and saved modules) freezes.

    Without ``target_modules`` in the config, every linear layer except the LM head gets an
    adapter (PEFT's ``"all-linear"``, which leaves out the output layer). Embeddings and the LM
    head train whole when listed in ``modules_to_save`` (e.g. ``["embed_tokens", "lm_head"]``);
    rows appended for new tokens train through :func:`train_new_token_rows`.

    Args:
        model: an LLM or a vision tower (``CLIPVisionModel``, ``SiglipVisionModel``).
        config: a built ``LoraConfig``.
        new_token_ids: rows appended to ``model``'s embedding for new tokens (LLMs only).
    """
    if config.target_modules is None and not config.target_parameters:
        config = replace(config, target_modules="all-linear")
    return get_peft_model(model, train_new_token_rows(config, model, new_token_ids))


def save_adapters(
    vlm: nn.Module, out_dir: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None
) -> list[Path]:
    """Save the LLM's and the vision encoder's LoRA adapters in PEFT's format.

    Writes ``out_dir/llm_adapter/`` and ``out_dir/vision_encoder_adapter/``, each only when
    that part has adapters; either loads with ``PeftModel.from_pretrained(base, dir)`` onto a
    base built as the model was (same embedding size). Whole embedding tables are saved only
    when ``modules_to_save`` trains them; appended token rows travel as trainable tokens.

    Args:
        vlm: a :class:`~vltool.model.vlm.VisionLanguageModel`.
        out_dir: created if missing.
        state_dict: full (gathered) values named as in ``vlm.trainable_state_dict()``
            (``llm.base_model.model...``, ``vision_encoder.model.base_model.model...``). Under
            DeepSpeed ZeRO-3 the live parameters are empty partitions, so the caller gathers
            them and passes them here; without it the live parameters are saved.

    Returns:
        The adapter folders written.
    """
    written = []
    for prefix, folder in ADAPTER_DIRS.items():
        part = vlm.get_submodule(prefix)
        if not isinstance(part, PeftModel):
            continue
        part_state = None
        if state_dict is not None:
            # PEFT expects the wrapped model's own names: strip the VisionLanguageModel prefix
            part_state = {
                name.removeprefix(f"{prefix}."): value
                for name, value in state_dict.items()
                if name.startswith(f"{prefix}.")
            }
        # "auto" would ask the Hub whether the base vocabulary changed; appended rows are already
        # in the adapter as trainable tokens, so the whole tables never need saving
        part.save_pretrained(Path(out_dir) / folder, state_dict=part_state, save_embedding_layers=False)
        written.append(Path(out_dir) / folder)
    return written
