# Qwen-VL-Chat's visual tower (ViT-bigG/14 at 448 px + 256-query resampler), loaded from a local
# Qwen-VL-Chat checkpoint folder: only its transformer.visual.* tensors are read, never the LLM.
# Outputs 256 tokens of width 4096 per image; a projector after it maps 4096 to the LLM's width.
# Set the folder once: model.vision_encoder.model.pretrained_model_name_or_path=<folder>
# (download it first: huggingface-cli download Qwen/Qwen-VL-Chat --local-dir <folder>).
from transformers import CLIPImageProcessorPil

from vltool.model.qwen_vl_visual import QwenVLVisualEncoder
from vltool.model.qwen_vl_weights import load_qwen_vl_visual

vision_encoder = dict(
    type=QwenVLVisualEncoder,
    model=dict(type=load_qwen_vl_visual, pretrained_model_name_or_path="Qwen/Qwen-VL-Chat"),
)
# Qwen-VL's own preprocessing: squash to 448x448 (bicubic, no crop), scale to [0, 1], CLIP mean/std
image_processor = dict(
    type=CLIPImageProcessorPil,
    size=dict(height=448, width=448),
    resample=3,  # PIL's BICUBIC (an int, so that a dumped config rebuilds)
    do_center_crop=False,
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
)
