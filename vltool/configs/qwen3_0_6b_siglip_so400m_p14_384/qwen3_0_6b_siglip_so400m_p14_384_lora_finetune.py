# LLaVA-1.5 stage 2, LoRA finetune for Qwen3-0.6B + SigLIP so400m/14-384.
# It starts from the last checkpoint of `vltool train qwen3_0_6b_siglip_so400m_p14_384_pretrain` (pretrain_stage names
# that run's config or work dir); --cfg-options pretrained_pth=PATH loads another checkpoint instead.
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.siglip_so400m_p14_384 import *  # noqa: F403
    from .._base_.llms.qwen3_0_6b import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.recipes.llava_lora_finetune import *  # noqa: F403

model = dict(vision_encoder=vision_encoder, projector=projector, llm=llm, **stage)
pretrain_stage = "qwen3_0_6b_siglip_so400m_p14_384_pretrain"
