# LLaVA-1.5 stage 2, QLoRA finetune for Qwen3-0.6B + CLIP ViT-L/14-336: the LoRA recipe with the
# LLM loaded in 4-bit NF4 (bitsandbytes). Any LoRA recipe becomes QLoRA with
# --cfg-options model.llm_quantization=nf4 (or int8).
from mmengine.config import read_base

with read_base():
    from .qwen3_0_6b_clip_l14_336_lora_finetune import *  # noqa: F403

model.update(llm_quantization="nf4")
