# LLaVA-1.5 stage 1: align the projector on image captions; encoder and LLM frozen, lr 1e-3.
# LLaVA-Pretrain 558k, one epoch; iterations follow from the dataset, the batch and the number of GPUs.
from mmengine.config import read_base

with read_base():
    from ..datasets.llava_pretrain import *  # noqa: F403
    from ..runtime.default_runtime import *  # noqa: F403
    from ..schedules.cosine_iter import *  # noqa: F403

stage = dict(freeze_vision_encoder=True, freeze_projector=False, freeze_llm=True)
optim_wrapper.optimizer.update(lr=1e-3)
train_cfg.update(max_epochs=1)
default_hooks.checkpoint.update(interval=500)
