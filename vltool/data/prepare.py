"""Tokenise a chunk of dataset records at once: ids, label spans, truncation, image checks.

This is the work each preparing process does (:mod:`vltool.data.parallel` hands out the
chunks). It produces exactly what :func:`vltool.data.tokenization.tokenize_conversation`
produces sample by sample, in a form that stores compactly: token ids with each image
placeholder kept once (expanded to ``image_seq_length`` copies only when a sample is read),
and the learned positions as ``[start, end)`` spans instead of a labels list.

Speed comes from three things, each checked against the sample-by-sample path in
``tests/data/test_prepare.py``:

- The chunk's conversations go to the Rust tokenizer in one batch call.
- For a byte-level BPE tokenizer and ASCII text, :mod:`vltool.data.byte_level` gets the
  token offsets without asking the tokenizer for them and reuses the ids of repeated pieces.
- Which tokens are learned, where truncation cuts and what is dropped are array operations
  over the whole chunk, not a Python loop per token.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vltool.data.byte_level import ByteLevelEncoder
from vltool.data.formats import parse_record, to_sample
from vltool.data.images import load_image
from vltool.data.json_stream import RawRecord
from vltool.data.sample import Sample
from vltool.errors import DatasetError
from vltool.templates import Template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PrepareSettings:
    """What a preparing process needs; sent to each process once.

    Attributes:
        data_path: the dataset file (named in messages).
        image_folder: image paths are relative to it.
        tokenizer: fast tokenizer with ``<image>`` added.
        template: chat format.
        image_token_id: the ``<image>`` id.
        image_seq_length: visual tokens per image.
        max_length: longest kept sample (image tokens included).
        truncation: ``truncate`` or ``drop``.
        dataset_format: ``auto``, ``llava``, ``qwen_vl`` or ``messages``.
        image_check: ``exists`` (a file is there) or ``decode`` (it decodes as an image).
        list_problems: collect every bad sample and image (check-dataset) instead of raising the first.
    """

    data_path: Path
    image_folder: Path
    tokenizer: "PreTrainedTokenizerBase"
    template: Template
    image_token_id: int
    image_seq_length: int
    max_length: int
    truncation: str
    dataset_format: str
    image_check: str = "exists"
    list_problems: bool = False


@dataclass
class Chunk:
    """The prepared samples of one chunk of records, in file order.

    Arrays are per kept sample unless named per token or per span.

    Attributes:
        token_ids: per token, ``int32``: the kept samples' ids, one id per image.
        token_counts: tokens of each kept sample in ``token_ids``.
        lengths: each kept sample's length with images expanded (what the model sees).
        num_images: images each kept sample's ids hold (fewer than it names once truncated).
        spans: per span, ``[n_spans, 2]`` ``int32``: learned ``[start, end)`` within its sample's ids.
        span_counts: spans of each kept sample.
        sample_ids: each kept sample's id.
        images: each kept sample's image paths, all of them.
        full_lengths: per valid record (kept or not), its length before truncation.
        truncated: ids of samples longer than ``max_length`` (dropped or cut).
        dropped: ids of samples left out (``drop``, or nothing learned after the cut).
        problems: one line per bad record or image (only with ``list_problems``).
        num_records: records read.
        num_images_checked: image references checked.
        num_text_only: valid records without images.
    """

    token_ids: np.ndarray
    token_counts: np.ndarray
    lengths: np.ndarray
    num_images: np.ndarray
    spans: np.ndarray
    span_counts: np.ndarray
    sample_ids: list[str]
    images: list[list[str]]
    full_lengths: np.ndarray
    truncated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    num_records: int = 0
    num_images_checked: int = 0
    num_text_only: int = 0


class ChunkPreparer:
    """Turns chunks of raw records into :class:`Chunk` results (one per preparing process)."""

    def __init__(self, settings: PrepareSettings) -> None:
        self.settings = settings
        self.byte_level = ByteLevelEncoder.for_tokenizer(settings.tokenizer)

    def _read(self, raw: RawRecord, result: Chunk) -> Sample | None:
        """Parse and validate one record; a problem is raised or, when listing, recorded."""
        settings = self.settings
        try:
            record = parse_record(raw, settings.data_path)
            return to_sample(record, raw.index, settings.data_path.name, settings.dataset_format)
        except DatasetError as err:
            if not settings.list_problems:
                raise
            result.problems.append(str(err))
            return None

    def _check_images(self, sample: Sample, result: Chunk) -> None:
        settings = self.settings
        for image in sample.images:
            result.num_images_checked += 1
            path = settings.image_folder / image
            if settings.image_check == "decode":
                try:
                    load_image(path)
                    continue
                except DatasetError as err:
                    problem = f"{settings.data_path.name}: sample {sample.sample_id}: {err}"
            elif path.is_file():
                continue
            else:
                problem = (
                    f"{settings.data_path.name}: sample {sample.sample_id}: image {path} not found; "
                    "check image_folder or remove the sample (vltool check-dataset lists every problem)."
                )
            if not settings.list_problems:
                raise DatasetError(problem)
            result.problems.append(problem)

    def _tokenize(self, texts: list[str], spans: list[list[tuple[int, int]]]) -> tuple[np.ndarray, ...]:
        """Token ids, per-token learned flags and per-text token counts of the rendered conversations."""
        encoded: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(texts)
        if self.byte_level is not None:
            ascii_texts = [i for i, text in enumerate(texts) if text.isascii()]
            for i, pair in zip(ascii_texts, self.byte_level.encode([texts[i] for i in ascii_texts]), strict=True):
                encoded[i] = pair
        rest = [i for i, pair in enumerate(encoded) if pair is None]
        if rest:  # the reference path: the tokenizer's own offsets
            encoding = self.settings.tokenizer(
                [texts[i] for i in rest], add_special_tokens=False, return_offsets_mapping=True
            )
            for i, ids, offsets in zip(rest, encoding["input_ids"], encoding["offset_mapping"], strict=True):
                starts = np.fromiter((start for start, _end in offsets), dtype=np.int64, count=len(offsets))
                encoded[i] = (np.asarray(ids, dtype=np.int32), starts)
        learned = [
            _inside(starts, np.asarray(s, dtype=np.int64).reshape(-1, 2))
            for (_, starts), s in zip(encoded, spans, strict=True)
        ]
        counts = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=len(texts))
        return np.concatenate([ids for ids, _ in encoded]), np.concatenate(learned), counts

    def __call__(self, records: list[RawRecord]) -> Chunk:
        """Prepare one chunk of records (in file order).

        Raises:
            DatasetError: the first bad record or missing image (unless listing problems).
        """
        settings = self.settings
        result = Chunk(*(np.empty(0, np.int64),) * 6, [], [], np.empty(0, np.int64), num_records=len(records))
        samples, texts, spans = [], [], []
        for raw in records:
            sample = self._read(raw, result)
            if sample is None:
                continue
            if settings.list_problems:  # here, so that problems come in file order
                self._check_images(sample, result)
            text, learned_spans = settings.template.render(sample.messages)
            samples.append(sample)
            texts.append(text)
            spans.append(learned_spans)
        if samples:
            ids, learned, counts = self._tokenize(texts, spans)
            self._truncate_and_store(samples, ids, learned, counts, result)
        return result

    def _truncate_and_store(
        self, samples: list[Sample], ids: np.ndarray, learned: np.ndarray, counts: np.ndarray, result: Chunk
    ) -> None:
        """Cut, drop and check the chunk's samples, and write the kept ones' arrays into ``result``."""
        settings = self.settings
        n = len(samples)
        owner = np.repeat(np.arange(n), counts)  # [tokens] the sample each token belongs to
        is_image = ids == settings.image_token_id
        learned &= ~is_image
        size = np.where(is_image, settings.image_seq_length, 1)
        ends = np.cumsum(size)
        first = np.cumsum(counts) - counts  # [n] index of each sample's first token
        ends -= np.concatenate(([0], ends))[first][owner]  # expanded end of each token within its sample
        # a sample keeps the tokens that end within max_length: a cut never splits an image's block
        keep = ends <= settings.max_length
        full = np.zeros(n, np.int64)
        np.maximum.at(full, owner, ends)
        truncated = full > settings.max_length
        supervised = np.bincount(owner[keep & learned], minlength=n)
        dropped = truncated & ((settings.truncation == "drop") | (supervised == 0))
        keep &= ~dropped[owner]
        kept = np.flatnonzero(~dropped)
        for index in np.flatnonzero(truncated):
            result.truncated.append(samples[index].sample_id)
            if dropped[index]:
                result.dropped.append(samples[index].sample_id)
        for index in range(n):
            result.num_text_only += not samples[index].images
            if not (dropped[index] or settings.list_problems):
                self._check_images(samples[index], result)
        result.full_lengths = full
        result.token_ids = ids[keep]
        result.token_counts = np.bincount(owner[keep], minlength=n)[kept]
        result.lengths = np.bincount(owner[keep], weights=size[keep], minlength=n)[kept].astype(np.int64)
        result.num_images = np.bincount(owner[keep & is_image], minlength=n)[kept]
        result.spans, result.span_counts = _learned_spans(learned[keep], result.token_counts)
        result.sample_ids = [samples[i].sample_id for i in kept]
        result.images = [samples[i].images for i in kept]


def _inside(starts: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Which positions fall inside one of the sorted, disjoint ``[start, end)`` ``spans``.

    Args:
        starts: ``[tokens]`` character offsets where the tokens start.
        spans: ``[n_spans, 2]`` learned character ranges, in order.

    Returns:
        ``[tokens]`` bool: a token is learned when it starts inside a learned range.
    """
    if not len(spans):
        return np.zeros(len(starts), bool)
    span = np.searchsorted(spans[:, 0], starts, side="right") - 1  # the last span starting at or before
    return (span >= 0) & (starts < spans[np.maximum(span, 0), 1])


def _learned_spans(learned: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of learned tokens as ``[start, end)`` within each sample, and how many each sample has.

    Args:
        learned: ``[tokens]`` bool over the samples' concatenated ids.
        counts: ``[samples]`` tokens per sample.

    Returns:
        ``[n_spans, 2]`` ``int32`` spans relative to their sample's first token, and ``[samples]`` counts.
    """
    first = np.cumsum(counts) - counts
    before = np.concatenate(([False], learned[:-1]))
    before[first[counts > 0]] = False  # a run never continues across samples
    after = np.concatenate((learned[1:], [False]))
    after[(first + counts - 1)[counts > 0]] = False
    starts = np.flatnonzero(learned & ~before)
    stops = np.flatnonzero(learned & ~after) + 1
    owner = np.searchsorted(first, starts, side="right") - 1
    spans = np.stack([starts - first[owner], stops - first[owner]], axis=1).astype(np.int32)
    return spans.reshape(-1, 2), np.bincount(owner, minlength=len(counts))


def default_num_proc() -> int:
    """Every core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
