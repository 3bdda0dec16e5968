"""The pre-tokenisation cache: a dataset prepared once, under a key of everything that shapes it.

The first run tokenises the data file into ``<cache_dir>/<data file stem>-<key>/`` (the
arrays of :mod:`vltool.data.storage`); later runs, and every other rank, memory-map that
folder. The key hashes the data file's content, the tokenizer, the template, the
tokenisation settings and vltool's tokenisation code, so a changed input gives a new folder
name: a stale cache is never read, only left behind. Without ``cache_dir`` the folder lives
under ``$VLTOOL_CACHE_DIR`` (default ``~/.cache/vltool/datasets``), as Hugging Face
``datasets`` keeps its own.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from vltool.templates import Template

CACHE_FORMAT_VERSION = 2
# the code that turns a file into token ids and decides what is kept; any change to it must
# invalidate every cache. find_spec locates the files without importing them (dataset imports us).
_TOKENISATION_MODULES = (
    "vltool.data.formats",
    "vltool.data.json_stream",
    "vltool.data.prepare",
    "vltool.data.sample",
    "vltool.data.storage",
    "vltool.templates",
)


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes.

    The content, not the size and mtime, decides: an edit within the file system's mtime
    resolution that keeps the size would otherwise reuse a stale cache. Hashing is fast next
    to tokenising the same file.
    """
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of everything that decides a tokenizer's ids: vocabulary, merges, added tokens, normaliser."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # a slow tokenizer has no serialised form; its vocabulary and added tokens are what vltool changes
        added = {index: str(token) for index, token in tokenizer.added_tokens_decoder.items()}
        text = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), sorted(added.items())])
    return hashlib.sha256(text.encode()).hexdigest()


def tokenization_key(
    data_path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    image_seq_length: int,
    max_length: int,
    truncation: str,
    dataset_format: str,
) -> str:
    """A hex key that changes whenever any input of tokenisation changes.

    Args:
        data_path: the JSON or JSONL data file (its content is hashed).
        tokenizer: the tokenizer, ``<image>`` token included.
        template: the chat format.
        image_seq_length: visual tokens per image.
        max_length: longest tokenised sample.
        truncation: ``truncate`` or ``drop``.
        dataset_format: ``auto``, ``llava``, ``qwen_vl`` or ``messages``.
    """
    inputs = {
        "version": CACHE_FORMAT_VERSION,
        "data": _file_digest(Path(data_path)),
        "tokenizer": _tokenizer_digest(tokenizer),
        "template": dataclasses.asdict(template),
        "image_seq_length": image_seq_length,
        "max_length": max_length,
        "truncation": truncation,
        "dataset_format": dataset_format,
        "code": [_file_digest(Path(importlib.util.find_spec(name).origin)) for name in _TOKENISATION_MODULES],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """Where prepared datasets go when the config sets no ``cache_dir``."""
    if os.environ.get("VLTOOL_CACHE_DIR"):
        return Path(os.environ["VLTOOL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vltool" / "datasets"


def store_name(data_path: str | Path, key: str) -> str:
    """The folder name of ``data_path`` prepared under ``key``."""
    return f"{Path(data_path).stem}-{key[:24]}"
