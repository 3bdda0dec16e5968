# LLaVA-1.5 stage 1 (projector alignment, plain template) for Qwen3-0.6B + CLIP ViT-L/14-336.
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.clip_vit_large_p14_336 import *  # noqa: F403
    from .._base_.llms.qwen3_0_6b import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.recipes.llava_pretrain import *  # noqa: F403

template = "plain"
model = dict(vision_encoder=vision_encoder, projector=projector, llm=llm, **stage)
