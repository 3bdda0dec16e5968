# LLaVA-1.5 stage 2, full LLM finetune for Qwen3-0.6B + CLIP ViT-L/14-336.
# It starts from the last checkpoint of `vltool train qwen3_0_6b_clip_l14_336_pretrain` (pretrain_stage names
# that run's config or work dir); --cfg-options pretrained_pth=PATH loads another checkpoint instead.
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.clip_vit_large_p14_336 import *  # noqa: F403
    from .._base_.llms.qwen3_0_6b import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.recipes.llava_finetune import *  # noqa: F403

model = dict(vision_encoder=vision_encoder, projector=projector, llm=llm, **stage)
pretrain_stage = "qwen3_0_6b_clip_l14_336_pretrain"
