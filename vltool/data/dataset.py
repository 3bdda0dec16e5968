"""The dataset every recipe uses: any supported format, tokenised once, images loaded lazily."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import print_log
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from vltool.data.formats import load_samples
from transformers.image_processing_utils import BaseImageProcessor

from vltool.data.images import ImageTransform, load_image
from vltool.data.sample import Sample
from vltool.data.tokenization import TRUNCATION_POLICIES, TokenizedConversation, tokenize_conversation
from vltool.errors import DatasetError
from vltool.templates import Template


def length_stats(lengths: list[int]) -> tuple[int, int, int, int]:
    """``(min, median, p95, max)`` of token lengths (zeros for an empty list)."""
    ordered = sorted(lengths) or [0]
    return ordered[0], ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], ordered[-1]


@dataclass
class LengthReport:
    """What tokenisation did to a dataset, for logs and ``check-dataset``."""

    lengths: list[int]
    truncated: list[str]
    dropped: list[str]

    def summary(self, max_length: int, truncation: str) -> str:
        """One line: sample count, length statistics and what happened to long samples."""
        if not self.lengths:
            return "no samples"
        low, median, p95, high = length_stats(self.lengths)
        line = f"{len(self.lengths)} samples; tokens min {low}, median {median}, p95 {p95}, max {high}"
        if self.truncated or self.dropped:
            action = "truncated" if truncation == "truncate" else "dropped"
            count = len(self.truncated) if truncation == "truncate" else len(self.dropped)
            line += f"; {count} longer than max_length={max_length} {action}"
        return line


class VisionLanguageDataset(Dataset):
    """Conversations with images from a LLaVA, Qwen-VL or messages file.

    Every sample is parsed, validated and tokenised when the dataset is built, so bad samples
    fail early and lengths are known to the sampler; images are decoded in ``__getitem__``.

    Args:
        data_path: JSON or JSONL file.
        image_folder: image paths in the file are relative to this folder.
        tokenizer: fast tokenizer with the ``<image>`` token added.
        template: chat format.
        image_processor: the vision encoder's image processor.
        image_seq_length: visual tokens per image.
        max_length: longest tokenised sample, image tokens included.
        truncation: ``truncate`` long samples (and count them) or ``drop`` them.
        dataset_format: ``auto``, ``llava``, ``qwen_vl`` or ``messages``.
        image_aspect: ``pad`` to square with the mean colour, or ``resize``.
    """

    def __init__(
        self,
        data_path: str,
        image_folder: str | None,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_processor: BaseImageProcessor,
        image_seq_length: int,
        max_length: int = 2048,
        truncation: str = "truncate",
        dataset_format: str = "auto",
        image_aspect: str = "pad",
    ) -> None:
        if truncation not in TRUNCATION_POLICIES:
            raise DatasetError(f"unknown truncation '{truncation}'; use one of {', '.join(TRUNCATION_POLICIES)}.")
        self.data_path = Path(data_path)
        self.image_folder = Path(image_folder) if image_folder else self.data_path.parent
        self.image_transform = ImageTransform(image_processor, image_aspect)
        self.samples: list[Sample] = []
        self.tokenized: list[TokenizedConversation] = []
        report = LengthReport([], [], [])
        for sample in load_samples(data_path, dataset_format):
            conv = tokenize_conversation(sample.messages, template, tokenizer, image_seq_length, max_length)
            if conv.truncated:
                report.truncated.append(sample.sample_id)
                if truncation == "drop" or conv.num_supervised == 0:
                    report.dropped.append(sample.sample_id)
                    continue
            self._check_images_exist(sample)
            self.samples.append(sample)
            self.tokenized.append(conv)
            report.lengths.append(len(conv.input_ids))
        self.report = report
        print_log(f"{self.data_path.name}: {report.summary(max_length, truncation)}", logger="current")
        if not self.samples:
            raise DatasetError(f"{self.data_path}: no usable samples (all were empty or dropped).")

    def _check_images_exist(self, sample: Sample) -> None:
        for image in sample.images:
            if not (self.image_folder / image).is_file():
                raise DatasetError(
                    f"{self.data_path.name}: sample {sample.sample_id}: image {self.image_folder / image} not found; "
                    "check image_folder or remove the sample (vltool check-dataset lists every problem)."
                )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        """Token length of each sample, image tokens included."""
        return [len(conv.input_ids) for conv in self.tokenized]

    @property
    def has_image(self) -> list[bool]:
        """Whether each sample holds at least one image."""
        return [conv.num_images > 0 for conv in self.tokenized]

    def load_images(self, index: int) -> list:
        """Decode the images of sample ``index`` that survived truncation.

        Raises:
            DatasetError: naming the sample and the file, for a missing or undecodable image.
        """
        sample, conv = self.samples[index], self.tokenized[index]
        images = []
        for image in sample.images[: conv.num_images]:
            try:
                images.append(load_image(self.image_folder / image))
            except DatasetError as err:
                raise DatasetError(f"{self.data_path.name}: sample {sample.sample_id}: {err}") from None
        return images

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample: ``input_ids``/``labels`` ``[seq_len]``, ``pixel_values`` ``[n_img, 3, H, W]`` or None."""
        conv = self.tokenized[index]
        images = self.load_images(index)
        return {
            "input_ids": torch.tensor(conv.input_ids, dtype=torch.long),
            "labels": torch.tensor(conv.labels, dtype=torch.long),
            "pixel_values": self.image_transform(images) if images else None,
        }
