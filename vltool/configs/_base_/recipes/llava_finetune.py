# LLaVA-1.5 stage 2, full: projector and LLM train, encoder frozen, lr 2e-5.
# LLaVA-Instruct mix665k, one epoch; iterations follow from the dataset, the batch and the number of GPUs.
from mmengine.config import read_base

with read_base():
    from ..datasets.llava_finetune import *  # noqa: F403
    from ..runtime.default_runtime import *  # noqa: F403
    from ..schedules.cosine_iter import *  # noqa: F403

stage = dict(freeze_vision_encoder=True, freeze_projector=False, freeze_llm=False)
optim_wrapper.optimizer.update(lr=2e-5)
train_cfg.update(max_epochs=1)
default_hooks.checkpoint.update(interval=1000)
