"""The dataset every recipe uses: any supported format, tokenised once, images loaded lazily."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import print_log
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from vltool.data.cache import cache_file, load_cached, save_cached, tokenization_key
from vltool.data.formats import load_samples
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


@dataclass
class PreparedData:
    """A dataset's tokenised state: what rank 0 computes, the cache stores and the other ranks receive.

    It holds no tokenizer or image processor, so it is only as large as the token ids.

    Attributes:
        samples: the kept samples; training reads their ids and image paths.
        tokenized: the tokenised conversation of each kept sample.
        report: lengths of the kept samples, ids of the truncated and dropped ones.
    """

    samples: list[Sample]
    tokenized: list[TokenizedConversation]
    report: LengthReport


def tokenize_samples(
    samples: list[Sample],
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    image_seq_length: int,
    max_length: int,
    truncation: str,
) -> PreparedData:
    """Tokenise every sample; cut or drop the ones longer than ``max_length`` as ``truncation`` says.

    A truncated sample with no learned token left is dropped under either policy.
    """
    prepared = PreparedData([], [], LengthReport([], [], []))
    report = prepared.report
    for sample in samples:
        conv = tokenize_conversation(sample.messages, template, tokenizer, image_seq_length, max_length)
        if conv.truncated:
            report.truncated.append(sample.sample_id)
            if truncation == "drop" or conv.num_supervised == 0:
                report.dropped.append(sample.sample_id)
                continue
        prepared.samples.append(sample)
        prepared.tokenized.append(conv)
        report.lengths.append(len(conv.input_ids))
    return prepared


class VisionLanguageDataset(Dataset):
    """Conversations with images from a LLaVA, Qwen-VL or messages file.

    Every sample is parsed, validated and tokenised when the dataset is built, so bad samples
    fail early and lengths are known to the sampler; images are decoded in ``__getitem__``.
    Under many processes rank 0 tokenises and the others receive ``prepared``
    (see :func:`vltool.data.distributed.build_dataset_once`).

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
        cache_dir: save the tokenised state here and reuse it while its inputs are unchanged.
        prepared: an already tokenised and checked state; nothing is read or tokenised.
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
        cache_dir: str | None = None,
        prepared: PreparedData | None = None,
    ) -> None:
        if truncation not in TRUNCATION_POLICIES:
            raise DatasetError(f"unknown truncation '{truncation}'; use one of {', '.join(TRUNCATION_POLICIES)}.")
        self.data_path = Path(data_path)
        self.max_length = max_length
        self.image_folder = Path(image_folder) if image_folder else self.data_path.parent
        self.image_transform = ImageTransform(image_processor, image_aspect)
        self.cache_file: Path | None = None
        if prepared is None:
            tokenize_args = (tokenizer, template, image_seq_length, max_length, truncation, dataset_format)
            prepared = self._load_or_tokenize(*tokenize_args, cache_dir)
            print_log(f"{self.data_path.name}: {prepared.report.summary(max_length, truncation)}", logger="current")
            for sample in prepared.samples:
                self._check_images_exist(sample)
            if not prepared.samples:
                raise DatasetError(f"{self.data_path}: no usable samples (all were empty or dropped).")
        self.samples = prepared.samples
        self.tokenized = prepared.tokenized
        self.report = prepared.report

    @property
    def prepared(self) -> PreparedData:
        """The tokenised state, to send to other processes or rebuild this dataset from."""
        return PreparedData(self.samples, self.tokenized, self.report)

    def _load_or_tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_seq_length: int,
        max_length: int,
        truncation: str,
        dataset_format: str,
        cache_dir: str | None,
    ) -> PreparedData:
        """The cached state when ``cache_dir`` holds one for these inputs; else tokenise (and cache)."""
        # a missing data file skips the cache so that load_samples reports it with its usual message
        if cache_dir is None or not self.data_path.is_file():
            samples = load_samples(self.data_path, dataset_format)
            return tokenize_samples(samples, template, tokenizer, image_seq_length, max_length, truncation)
        key = tokenization_key(
            self.data_path, tokenizer, template, image_seq_length, max_length, truncation, dataset_format
        )
        self.cache_file = cache_file(cache_dir, self.data_path, key)
        prepared = load_cached(self.cache_file, key)
        if prepared is not None:
            print_log(f"loaded {len(prepared.samples)} tokenised samples from {self.cache_file}", logger="current")
            return prepared
        samples = load_samples(self.data_path, dataset_format)
        prepared = tokenize_samples(samples, template, tokenizer, image_seq_length, max_length, truncation)
        save_cached(self.cache_file, key, prepared)
        print_log(f"wrote {len(prepared.samples)} tokenised samples to {self.cache_file}", logger="current")
        return prepared

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
