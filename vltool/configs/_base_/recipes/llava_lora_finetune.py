# LLaVA-1.5 stage 2, LoRA: adapters on every LLM linear layer (r=128) and the projector train,
# the LLM's own weights and the encoder stay frozen; lr 2e-4.
from mmengine.config import read_base

with read_base():
    from ..llms.lora import *  # noqa: F403
    from .llava_finetune import *  # noqa: F403

stage = dict(freeze_vision_encoder=True, freeze_projector=False, freeze_llm=True, llm_lora=llm_lora)
optim_wrapper.optimizer.update(lr=2e-4)
