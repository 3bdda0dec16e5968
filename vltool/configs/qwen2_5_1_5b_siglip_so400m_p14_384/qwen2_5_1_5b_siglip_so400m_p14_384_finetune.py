# LLaVA-1.5 stage 2, full LLM finetune for Qwen2.5-1.5B-Instruct + SigLIP-so400m/14-384.
# It starts from the stage-1 projector: run `vltool train qwen2_5_1_5b_siglip_so400m_p14_384_pretrain` first, or point
# pretrained_pth at another pretrain checkpoint (a .pth file or a DeepSpeed checkpoint directory).
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.siglip_so400m_p14_384 import *  # noqa: F403
    from .._base_.llms.qwen2_5_1_5b_instruct import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.recipes.llava_finetune import *  # noqa: F403

model = dict(vision_encoder=vision_encoder, projector=projector, llm=llm, **stage)
pretrained_pth = "work_dirs/qwen2_5_1_5b_siglip_so400m_p14_384_pretrain/iter_2180.pth"
