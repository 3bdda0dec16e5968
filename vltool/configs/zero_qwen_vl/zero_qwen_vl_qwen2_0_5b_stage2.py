# Zero-Qwen-VL, stage 2 of 3: instruction tuning. The projector and the whole of Qwen2-0.5B-Instruct train, Qwen-VL's
# visual tower (resampler included) stays frozen; lr 2e-5, one epoch of LLaVA-Instruct-150K (158k conversations
# about COCO train2017 images). ChatML with "You are a helpful assistant." (qwen2_chat), images squashed to 448.
# It starts from the last checkpoint of `vltool train zero_qwen_vl_qwen2_0_5b_stage1` (pretrain_stage names that
# run's config or work dir); --cfg-options pretrained_pth=PATH loads another checkpoint instead.
# The original: stage2.sh, 128 samples per optimizer step (8 per GPU x 8 accumulation x 2 GPUs; here 16 per GPU,
# so 8 GPUs give 128), on LinkSoul's Chinese translation of the data; see stage 1 for the other differences.
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.qwen_vl_visual import *  # noqa: F403
    from .._base_.llms.qwen2_0_5b_instruct import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.recipes.llava_finetune import *  # noqa: F403

# ---------------- settings ----------------
# liuhaotian/LLaVA-Instruct-150K's llava_instruct_150k.json; its images are COCO train2017 file names, read from
# the folder where LLaVA-1.5's mix665k keeps them
data_root = "./data/llava_data"

model = dict(vision_encoder=vision_encoder, projector=projector, llm=llm, **stage)
train_dataloader.dataset.update(
    data_path=f"{data_root}/LLaVA-Instruct-150K/llava_instruct_150k.json",
    image_folder=f"{data_root}/llava_images/coco/train2017",
    image_aspect="resize",  # the processor squashes to 448x448 as Qwen-VL does; "pad" would pad first
)
pretrain_stage = "zero_qwen_vl_qwen2_0_5b_stage1"
