"""Where conversions write: a staging folder renamed into place, so a failure never leaves half a model."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers.utils.hub import convert_file_size_to_int

from vltool.errors import ConfigError
from vltool.io import staged_directory


def check_shard_size(max_shard_size: str) -> str:
    """Validate a ``--max-shard-size`` value (``2GB``, ``500MB``, ``10KB``, or bytes) and return it.

    Raises:
        ConfigError: the value is not a size.
    """
    try:
        size = convert_file_size_to_int(max_shard_size)
    except ValueError:
        size = 0
    if not isinstance(size, int) or size <= 0:
        raise ConfigError(f"--max-shard-size '{max_shard_size}' is not a size; use a value such as 2GB or 500MB.")
    return max_shard_size


def check_save_dir(save_dir: str | Path, overwrite: bool) -> Path:
    """Refuse an existing, non-empty ``save_dir`` unless ``overwrite``; checked before any heavy work.

    Raises:
        ConfigError: ``save_dir`` holds files (or is a file) and ``overwrite`` is False.
    """
    save_dir = Path(save_dir)
    if save_dir.exists() and not save_dir.is_dir():
        raise ConfigError(f"{save_dir} exists and is a file; choose a directory to save the model in.")
    if save_dir.is_dir() and any(save_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{save_dir} exists and is not empty; choose another directory or pass --overwrite.")
    return save_dir


@contextmanager
def staged_save_dir(save_dir: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging folder next to ``save_dir``; on success it replaces ``save_dir``.

    On any error the staging folder is deleted and an existing ``save_dir`` is left as it was,
    so an interrupted or failed conversion never destroys the previous export.
    """
    save_dir = check_save_dir(save_dir, overwrite)
    with staged_directory(save_dir, f"partial-{os.getpid()}") as staging:
        yield staging
