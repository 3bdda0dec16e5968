# Google SigLIP so400m/14 at 384 px: 729 patches, no CLS token, last layer.
from transformers import SiglipImageProcessor, SiglipVisionModel

from vltool.model.vision_encoder import VisionEncoder

vision_encoder_name_or_path = "google/siglip-so400m-patch14-384"
vision_encoder = dict(
    type=VisionEncoder,
    model=dict(type=SiglipVisionModel.from_pretrained, pretrained_model_name_or_path=vision_encoder_name_or_path),
    feature_layer=-1,
    select_strategy="full",
)
image_processor = dict(
    type=SiglipImageProcessor.from_pretrained, pretrained_model_name_or_path=vision_encoder_name_or_path
)
