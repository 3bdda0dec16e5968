# LLaVA-1.5 stage 2, QLoRA finetune for Qwen3-0.6B + SigLIP so400m/14-384: the LoRA recipe with the
# LLM loaded in 4-bit NF4 (bitsandbytes). Any LoRA recipe becomes QLoRA with
# --cfg-options model.llm_quantization=nf4 (or int8).
from mmengine.config import read_base

with read_base():
    from .qwen3_0_6b_siglip_so400m_p14_384_lora_finetune import *  # noqa: F403

model.update(llm_quantization="nf4")
