# A MiniGPT4Qwen-style model: frozen CLIP ViT-L/14-336 and frozen Qwen2.5-7B-Instruct joined by
# a single linear projector, trained in one stage on instruction data (no caption pretraining).
# An approximation (CLIP in place of BLIP-2's ViT + Q-Former, 576 tokens per image in place of 32); the
# recipe with MiniGPT4Qwen's own parts is minigpt4qwen_qwen2_5_7b.
from mmengine.config import read_base

with read_base():
    from .._base_.datasets.llava_finetune import *  # noqa: F403
    from .._base_.encoders.clip_vit_large_p14_336 import *  # noqa: F403
    from .._base_.llms.qwen2_5_7b_instruct import *  # noqa: F403
    from .._base_.projectors.linear import *  # noqa: F403
    from .._base_.runtime.default_runtime import *  # noqa: F403
    from .._base_.schedules.cosine_iter import *  # noqa: F403

model = dict(
    vision_encoder=vision_encoder,
    projector=projector,
    llm=llm,
    freeze_vision_encoder=True,
    freeze_projector=False,
    freeze_llm=True,
)
optim_wrapper.optimizer.update(lr=1e-4)
train_cfg.update(max_epochs=1)
default_hooks.checkpoint.update(interval=1000)
