# LLaVA-1.5 stage 1 for Qwen2.5-1.5B-Instruct + CLIP ViT-L/14-336: align the projector on image captions.
# Encoder and LLM frozen; plain template (image, then caption); lr 1e-3.
# LLaVA-Pretrain 558k, one epoch at a global batch of 256 (8 GPUs x 32) = 2180 iterations.
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.clip_vit_large_p14_336 import *  # noqa: F403
    from .._base_.llms.qwen2_5_1_5b_instruct import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.runtime.default_runtime import *  # noqa: F403
    from .._base_.schedules.cosine_iter import *  # noqa: F403
    from .._base_.datasets.llava_pretrain import *  # noqa: F403

template = "plain"
model = dict(
    vision_encoder=vision_encoder,
    projector=projector,
    llm=llm,
    freeze_vision_encoder=True,
    freeze_projector=False,
    freeze_llm=True,
)
optim_wrapper.optimizer.update(lr=1e-3)
train_cfg.update(max_iters=2180)
default_hooks.checkpoint.update(interval=500)
