"""The prepared dataset on disk: flat arrays that every rank and dataloader worker memory-maps.

A prepared dataset is one folder::

    manifest.json        counts, the cache key, what was truncated and dropped
    tokens.bin           int32 token ids of all samples back to back, one id per image
    token_offsets.npy    int64 [n + 1]: sample i is tokens[offsets[i]:offsets[i + 1]]
    lengths.npy          int32 [n]: length with images expanded (what the sampler and packing use)
    num_images.npy       int32 [n]: images in the (possibly truncated) ids
    spans.npy            int32 [n_spans, 2]: learned [start, end) within each sample's ids
    span_offsets.npy     int64 [n + 1]
    sample_ids*.npy, images*.npy, image_offsets.npy: the ids and image paths as UTF-8 tables

Why numpy files and not Arrow (Hugging Face ``datasets``): both memory-map, but reading one
sample through ``datasets`` converts its lists to Python objects (measured in
docs/benchmarks.md), while a numpy slice of ``tokens.bin`` is a view that becomes a tensor
without a copy, and the folder needs nothing beyond numpy to read. Nothing here is pickled, so
opening a cache runs no code from it.

The folder is written under a temporary name and renamed into place when complete, so a
reader sees a whole dataset or none: a killed preparation leaves only a temporary folder,
which is never read and is removed by the next preparation on the same machine.
"""

import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from vltool.data.prepare import Chunk
from vltool.io import move_into_place

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens.bin"


class StringTable:
    """Strings stored as one UTF-8 byte array and offsets; ``table[i]`` decodes one."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob = blob
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        return self.blob[self.offsets[index] : self.offsets[index + 1]].tobytes().decode("utf-8")

    @staticmethod
    def encode(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ``(blob, offsets)`` arrays of ``strings``."""
        encoded = [text.encode("utf-8") for text in strings]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(item) for item in encoded], out=offsets[1:])
        return np.frombuffer(b"".join(encoded), np.uint8), offsets


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _offsets(counts: list[np.ndarray]) -> np.ndarray:
    offsets = np.zeros(sum(len(c) for c in counts) + 1, np.int64)
    if len(offsets) > 1:
        np.cumsum(np.concatenate(counts), out=offsets[1:])
    return offsets


class StoreWriter:
    """Writes a prepared dataset chunk by chunk into a temporary folder, then renames it into place.

    Use as a context manager: leaving it by an exception removes the temporary folder.

    Args:
        final: the folder the dataset is to have.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(final)
        self.folder = final.with_name(f".{final.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self.folder.mkdir()
        self.tokens = (self.folder / TOKENS).open("wb")
        self.parts: dict[str, list] = {name: [] for name in ("counts", "lengths", "images_n", "spans", "span_counts")}
        self.sample_ids: list[str] = []
        self.images: list[list[str]] = []
        self.num_tokens = 0

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None:
            self.tokens.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    def add(self, chunk: Chunk) -> None:
        """Append one chunk's kept samples."""
        self.tokens.write(chunk.token_ids.astype(np.int32, copy=False).tobytes())
        self.num_tokens += len(chunk.token_ids)
        for name, array in (
            ("counts", chunk.token_counts),
            ("lengths", chunk.lengths),
            ("images_n", chunk.num_images),
            ("spans", chunk.spans),
            ("span_counts", chunk.span_counts),
        ):
            self.parts[name].append(array)
        self.sample_ids += chunk.sample_ids
        self.images += chunk.images

    def finish(self, manifest: dict[str, Any]) -> Path:
        """Write the arrays and ``manifest``, make them durable and move the folder into place.

        Returns:
            The final folder. When another process finished the same dataset first, its folder
            is kept and this one discarded (both hold the same content: the name is the key).
        """
        self.tokens.flush()
        os.fsync(self.tokens.fileno())
        self.tokens.close()
        arrays = {
            "token_offsets": _offsets(self.parts["counts"]),
            "lengths": np.concatenate(self.parts["lengths"] or [np.empty(0)]).astype(np.int32),
            "num_images": np.concatenate(self.parts["images_n"] or [np.empty(0)]).astype(np.int32),
            "spans": np.concatenate(self.parts["spans"] or [np.empty((0, 2))]).astype(np.int32),
            "span_offsets": _offsets(self.parts["span_counts"]),
            "image_offsets": _offsets([np.array([len(images) for images in self.images], np.int64)]),
        }
        arrays["sample_ids"], arrays["sample_id_offsets"] = StringTable.encode(self.sample_ids)
        arrays["images"], arrays["image_path_offsets"] = StringTable.encode([p for ps in self.images for p in ps])
        for name, array in arrays.items():
            np.save(self.folder / f"{name}.npy", array)
        counts = {"num_samples": len(self.sample_ids), "num_tokens": self.num_tokens}
        (self.folder / MANIFEST).write_text(json.dumps({"version": FORMAT_VERSION, **counts, **manifest}))
        for path in self.folder.iterdir():
            _fsync(path)
        published = move_into_place(self.folder, self.final, replace=False)  # another process's folder stays
        if not published and not (self.final / MANIFEST).is_file():
            raise OSError(f"{self.final} exists and is not a prepared dataset; delete it and prepare again.")
        _fsync(self.final.parent)
        return self.final


