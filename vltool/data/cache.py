"""The pre-tokenisation cache: a dataset's tokenised state saved under a key of everything that shapes it.

A run with ``cache_dir`` set tokenises once and writes the result to
``<cache_dir>/<data file stem>-<key>.pkl``; later runs whose key matches load it instead of
tokenising. The key hashes the data file's content, the tokenizer, the template, the
tokenisation settings and vltool's tokenisation code, so a changed input gives a new file
name: a stale cache is never read, only left behind.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from vltool.templates import Template

CACHE_FORMAT_VERSION = 1
# the code that turns a file into token ids and decides what is kept; any change to it must
# invalidate every cache. find_spec locates the files without importing them (dataset imports us).
_TOKENISATION_MODULES = (
    "vltool.data.formats",
    "vltool.data.sample",
    "vltool.data.tokenization",
    "vltool.data.dataset",
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


def cache_file(cache_dir: str | Path, data_path: str | Path, key: str) -> Path:
    """Where the tokenised state of ``data_path`` under ``key`` lives."""
    return Path(cache_dir) / f"{Path(data_path).stem}-{key[:24]}.pkl"


# Pickle, not torch.save: the state is Python lists and dataclasses, not tensors, and plain
# pickle writes and reads them faster without torch's zip container. Unpickling can run code,
# as torch.load(weights_only=False) would; a cache file is written by vltool into a folder the
# user chose, and deserves the same trust as the config file, which is Python that vltool runs.
def load_cached(path: Path, key: str) -> Any | None:
    """The object saved at ``path`` under ``key``, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        with path.open("rb") as file:
            saved = pickle.load(file)
    except Exception:  # a truncated or foreign file is a cache miss, never a failed run
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    return saved["value"]


def save_cached(path: Path, key: str, value: Any) -> None:
    """Write ``value`` to ``path`` atomically: readers see the old file or the whole new one, never a part.

    Raises:
        OSError: the folder cannot be created or written; no partial file is left behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name in the same folder, so os.replace is a rename; open() rather than mkstemp so
    # the file gets the umask's permissions and other users of a shared cache can read it
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("xb") as file:
            pickle.dump({"key": key, "value": value}, file, protocol=pickle.HIGHEST_PROTOCOL)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
