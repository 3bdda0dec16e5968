# Zero-Qwen-VL, stage 3 of 3: stage 2 again (projector and full LLM train, visual tower frozen, lr 2e-5, one epoch)
# on a second instruction set, which you provide: fill in data_path and image_folder below, or pass
# --cfg-options train_dataloader.dataset.data_path=FILE train_dataloader.dataset.image_folder=DIR.
# Any LLaVA, Qwen-VL or messages format file works (docs/data_formats.md). The original used TextOCR-GPT4o and
# ShareGPT-4o translated into Chinese (My521/Chinese_Llava_Data on the Hugging Face Hub, a chat.json + images/
# folder, the layout below) at 96 samples per optimizer step (6 per GPU x 8 accumulation x 2 GPUs).
# It starts from the last checkpoint of `vltool train zero_qwen_vl_qwen2_0_5b_stage2`.
from mmengine.config import read_base

with read_base():
    from .zero_qwen_vl_qwen2_0_5b_stage2 import *  # noqa: F403

# ---------------- settings: your second instruction set ----------------
data_path = "./data/zero_qwen_vl_stage3/chat.json"
image_folder = "./data/zero_qwen_vl_stage3/images"

train_dataloader.dataset.update(data_path=data_path, image_folder=image_folder)
pretrain_stage = "zero_qwen_vl_qwen2_0_5b_stage2"
