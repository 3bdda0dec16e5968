# LLaVA-1.5 stage 1 (projector alignment, plain template) for Qwen3-0.6B + SigLIP so400m/14-384.
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.siglip_so400m_p14_384 import *  # noqa: F403
    from .._base_.llms.qwen3_0_6b import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.recipes.llava_pretrain import *  # noqa: F403

template = "plain"
model = dict(vision_encoder=vision_encoder, projector=projector, llm=llm, **stage)
