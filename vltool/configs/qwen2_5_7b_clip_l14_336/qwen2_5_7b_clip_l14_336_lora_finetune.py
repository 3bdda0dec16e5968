# LLaVA-1.5 stage 2 for Qwen2.5-7B-Instruct + CLIP ViT-L/14-336: LoRA (r=128) on every LLM linear layer, projector trained; lr 2e-4.
# LLaVA-Instruct mix665k, one epoch at a global batch of 128 (8 GPUs x 16) = 5200 iterations.
# Start from the stage-1 projector: set load_from to the pretrain run's checkpoint, e.g.
#   --cfg-options load_from=work_dirs/qwen2_5_7b_clip_l14_336_pretrain/iter_2180.pth
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.clip_vit_large_p14_336 import *  # noqa: F403
    from .._base_.llms.qwen2_5_7b_instruct import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.runtime.default_runtime import *  # noqa: F403
    from .._base_.schedules.cosine_iter import *  # noqa: F403
    from .._base_.datasets.llava_finetune import *  # noqa: F403
    from .._base_.llms.lora import *  # noqa: F403

model = dict(
    vision_encoder=vision_encoder,
    projector=projector,
    llm=llm,
    llm_lora=llm_lora,
    freeze_vision_encoder=True,
    freeze_projector=False,
    freeze_llm=True,
)
optim_wrapper.optimizer.update(lr=2e-4)
train_cfg.update(max_iters=5200)
default_hooks.checkpoint.update(interval=1000)
