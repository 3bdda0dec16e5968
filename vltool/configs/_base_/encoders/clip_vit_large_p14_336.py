# OpenAI CLIP ViT-L/14 at 336 px (LLaVA-1.5's encoder): 576 patches, penultimate layer, CLS dropped.
from transformers import CLIPImageProcessor, CLIPVisionModel

from vltool.model.vision_encoder import VisionEncoder

vision_encoder_name_or_path = "openai/clip-vit-large-patch14-336"
vision_encoder = dict(
    type=VisionEncoder,
    model=dict(type=CLIPVisionModel.from_pretrained, pretrained_model_name_or_path=vision_encoder_name_or_path),
    feature_layer=-2,
    select_strategy="default",
)
image_processor = dict(
    type=CLIPImageProcessor.from_pretrained, pretrained_model_name_or_path=vision_encoder_name_or_path
)
