"""Image loading and preprocessing: decode, pad to square with the processor's mean colour, normalise."""

import io
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor

from vltool.errors import DatasetError

ASPECT_MODES = ("pad", "resize")
URL_TIMEOUT_S = 20
DEFAULT_PADDING_MEAN = (0.5, 0.5, 0.5)
"""Pad colour for a processor without ``image_mean`` (one that does not normalise)."""


def load_image(path: str | Path | io.BytesIO, name: str | None = None) -> Image.Image:
    """Open and fully decode an image as RGB, turned upright by its EXIF orientation tag.

    A phone photo stored sideways with a rotation tag comes out as viewers show it, and as
    transformers' own ``load_image`` (which exported models' users call) returns it.

    Args:
        path: a file, or bytes already read.
        name: what error messages call it (default: the path).

    Raises:
        DatasetError: the file is missing or is not a decodable image.
    """
    name = name or str(path)
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{name}: image file not found.") from None
    except IsADirectoryError:
        raise DatasetError(f"{name}: is a directory, not an image file.") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        reason = "not an image" if isinstance(err, UnidentifiedImageError) else err
        raise DatasetError(f"{name}: cannot decode image ({reason}); replace or remove the file.") from None


def open_image(source: str) -> Image.Image:
    """An image from a path or an http(s) URL, fully decoded as RGB (what chat and eval accept).

    Raises:
        DatasetError: the file is missing, the URL cannot be fetched (offline, 404, timeout), or
            the bytes are not a decodable image.
    """
    if not source.startswith(("http://", "https://")):
        return load_image(source)
    try:
        with urllib.request.urlopen(source, timeout=URL_TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, ValueError) as err:
        reason = (
            f"HTTP {err.code} {err.reason}" if isinstance(err, urllib.error.HTTPError) else getattr(err, "reason", err)
        )
        raise DatasetError(f"{source}: cannot download the image ({reason}); check the URL and the network.") from None
    return load_image(io.BytesIO(data), name=source)


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
        augment: a random PIL-to-PIL transform applied to each image first, in training only
            (BLIP-2's crop and flip: :class:`vltool.model.blip2_encoder.RandomResizedCropFlip`).
    """

    def __init__(
        self,
        image_processor: BaseImageProcessor,
        aspect: str = "pad",
        augment: Callable[[Image.Image], Image.Image] | None = None,
    ) -> None:
        if aspect not in ASPECT_MODES:
            raise DatasetError(f"unknown image aspect mode '{aspect}'; use one of {', '.join(ASPECT_MODES)}.")
        self.image_processor = image_processor
        self.aspect = aspect
        self.augment = augment
        # Truncate, not round: original LLaVA's expand2square and transformers' LlavaImageProcessor
        # both use int(x * 255) (CLIP's mean gives 122, 116, 104), so exported models see the same pixels.
        self.background = tuple(int(m * 255) for m in padding_mean(image_processor))

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """Preprocess a list of images into ``[num_images, 3, H, W]``."""
        if self.augment is not None:
            images = [self.augment(image) for image in images]
        if self.aspect == "pad":
            images = [pad_to_square(image, self.background) for image in images]
        return self.image_processor(images, return_tensors="pt")["pixel_values"]
