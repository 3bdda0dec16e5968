# MiniGPT4Qwen (github.com/Coobiw/MiniGPT4Qwen) with Qwen2.5-7B-Instruct: BLIP-2's ViT + Q-Former
# (Salesforce/blip2-flan-t5-xxl, the conversion of the LAVIS blip2_pretrained_flant5xxl.pth the original
# loads), frozen; one trainable Linear(768 -> 3584) writing 32 tokens per image; the LLM frozen. One stage.
# The original used Qwen-7B-Chat, a Qwen1 model (remote code, `<|extra_0|>` as the image placeholder);
# here it is Qwen2.5-7B-Instruct, whose tokenizer has no spare special token, so vltool adds `<image>`.
#
# What the original does (lavis/projects/instruction_tuning/train.yaml, lavis/models/minigpt4qwen_models/
# minigpt4qwen.py, lavis/processors/blip_processors.py in that repository):
# - prompt: ChatML with the system prompt "You are a helpful assistant." (preprocess() and chat()); the
#   user turn is "<Img><ImageHere></Img> {question}", <ImageHere> becoming the 32 image positions:
#   template "minigpt4qwen" (image rendered as "<Img><image></Img>").
# - AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, gradient clipping 1.0; linear warm-up from 0 over
#   500 steps, then cosine to 1e-6; bf16 autocast; 10 epochs over its 18.8k instruction pairs (MiniGPT-4's
#   and LLaVA's, as prepared by MMPretrain), batch 1 with 16 accumulation steps per GPU.
# - images: RandomResizedCrop(224, scale 0.5-1, bicubic) + horizontal flip in training, a 224 squash in
#   evaluation.
# Where this recipe differs:
# - LAVIS counts the 500 warm-up steps in micro-batches and steps the cosine once per epoch; here 500
#   iterations (micro-batches too), then a per-iteration cosine to the end of training.
# - LAVIS exempts biases from weight decay; here the projector's bias decays too.
# - MiniGPT4Qwen also learns the <|im_start|>, <|im_end|> and newline of user turns (Qwen's finetune
#   labelling); vltool learns the assistant replies and their <|im_end|>.
# - data: the LLaVA-Instruct mix665k base for one epoch. For MiniGPT4Qwen's own data (converted to vltool's
#   format with one <image> per conversation) set train_dataloader.dataset.data_path and train_cfg.max_epochs=10.
from mmengine.config import read_base

from vltool.model.blip2_encoder import RandomResizedCropFlip

with read_base():
    from .._base_.datasets.llava_finetune import *  # noqa: F403
    from .._base_.encoders.blip2_vit_qformer import *  # noqa: F403
    from .._base_.llms.qwen2_5_7b_instruct import *  # noqa: F403
    from .._base_.projectors.linear import *  # noqa: F403
    from .._base_.runtime.default_runtime import *  # noqa: F403
    from .._base_.schedules.cosine_iter import *  # noqa: F403

template = "minigpt4qwen"
model = dict(
    vision_encoder=vision_encoder,
    projector=projector,
    llm=llm,
    freeze_vision_encoder=True,
    freeze_projector=False,
    freeze_llm=True,
)
# training images: LAVIS' RandomResizedCrop(224, scale 0.5-1) + flip, then the processor's squash to 224x224
train_dataloader.dataset.update(image_aspect="resize", image_augment=dict(type=RandomResizedCropFlip))
optim_wrapper.optimizer.update(lr=1e-4, weight_decay=0.05)
# the original warms up for a fixed 500 steps, then decays to 1e-6 (min_lr_ratio x lr)
lr_schedule = dict(warmup_iters=500, min_lr_ratio=0.01)
train_cfg.update(max_epochs=1)
default_hooks.checkpoint.update(interval=1000)
