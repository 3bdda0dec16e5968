"""``vltool check-dataset``: read every sample, check every image, report every problem at once.

The same chunked, multi-process pass as preparing a dataset (:mod:`vltool.data.parallel`),
except that problems are collected instead of stopping the pass, and images are decoded
(or, with ``decode=False``, only looked up) in the worker processes as well.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from vltool.constants import IMAGE_TOKEN
from vltool.data.parallel import prepare_chunks
from vltool.data.prepare import PrepareSettings
from vltool.errors import DatasetError
from vltool.templates import Template


@dataclass
class DatasetCheck:
    """What a full pass over a dataset found.

    Attributes:
        num_samples: records in the file.
        num_images: image references checked.
        num_text_only: valid samples without images.
        lengths: token length of each valid sample (before truncation, image tokens included).
        truncated: ids of samples longer than ``max_length``.
        problems: one line per bad sample or image, naming it.
    """

    num_samples: int = 0
    num_images: int = 0
    num_text_only: int = 0
    lengths: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    truncated: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_dataset(
    data_path: str,
    image_folder: str | None,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    image_seq_length: int,
    max_length: int,
    dataset_format: str = "auto",
    decode: bool = True,
    num_proc: int | None = None,
) -> DatasetCheck:
    """Validate every sample of ``data_path`` without stopping at the first problem.

    Args:
        data_path: JSON or JSONL file.
        image_folder: image paths are relative to it (default: the data file's folder).
        tokenizer: fast tokenizer with ``<image>`` added.
        template: chat format.
        image_seq_length: visual tokens per image.
        max_length: samples longer than this are reported as truncated.
        dataset_format: ``auto``, ``llava``, ``qwen_vl`` or ``messages``.
        decode: decode every image (slow, thorough); False only checks that the files exist.
        num_proc: processes; default every core.
    """
    settings = PrepareSettings(
        Path(data_path),
        Path(image_folder) if image_folder else Path(data_path).parent,
        tokenizer,
        template,
        tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length,
        max_length,
        "truncate",
        dataset_format,
        image_check="decode" if decode else "exists",
        list_problems=True,
    )
    result = DatasetCheck()
    lengths = []
    try:
        for chunk in prepare_chunks(settings, num_proc, f"checking {settings.data_path.name}"):
            result.num_samples += chunk.num_records
            result.num_images += chunk.num_images_checked
            result.num_text_only += chunk.num_text_only
            lengths.append(chunk.full_lengths)
            result.truncated += chunk.truncated
            result.problems += chunk.problems
    except DatasetError as err:  # the file itself is unreadable (missing, or a JSON list broken at some line)
        result.problems.append(str(err))
    result.lengths = np.concatenate(lengths) if lengths else result.lengths
    return result
