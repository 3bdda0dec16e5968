# LLaVA-1.5 stage 2, QLoRA finetune (4-bit LLM) for Qwen2.5-0.5B-Instruct + CLIP ViT-L/14-336.
# It starts from the stage-1 projector: run `vltool train qwen2_5_0_5b_clip_l14_336_pretrain` first, or point
# pretrained_pth at another pretrain checkpoint (a .pth file or a DeepSpeed checkpoint directory).
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.clip_vit_large_p14_336 import *  # noqa: F403
    from .._base_.llms.qwen2_5_0_5b_instruct import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.recipes.llava_qlora_finetune import *  # noqa: F403

model = dict(vision_encoder=vision_encoder, projector=projector, llm=dict(**llm, **llm_quantization), **stage)
pretrained_pth = "work_dirs/qwen2_5_0_5b_clip_l14_336_pretrain/iter_2180.pth"
