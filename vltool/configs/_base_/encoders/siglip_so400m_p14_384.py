# Google SigLIP so400m/14 at 384 px: 729 patches, no CLS token, last layer.
# The image processor loads from the encoder's pretrained_model_name_or_path (one key to override).
from transformers import SiglipImageProcessorPil, SiglipVisionModel

from vltool.model.vision_encoder import VisionEncoder

vision_encoder = dict(
    type=VisionEncoder,
    model=dict(
        type=SiglipVisionModel.from_pretrained, pretrained_model_name_or_path="google/siglip-so400m-patch14-384"
    ),
    feature_layer=-1,
    select_strategy="full",
)
image_processor = dict(type=SiglipImageProcessorPil.from_pretrained)
