# Qwen-VL's finetune stage (Qwen-VL's finetune/finetune_ds.sh with fix_vit) on Qwen2.5-7B-Instruct: Qwen-VL-Chat's
# own visual tower, its ViT-bigG/14 frozen and its 256-query attention-pool resampler `attn_pool` trained
# (model.train_vision_modules; ln_post and the output `proj` after it stay frozen, as fix_vit leaves them); a
# Linear(4096 -> 3584) projector, new, because the tower writes 4096-wide tokens
# (Qwen-7B's width) and Qwen2.5-7B is 3584 wide; the LLM trains. The qwen_vl template ("Picture N: <img>...</img>",
# ChatML, "You are a helpful assistant."), so Qwen-VL-format data with <ref>/<box> grounding reads as it is.
# One stage, 256 positions per image.
#
# Why a single linear layer: in Qwen-VL the tower's output (the resampler, ln_post, then the 4096x4096 `proj`) is
# the LLM's input embedding. A linear map after the linear `proj` keeps that path linear, as in the original, and
# only changes its width; an MLP would put a new nonlinearity between the pretrained tower and the LLM.
#
# Kept from the original: lr 1e-5, AdamW betas (0.9, 0.95), weight decay 0.1, 1% warm-up then cosine, bf16,
# max_length 2048, images squashed to 448x448 (image_aspect="resize").
# Where this recipe differs:
# - Qwen-VL-Chat's LLM (Qwen-7B) is replaced by Qwen2.5-7B-Instruct, so the projector is new and starts random;
# - one epoch over the data, where the script's default is 5; weight decay also reaches biases and LayerNorms;
# - Qwen-VL's attn_pool.requires_grad_(True) also unfreezes the resampler's 2-D sin-cos pos_embed (a parameter
#   created frozen), which then trains; vltool keeps that table as a buffer, fixed;
# - Qwen-VL's labels also cover every turn's <|im_start|>, <|im_end|> and closing newline; vltool learns the
#   replies and their <|im_end|>;
# - data: the LLaVA-Instruct mix665k base (its LLaVA-format samples read as they are); for Qwen-VL's grounding
#   data set train_dataloader.dataset.data_path (image paths inside <img>...</img> are relative to image_folder).
# The older approximation with CLIP-L at 448 px and a random resampler is qwen2_5_7b_clip_l14_448_resampler_finetune.
# Qwen-VL-Chat must be downloaded first and named with
# --cfg-options model.vision_encoder.model.pretrained_model_name_or_path=DIR (only its visual shards are read).
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.qwen_vl_visual import *  # noqa: F403
    from .._base_.llms.qwen2_5_7b_instruct import *  # noqa: F403
    from .._base_.projectors.linear import *  # noqa: F403
    from .._base_.recipes.llava_finetune import *  # noqa: F403

template = "qwen_vl"
model = dict(
    vision_encoder=vision_encoder,
    projector=projector,
    llm=llm,
    train_vision_modules=["model.attn_pool"],  # Qwen-VL's fix_vit: the ViT frozen, its resampler trains
    **stage,
)
train_dataloader.dataset.update(image_aspect="resize")  # the processor squashes to 448x448 as Qwen-VL does
optim_wrapper.optimizer.update(lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
lr_schedule = dict(warmup_ratio=0.01, min_lr_ratio=0.0)
