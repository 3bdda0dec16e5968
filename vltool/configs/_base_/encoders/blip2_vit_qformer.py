# BLIP-2's EVA ViT-g/14 (224 px, 39 layers, width 1408) and Q-Former: 32 tokens of width 768 per image.
# Any BLIP-2 checkpoint, a Hub id or a local folder; only its vision_model.*, qformer.* and query_tokens
# tensors are read, from the shards the index json names: the language model (Flan-T5-XXL, 11B) is never
# read or downloaded. Salesforce/blip2-flan-t5-xxl is the conversion of LAVIS' blip2_pretrained_flant5xxl.pth,
# the checkpoint MiniGPT4Qwen starts from. Set it once: model.vision_encoder.model.pretrained_model_name_or_path.
from transformers import BlipImageProcessorPil

from vltool.model.blip2_encoder import Blip2QFormerEncoder, Blip2VisionQFormer

vision_encoder = dict(
    type=Blip2QFormerEncoder,
    model=dict(type=Blip2VisionQFormer.from_pretrained, pretrained_model_name_or_path="Salesforce/blip2-flan-t5-xxl"),
)
# LAVIS' blip_image_eval: squash to 224x224 (bicubic, no crop), scale to [0, 1], CLIP mean/std.
# Recipes pair it with image_aspect="resize" (no padding to square first).
image_processor = dict(
    type=BlipImageProcessorPil,
    size=dict(height=224, width=224),
    resample=3,  # PIL's BICUBIC (an int, so that a dumped config rebuilds)
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
)
