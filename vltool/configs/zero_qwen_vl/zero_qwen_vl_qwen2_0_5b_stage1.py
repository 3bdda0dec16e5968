# Zero-Qwen-VL (github.com/AI-Study-Han/Zero-Qwen-VL), stage 1 of 3: projector alignment.
# Qwen-VL-Chat's visual tower (ViT-bigG/14 at 448 px + its 256-query resampler: [n, 256, 4096]), frozen in every
# stage; a new MLP projector Linear(4096 -> 896), GELU, Linear(896 -> 896); Qwen2-0.5B-Instruct, frozen here.
# One <image> becomes 256 positions. Only the projector trains: lr 1e-3, one epoch of LLaVA-CC3M-Pretrain-595K.
# Then zero_qwen_vl_qwen2_0_5b_stage2 (LLaVA-Instruct-150K) and _stage3 (your second instruction set) follow.
#
# What the original does (stage1.sh, stage1.py, train_llava/data.py in that repository), kept here:
# - every stage, this one included, renders samples in ChatML with Qwen2-Instruct's default system prompt
#   "You are a helpful assistant." (template qwen2_chat, not LLaVA's plain pretraining format);
# - images squashed to 448x448 by Qwen-VL's own processor (no padding to square first: image_aspect="resize");
# - bf16 autocast, AdamW, gradient clipping 1.0, 256 samples per optimizer step (16 per GPU x 8 accumulation x
#   2 GPUs; here 32 per GPU, so 8 GPUs give 256).
# Where this recipe differs:
# - the original trained on LinkSoul's Chinese translations of LLaVA-CC3M-Pretrain-595K and LLaVA-Instruct-150K;
#   the paths here are the English originals (point data_path and image_folder at the Chinese ones to match);
# - its schedule was Hugging Face Trainer's default (linear decay, no warm-up); here 3% warm-up, then cosine;
# - it learns only a conversation's last reply; vltool learns every reply (the same for one-turn captions).
# Settings: Qwen-VL-Chat must be downloaded first (huggingface-cli download Qwen/Qwen-VL-Chat --local-dir DIR)
# and named with --cfg-options model.vision_encoder.model.pretrained_model_name_or_path=DIR; only its
# transformer.visual.* shards are read.
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.qwen_vl_visual import *  # noqa: F403
    from .._base_.llms.qwen2_0_5b_instruct import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.recipes.llava_pretrain import *  # noqa: F403

# ---------------- settings ----------------
# liuhaotian/LLaVA-CC3M-Pretrain-595K: chat.json (595,375 captions) and images.zip unpacked into images/
data_root = "./data/llava_data/LLaVA-CC3M-Pretrain-595K"

model = dict(vision_encoder=vision_encoder, projector=projector, llm=llm, **stage)
train_dataloader.dataset.update(
    data_path=f"{data_root}/chat.json",
    image_folder=f"{data_root}/images",
    image_aspect="resize",  # the processor squashes to 448x448 as Qwen-VL does; "pad" would pad first
)
