# LLaVA-1.5 stage 2, QLoRA: the LLM in 4-bit NF4 (apply `llm_quantization` to the llm dict) with
# LoRA adapters (r=64) and the projector training; lr 2e-4.
from mmengine.config import read_base

with read_base():
    from ..llms.qlora_4bit import *  # noqa: F403
    from .llava_finetune import *  # noqa: F403

stage = dict(freeze_vision_encoder=True, freeze_projector=False, freeze_llm=True, llm_lora=llm_lora)
optim_wrapper.optimizer.update(lr=2e-4)
