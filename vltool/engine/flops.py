"""Model FLOPs of a training step and GPUs' peak FLOP/s: the two halves of MFU.

Model FLOPs count the useful work only: matrix multiplies of real tokens (never padding),
causal attention inside each sample, the LM head at learned positions, and the vision encoder
and projector per image. A trained weight costs three times its forward (forward, input
gradients, weight gradients), a frozen weight that still passes gradients back twice, a frozen
part at the start of the graph once. In the LLM this is counted weight by weight, so a LoRA run
counts its frozen base twice and only the adapters three times; attention scores, which have no
weights, cost three times their forward wherever gradients pass. Recomputation (gradient
checkpointing) is not counted: it is overhead, not model work.
"""

from torch import nn

from vltool.model.vlm import VisionLanguageModel

PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "H20": 148e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "A6000": 155e12,
    "A10": 125e12,
    "4090": 165e12,
}
"""Dense bf16 tensor-core peaks (NVIDIA data sheets, SXM parts), by a fragment of the device name."""


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU by its name, or None when it is not in the table."""
    return next((flops for fragment, flops in PEAK_BF16_FLOPS.items() if fragment in device_name), None)


def _count(module: nn.Module, skip: tuple[nn.Module, ...] = (), trainable: bool | None = None) -> int:
    """Weights of ``module`` outside ``skip``; only trained (or only frozen) ones when ``trainable`` says."""
    skipped = {id(param) for part in skip for param in part.parameters()}
    return sum(
        _numel(param)
        for param in module.parameters()
        if id(param) not in skipped and (trainable is None or param.requires_grad == trainable)
    )


def _numel(param: nn.Parameter) -> int:
    """The weights a parameter stands for: a bitsandbytes 4-bit one packs two in each stored byte."""
    quant_state = getattr(param, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else param.numel()


def _trains(module: nn.Module) -> bool:
    return any(param.requires_grad for param in module.parameters())


def training_flops(vlm: VisionLanguageModel, lengths: list[int], supervised: int, images: int) -> float:
    """Model FLOPs of one training step.

    Args:
        vlm: the model (its shapes and which parts train).
        lengths: each sample's token count (image tokens included, padding excluded).
        supervised: learned positions (where the LM head runs).
        images: images in the batch.
    """
    llm = vlm.llm.get_decoder()
    config = vlm.llm.config
    encoder_trains, projector_trains, llm_trains = _trains(vlm.vision_encoder), _trains(vlm.projector), _trains(llm)
    passes_gradients = llm_trains or encoder_trains or projector_trains
    head_factor = 3 if _trains(vlm.llm.get_output_embeddings()) else 2
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention_width = config.num_attention_heads * head_dim
    embeddings = (llm.get_input_embeddings(),)
    frozen, trained = _count(llm, embeddings, trainable=False), _count(llm, embeddings, trainable=True)
    weights = 2 * sum(lengths) * (frozen * (2 if passes_gradients else 1) + trained * 3)
    attention = 2 * config.num_hidden_layers * attention_width * sum(length * length for length in lengths)
    llm_flops = weights + attention * (3 if passes_gradients else 1)
    head = head_factor * 2 * config.hidden_size * vlm.llm.get_output_embeddings().weight.shape[0] * supervised
    patches = vlm.vision_encoder.num_patches
    vision_forward = 2 * _count(vlm.vision_encoder) * patches * images
    projector_forward = 2 * _count(vlm.projector) * patches * images
    projector_factor = 3 if projector_trains else 2 if encoder_trains else 1
    vision = vision_forward * (3 if encoder_trains else 1) + projector_forward * projector_factor
    return float(llm_flops + head + vision)