def _remove_abandoned(final: Path) -> None:
    """Delete temporary folders for ``final`` left by processes of this machine that no longer run."""
    host = socket.gethostname()
    for folder in final.parent.glob(f".{final.name}.{host}.*.tmp"):
        pid = folder.name[len(f".{final.name}.{host}.") :].split(".")[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


class TokenStore:
    """A prepared dataset folder, memory-mapped: nothing is read until a sample is.

    Args:
        folder: written by :class:`StoreWriter`.

    Raises:
        ValueError: the folder is not a complete prepared dataset of this format version.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{folder}: no readable {MANIFEST} ({err})") from None
        if self.manifest.get("version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: format version {self.manifest.get('version')}, not {FORMAT_VERSION}")
        count = self.manifest["num_samples"]
        tokens = folder / TOKENS
        if not tokens.is_file() or tokens.stat().st_size != 4 * self.manifest["num_tokens"]:
            raise ValueError(f"{folder}: {TOKENS} does not hold {self.manifest['num_tokens']} tokens")
        # np.memmap refuses an empty file; an empty dataset never reaches a reader anyway
        self.tokens = np.memmap(tokens, np.int32, "r") if self.manifest["num_tokens"] else np.empty(0, np.int32)

        def load(name: str) -> np.ndarray:
            return np.load(folder / f"{name}.npy", mmap_mode="r")

        self.token_offsets = load("token_offsets")
        self.lengths = load("lengths")
        self.num_images = load("num_images")
        self.spans = load("spans")
        self.span_offsets = load("span_offsets")
        self.image_offsets = load("image_offsets")
        self.sample_ids = StringTable(load("sample_ids"), load("sample_id_offsets"))
        self.image_paths = StringTable(load("images"), load("image_path_offsets"))
        if not (len(self.lengths) == len(self.sample_ids) == count == len(self.token_offsets) - 1):
            raise ValueError(f"{folder}: arrays do not agree on {count} samples")

    def __len__(self) -> int:
        return len(self.lengths)

    def token_ids(self, index: int) -> np.ndarray:
        """``[tokens]`` int32 ids of sample ``index``, one per image (a view of the mapped file)."""
        return self.tokens[self.token_offsets[index] : self.token_offsets[index + 1]]

    def learned_spans(self, index: int) -> np.ndarray:
        """``[n_spans, 2]`` learned ``[start, end)`` ranges of sample ``index``'s ids."""
        return self.spans[self.span_offsets[index] : self.span_offsets[index + 1]]

    def images(self, index: int) -> list[str]:
        """Every image path sample ``index`` names (its ids may hold fewer after truncation)."""
        return [self.image_paths[i] for i in range(self.image_offsets[index], self.image_offsets[index + 1])]
