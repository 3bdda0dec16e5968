# A Qwen-VL-style model: CLIP ViT-L/14 run at 448 px (position embeddings interpolated to a
# 32x32 patch grid), a cross-attention resampler with 256 learnable queries, Qwen2.5-7B-Instruct,
# and Qwen-VL's "Picture N: <img>...</img>" prompt format. Qwen-VL-format data (with
# <ref>/<box> grounding) reads directly. Encoder frozen; resampler and LLM train.
from mmengine.config import read_base

with read_base():
    from .._base_.datasets.llava_finetune import *  # noqa: F403
    from .._base_.encoders.clip_vit_large_p14_336 import *  # noqa: F403
    from .._base_.llms.qwen2_5_7b_instruct import *  # noqa: F403
    from .._base_.projectors.resampler_256 import *  # noqa: F403
    from .._base_.runtime.default_runtime import *  # noqa: F403
    from .._base_.schedules.cosine_iter import *  # noqa: F403

template = "qwen_vl"
vision_encoder.update(image_size=448)
image_processor.update(size=dict(shortest_edge=448), crop_size=dict(height=448, width=448))
model = dict(
    vision_encoder=vision_encoder,
    projector=projector,
    llm=llm,
    freeze_vision_encoder=True,
    freeze_projector=False,
    freeze_llm=False,
)
train_dataloader.dataset.update(dataset_format="auto")
optim_wrapper.optimizer.update(lr=1e-5, weight_decay=0.1)
train_cfg.update(max_epochs=1)
default_hooks.checkpoint.update(interval=1000)
