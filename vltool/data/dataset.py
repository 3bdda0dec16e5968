"""The dataset every recipe uses: any supported format, prepared once into memory-mapped arrays."""

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.logging import print_log
from PIL import Image
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from vltool.constants import IGNORE_INDEX, IMAGE_TOKEN
from vltool.data.cache import default_cache_dir, store_name, tokenization_key
from vltool.data.formats import FORMATS
from vltool.data.images import ImageTransform, load_image
from vltool.data.json_stream import RecordReader
from vltool.data.parallel import prepare_chunks
from vltool.data.prepare import PrepareSettings
from vltool.data.storage import StoreWriter, TokenStore
from vltool.data.tokenization import TRUNCATION_POLICIES
from vltool.errors import DatasetError
from vltool.templates import Template


def length_stats(lengths: Any) -> tuple[int, int, int, int]:
    """``(min, median, p95, max)`` of token lengths (a list or array; zeros when empty)."""
    ordered = np.sort(np.asarray(lengths, dtype=np.int64))
    if not len(ordered):
        return 0, 0, 0, 0
    low, median, p95, high = ordered[[0, len(ordered) // 2, min(len(ordered) - 1, int(0.95 * len(ordered))), -1]]
    return int(low), int(median), int(p95), int(high)


@dataclass
class LengthReport:
    """What tokenisation did to a dataset, for logs and ``check-dataset``."""

    lengths: np.ndarray
    truncated: list[str]
    dropped: list[str]

    def summary(self, max_length: int, truncation: str) -> str:
        """One line: sample count, length statistics and what happened to long samples."""
        if not len(self.lengths):
            return "no samples"
        low, median, p95, high = length_stats(self.lengths)
        line = f"{len(self.lengths)} samples; tokens min {low}, median {median}, p95 {p95}, max {high}"
        if self.truncated or self.dropped:
            action = "truncated" if truncation == "truncate" else "dropped"
            count = len(self.truncated) if truncation == "truncate" else len(self.dropped)
            line += f"; {count} longer than max_length={max_length} {action}"
        return line


class PreparedMissing(DatasetError):
    """The prepared folder another rank named is not on this machine's disk (see build_dataset_once)."""


class VisionLanguageDataset(Dataset):
    """Conversations with images from a LLaVA, Qwen-VL or messages file.

    Every sample is parsed, validated and tokenised when the dataset is first built (in
    ``num_proc`` processes), so bad samples fail early and lengths are known to the sampler;
    the result is a folder of memory-mapped arrays in the cache, which every later run, rank
    and dataloader worker maps instead of holding a copy. Images are decoded in ``__getitem__``.

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
        image_augment: a random PIL-to-PIL transform applied to every training image first
            (e.g. ``dict(type=RandomResizedCropFlip)`` in a config); None: none.
        cache_dir: where prepared datasets live (default :func:`~vltool.data.cache.default_cache_dir`).
        num_proc: processes that tokenise; default every core (small files: this process).
        prepared: the name of a folder in ``cache_dir`` that another rank prepared; it is only
            opened (:class:`PreparedMissing` when this machine does not have it).
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
        image_augment: Callable[[Image.Image], Image.Image] | None = None,
        cache_dir: str | None = None,
        num_proc: int | None = None,
        prepared: str | None = None,
    ) -> None:
        if truncation not in TRUNCATION_POLICIES:
            raise DatasetError(f"unknown truncation '{truncation}'; use one of {', '.join(TRUNCATION_POLICIES)}.")
        if dataset_format not in FORMATS:
            raise DatasetError(f"unknown dataset_format '{dataset_format}'; use one of {', '.join(FORMATS)}.")
        self.data_path = Path(data_path)
        self.max_length = max_length
        self.image_seq_length = image_seq_length
        self.image_folder = Path(image_folder) if image_folder else self.data_path.parent
        self.image_transform = ImageTransform(image_processor, image_aspect, image_augment)
        cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        if prepared is not None:
            self.store_path = cache_root / prepared
            if not self.store_path.is_dir():
                raise PreparedMissing(f"{self.store_path}: prepared dataset not found on this machine.")
        else:
            settings = PrepareSettings(
                self.data_path,
                self.image_folder,
                tokenizer,
                template,
                tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                image_seq_length,
                max_length,
                truncation,
                dataset_format,
            )
            self.store_path = _open_or_prepare(settings, cache_root, num_proc)
        self._open()
        if prepared is None:
            print_log(f"{self.data_path.name}: {self.report.summary(max_length, truncation)}", logger="current")

    def _open(self) -> None:
        self.store = TokenStore(self.store_path)
        manifest = self.store.manifest
        self.image_token_id = manifest["image_token_id"]
        self.report = LengthReport(self.store.lengths, manifest["truncated"], manifest["dropped"])

    def __getstate__(self) -> dict[str, Any]:
        # a worker started by spawn gets the folder's name and maps it again; pickling the
        # memory maps would copy every array into each worker
        state = dict(self.__dict__)
        del state["store"], state["report"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.store)

    @property
    def lengths(self) -> np.ndarray:
        """``[samples]`` token length of each sample, image tokens included (memory-mapped)."""
        return self.store.lengths

    @property
    def has_image(self) -> np.ndarray:
        """``[samples]`` whether each sample holds at least one image."""
        return np.asarray(self.store.num_images) > 0

    def sample_id(self, index: int) -> str:
        """The id error messages use for sample ``index``."""
        return self.store.sample_ids[index]

    def load_images(self, index: int) -> list:
        """Decode the images of sample ``index`` that survived truncation.

        Raises:
            DatasetError: naming the sample and the file, for a missing or undecodable image.
        """
        images = []
        for image in self.store.images(index)[: self.store.num_images[index]]:
            try:
                images.append(load_image(self.image_folder / image))
            except DatasetError as err:
                raise DatasetError(f"{self.data_path.name}: sample {self.sample_id(index)}: {err}") from None
        return images

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample: ``input_ids``/``labels`` ``[seq_len]``, ``pixel_values`` ``[n_img, 3, H, W]`` or None."""
        ids = self.store.token_ids(index)
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        for start, end in self.store.learned_spans(index):
            labels[start:end] = ids[start:end]
        if self.store.num_images[index]:
            repeats = np.where(ids == self.image_token_id, self.image_seq_length, 1)
            ids, labels = np.repeat(ids, repeats), np.repeat(labels, repeats)
        images = self.load_images(index)
        return {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "labels": torch.from_numpy(labels),
            "pixel_values": self.image_transform(images) if images else None,
        }


def _open_or_prepare(settings: PrepareSettings, cache_root: Path, num_proc: int | None) -> Path:
    """The prepared folder for ``settings``: the cached one when its inputs are unchanged, else a new one."""
    RecordReader(settings.data_path)  # a missing data file is reported as such, before any hashing
    key = tokenization_key(
        settings.data_path,
        settings.tokenizer,
        settings.template,
        settings.image_seq_length,
        settings.max_length,
        settings.truncation,
        settings.dataset_format,
    )
    folder = cache_root / store_name(settings.data_path, key)
    if folder.is_dir():
        try:
            store = TokenStore(folder)
            if store.manifest.get("key") == key:
                print_log(f"loaded {len(store)} prepared samples from {folder}", logger="current")
                if store.manifest["image_folder"] != str(settings.image_folder):
                    _check_images_exist(store, settings)
                return folder
        except ValueError as err:
            print_log(f"preparing again: {err}", logger="current", level="WARNING")
        _discard(folder)
    return _prepare(settings, folder, key, num_proc)


def _discard(folder: Path) -> None:
    """Delete a damaged prepared folder; it is renamed first so that no reader opens it half-deleted."""
    doomed = folder.with_name(f".{folder.name}.damaged.{time.time_ns()}")
    folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _prepare(settings: PrepareSettings, folder: Path, key: str, num_proc: int | None) -> Path:
    start = time.monotonic()
    truncated: list[str] = []
    dropped: list[str] = []
    with StoreWriter(folder) as writer:
        for chunk in prepare_chunks(settings, num_proc, f"preparing {settings.data_path.name}"):
            writer.add(chunk)
            truncated += chunk.truncated
            dropped += chunk.dropped
        if not writer.sample_ids:
            raise DatasetError(f"{settings.data_path}: no usable samples (all were empty or dropped).")
        writer.finish(
            {
                "key": key,
                "data_path": str(settings.data_path),
                "image_folder": str(settings.image_folder),
                "image_token_id": settings.image_token_id,
                "image_seq_length": settings.image_seq_length,
                "max_length": settings.max_length,
                "truncation": settings.truncation,
                "truncated": truncated,
                "dropped": dropped,
            }
        )
    count = len(writer.sample_ids)
    print_log(f"prepared {count} samples in {time.monotonic() - start:.1f} s into {folder}", logger="current")
    return folder


def _check_images_exist(store: TokenStore, settings: PrepareSettings) -> None:
    """Every image of a dataset prepared with another image folder must be in this one."""

    def missing(index: int) -> str | None:
        for image in store.images(index):
            if not (settings.image_folder / image).is_file():
                return f"sample {store.sample_ids[index]}: image {settings.image_folder / image} not found"
        return None

    with ThreadPoolExecutor(16) as pool:  # stat calls wait on the disk, not the CPU
        for problem in pool.map(missing, range(len(store)), chunksize=4096):
            if problem:
                raise DatasetError(
                    f"{settings.data_path.name}: {problem}; check image_folder or remove the sample "
                    "(vltool check-dataset lists every problem)."
                )
