"""Image loading and preprocessing: decode, pad to square with the processor's mean colour, normalise."""

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor

from vltool.errors import DatasetError

ASPECT_MODES = ("pad", "resize")
DEFAULT_PADDING_MEAN = (0.5, 0.5, 0.5)
"""Pad colour for a processor without ``image_mean`` (one that does not normalise)."""


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB.

    Raises:
        DatasetError: the file is missing or is not a decodable image.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found.") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"{path}: cannot decode image ({err}); replace or remove the file.") from None


def pad_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side symmetrically so the image is square (LLaVA-1.5's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def padding_mean(image_processor: BaseImageProcessor) -> tuple[float, ...]:
    """The mean colour (0-1 per channel) that ``pad`` mode fills with: the processor's, else mid-grey."""
    return tuple(getattr(image_processor, "image_mean", None) or DEFAULT_PADDING_MEAN)


class ImageTransform:
    """PIL image -> normalised pixel tensor ``[3, H, W]`` through the encoder's image processor.

    Args:
        image_processor: a Hugging Face image processor (CLIP or SigLIP).
        aspect: ``pad`` pads to square with the processor's mean colour first (no content is
            cropped away), each channel ``int(mean * 255)``, truncated as LLaVA does; ``resize``
            leaves the processor's own resize/crop to do the work.
    """

    def __init__(self, image_processor: BaseImageProcessor, aspect: str = "pad") -> None:
        if aspect not in ASPECT_MODES:
            raise DatasetError(f"unknown image aspect mode '{aspect}'; use one of {', '.join(ASPECT_MODES)}.")
        self.image_processor = image_processor
        self.aspect = aspect
        # Truncate, not round: original LLaVA's expand2square and transformers' LlavaImageProcessor
        # both use int(x * 255) (CLIP's mean gives 122, 116, 104), so exported models see the same pixels.
        self.background = tuple(int(m * 255) for m in padding_mean(image_processor))

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """Preprocess a list of images into ``[num_images, 3, H, W]``."""
        if self.aspect == "pad":
            images = [pad_to_square(image, self.background) for image in images]
        return self.image_processor(images, return_tensors="pt")["pixel_values"]
