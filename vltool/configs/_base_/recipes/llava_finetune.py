# LLaVA-1.5 stage 2, full: projector and LLM train, encoder frozen, lr 2e-5.
# LLaVA-Instruct mix665k, one epoch at a global batch of 128 (8 GPUs x 16) = 5200 iterations.
from mmengine.config import read_base

with read_base():
    from ..datasets.llava_finetune import *  # noqa: F403
    from ..runtime.default_runtime import *  # noqa: F403
    from ..schedules.cosine_iter import *  # noqa: F403

stage = dict(freeze_vision_encoder=True, freeze_projector=False, freeze_llm=False)
optim_wrapper.optimizer.update(lr=2e-5)
train_cfg.update(max_iters=5200)
default_hooks.checkpoint.update(interval=1000)
