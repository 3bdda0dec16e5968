# LLaVA-1.5 stage 2 for Qwen2.5-1.5B-Instruct + CLIP ViT-L/14-336: full LLM finetune, projector trained, encoder frozen; lr 2e-5.
# LLaVA-Instruct mix665k, one epoch at a global batch of 128 (8 GPUs x 16) = 5200 iterations.
# Start from the stage-1 projector: set load_from to the pretrain run's checkpoint, e.g.
#   --cfg-options load_from=work_dirs/qwen2_5_1_5b_clip_l14_336_pretrain/iter_2180.pth
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.clip_vit_large_p14_336 import *  # noqa: F403
    from .._base_.llms.qwen2_5_1_5b_instruct import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.runtime.default_runtime import *  # noqa: F403
    from .._base_.schedules.cosine_iter import *  # noqa: F403
    from .._base_.datasets.llava_finetune import *  # noqa: F403

model = dict(
    vision_encoder=vision_encoder,
    projector=projector,
    llm=llm,
    freeze_vision_encoder=True,
    freeze_projector=False,
    freeze_llm=False,
)
optim_wrapper.optimizer.update(lr=2e-5)
train_cfg.update(max_iters=5200)
default_hooks.checkpoint.update(interval=1000)
