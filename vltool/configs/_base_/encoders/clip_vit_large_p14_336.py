# OpenAI CLIP ViT-L/14 at 336 px (LLaVA-1.5's encoder): 576 patches, penultimate layer, CLS dropped.
# The image processor loads from the encoder's pretrained_model_name_or_path (one key to override).
from transformers import CLIPImageProcessorPil, CLIPVisionModel

from vltool.model.vision_encoder import VisionEncoder

vision_encoder = dict(
    type=VisionEncoder,
    model=dict(type=CLIPVisionModel.from_pretrained, pretrained_model_name_or_path="openai/clip-vit-large-patch14-336"),
    feature_layer=-2,
    select_strategy="default",
)
image_processor = dict(type=CLIPImageProcessorPil.from_pretrained)
