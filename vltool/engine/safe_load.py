"""Reading checkpoint files without running code from them.

A ``.pth`` file is a pickle, and unpickling calls whatever functions the file names: a crafted
``pretrained_pth`` or ``--resume`` file could run any command as the user. So vltool loads
every checkpoint with ``torch.load(weights_only=True)``, whose unpickler builds only tensors,
plain Python data and the classes allowed here, and refuses a file naming anything else with one
line before anything in it has run. A marker inside the file could not make it trusted: whoever
crafts the file writes the marker too.

What vltool's checkpoints hold besides tensors and plain data, and why each is safe to build:

- mmengine's message hub keeps the logged scalars as ``HistoryBuffer`` objects holding numpy
  arrays, and its runtime info holds numpy scalars; vltool's ``RngStateHook`` saves numpy's RNG
  state (a numpy array). Building a numpy array or scalar from its raw bytes runs no code.
  ``HistoryBuffer`` is built by a stand-in (:class:`_LoadedHistoryBuffer`) that keeps only the
  three data attributes: mmengine's own ``__setstate__`` would copy the file's
  ``statistics_methods`` (functions, pickled through ``getattr``) into a class-wide table. The
  only ``getattr`` a checkpoint may use is one of those four methods.
- DeepSpeed's optimizer-state files hold its loss scaler, its ZeRO stage enum and its
  ``fragment_address`` records: data classes whose building runs none of their code.

Loading is weights-only in three ways: vltool's own loads pass ``weights_only=True`` (its reader
of DeepSpeed directories for ``pretrained_pth`` and ``convert`` included,
:mod:`vltool.engine.lazy_weights`); mmengine's local-file loader is replaced by vltool's
(mmengine passes nothing, so an environment could turn it off, and it does not allow the
classes above); DeepSpeed, which passes ``weights_only=False`` itself (on ``--resume``), loads
inside :func:`weights_only_loading`, which sets torch's documented
``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` for the duration. mmengine's remote loaders (``https://``,
``s3://`` ...) would load with ``weights_only=False`` and are refused.

The allowed classes are added with ``torch.serialization.safe_globals`` around each load rather
than process-wide with ``add_safe_globals``: a process-wide list would also widen what every
other ``torch.load`` in the process accepts (transformers, PEFT, a user's own code), and the
``getattr`` stand-in must answer to no one but vltool's loads.

One more way a checkpoint could carry code: mmengine's resume runs ``meta['config']`` as a
Python config file (``Config.fromstring``), an ``exec`` of the file's text. vltool never writes
that key, and a checkpoint that has it is refused (:func:`refuse_config_code`).
"""

import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from vltool.errors import ConfigError

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
HISTORY_STATISTICS = ("min", "max", "current", "mean")  # what mmengine's HistoryBuffer pickles
REFUSAL = "vltool loads only tensors and plain data from checkpoints (torch.load weights_only), so nothing in it ran"


class _LoadedHistoryBuffer(HistoryBuffer):
    """Builds mmengine's ``HistoryBuffer`` from a checkpoint: its arrays and length, nothing more.

    The object becomes a plain ``HistoryBuffer`` once built (so saving it again names mmengine's
    class, and the message hub accepts it). The file's ``statistics_methods`` are dropped rather
    than copied into the class-wide table as mmengine's ``__setstate__`` does; the table gets
    mmengine's four defaults instead.
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a HistoryBuffer whose state is not a dict")
        self.__class__ = HistoryBuffer
        self._set_default_statistics()  # what HistoryBuffer() registers, as mmengine's __setstate__ would
        self.max_length = int(state.get("max_length", 1000000))
        self._log_history = np.asarray(state.get("_log_history", []))
        self._count_history = np.asarray(state.get("_count_history", []))


def _history_buffer_statistic(owner: Any, name: Any) -> Any:
    """The pickle's ``getattr``, allowed only for ``HistoryBuffer.min`` / ``max`` / ``current`` / ``mean``."""
    if owner is _LoadedHistoryBuffer and name in HISTORY_STATISTICS:
        return getattr(HistoryBuffer, name)
    owner_name = "HistoryBuffer" if owner is _LoadedHistoryBuffer else getattr(owner, "__name__", type(owner).__name__)
    raise pickle.UnpicklingError(f"Unsupported global: GLOBAL builtins.getattr({owner_name}.{name})")


def _numpy_globals() -> list[Any]:
    """The numpy array, dtype and scalar builders, under numpy 2's module names and numpy 1's (older files).

    A dtype is built by calling ``np.dtype`` and then given its state, which weights-only loading
    allows only for listed types: the classes of the boolean and numeric dtypes (numpy >= 1.25).
    """
    multiarray = np._core.multiarray
    aliased = [
        (function, f"{module}.{function.__name__}")
        for function in (multiarray._reconstruct, multiarray.scalar)
        for module in ("numpy._core.multiarray", "numpy.core.multiarray")
    ]
    dtype_classes = {type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"}
    return [np.ndarray, np.dtype, *sorted(dtype_classes, key=str), *aliased]


def checkpoint_globals() -> list[Any]:
    """What a ``.pth`` file that ``vltool train`` writes may hold besides tensors and plain data."""
    return [
        (_LoadedHistoryBuffer, "mmengine.logging.history_buffer.HistoryBuffer"),
        (_history_buffer_statistic, "builtins.getattr"),
        *_numpy_globals(),
    ]


def deepspeed_globals() -> list[Any]:
    """What a DeepSpeed checkpoint directory holds besides that (its optimizer-state files)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [*checkpoint_globals(), LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextmanager
def _allowed(allowed: list[Any]) -> Iterator[None]:
    # only those not already allowed are added, so leaving the block removes nobody else's
    present = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([entry for entry in allowed if entry not in present]):
        yield


def _unsafe_globals(path: Path, allowed: list[Any]) -> list[str]:
    """The functions and classes ``path``'s pickle names that weights-only loading refuses (read, not run).

    Empty for a file torch cannot list (not a zip checkpoint, or damaged).
    """
    try:
        with _allowed(allowed):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - a damaged or legacy-format file: the load itself will say why
        return []


def refusal(path: Path, names: list[str]) -> ConfigError:
    """The one-line error for a file that names code: ``PATH: not a vltool checkpoint: it holds NAME ...``."""
    return ConfigError(
        f"{path}: not a vltool checkpoint: it holds {', '.join(names)}, which loading would have to run; {REFUSAL}."
    )


def _load_error(path: Path, err: Exception, allowed: list[Any], source: Path | None = None) -> ConfigError:
    """A refusal naming what the file holds, or "not a readable checkpoint" for a damaged file (named ``source``)."""
    names = _unsafe_globals(path, allowed) if path.is_file() else []
    if not names and isinstance(err, pickle.UnpicklingError):  # a legacy-format file: torch's message names it
        names = sorted({name.rstrip(".,") for name in re.findall(r"GLOBAL (\S+)", str(err))})
    if names:
        return refusal(source or path, names)
    detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if "Weights only load failed" in detail:  # torch's banner; its own reason is further down
        reasons = [line for line in str(err).splitlines()[1:] if line.strip() and "Check the documentation" not in line]
        detail = reasons[-1].strip() if reasons else detail
    shown = source or path
    return ConfigError(f"{shown}: not a readable checkpoint ({type(err).__name__}: {detail}); was it cut short?")


def load_file(
    path: str | Path,
    map_location: Any = "cpu",
    allowed: list[Any] | None = None,
    mmap: bool = False,
    source: str | Path | None = None,
) -> Any:
    """``torch.load(path, weights_only=True)`` with vltool's checkpoint classes allowed.

    Args:
        path: a ``.pth`` file (or one file of a DeepSpeed checkpoint directory).
        map_location: as for ``torch.load``.
        allowed: the classes to allow; default :func:`checkpoint_globals`.
        mmap: map the file rather than read it (zip-format files only): tensors are pages of a
            private mapping, read when touched (:mod:`vltool.engine.lazy_weights`).
        source: what errors name; default ``path`` (a DeepSpeed directory names itself).

    Raises:
        ConfigError: one line naming the file: it holds something loading would have to run,
            or it is damaged.
    """
    path = Path(path)
    allowed = checkpoint_globals() if allowed is None else allowed
    try:
        with _allowed(allowed):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises pickle, runtime, value and EOF errors for damaged files
        raise _load_error(path, err, allowed, Path(source) if source else None) from None


def check_directory(directory: str | Path) -> None:
    """Refuse a DeepSpeed checkpoint directory with a file that names code, before DeepSpeed opens it.

    Weights-only loading refuses such a file anyway (:func:`weights_only_loading`); reading the
    pickles first lets the error name the file rather than the directory.

    Raises:
        ConfigError: naming the first such file and what it holds.
    """
    allowed = deepspeed_globals()
    for path in sorted(Path(directory).glob("*.pt")):
        names = _unsafe_globals(path, allowed)
        if names:
            raise refusal(path, names)


@contextmanager
def weights_only_loading(source: str | Path, allowed: list[Any] | None = None) -> Iterator[None]:
    """Every ``torch.load`` in the block is weights-only, also a library's that asks for ``weights_only=False``.

    For loads vltool does not make itself (DeepSpeed's). torch reads ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``
    on every call, so setting it for the block reaches every call site without patching any
    library; the block holds no other work, so nothing else is affected while it is set.

    Args:
        source: the checkpoint, for the error message.
        allowed: the classes to allow; default :func:`deepspeed_globals`.

    Raises:
        ConfigError: one line naming ``source`` when a load in the block is refused.
    """
    allowed = deepspeed_globals() if allowed is None else allowed
    saved = {name: os.environ.pop(name, None) for name in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with _allowed(allowed):
            yield
    except pickle.UnpicklingError as err:
        raise _load_error(Path(source), err, allowed) from None
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def refuse_config_code(checkpoint: Any, source: str | Path) -> None:
    """Refuse a checkpoint whose ``meta['config']`` mmengine's resume would run as Python.

    Raises:
        ConfigError: naming ``source``.
    """
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if isinstance(meta, dict) and "config" in meta:
        raise ConfigError(
            f"{source}: not a vltool checkpoint: its meta['config'] is Python that mmengine's resume would run "
            f"(vltool never writes it); {REFUSAL}."
        )


@CheckpointLoader.register_scheme(prefixes="", force=True)
def load_from_local(filename: str, map_location: Any = None) -> Any:
    """The mmengine local-file loader (``--resume``, ``load_from``), weights-only (registered on import).

    mmengine logs the loader's name after ``load_from_``: "Loads checkpoint by local backend".

    Replaces mmengine's own, which calls ``torch.load`` without ``weights_only`` and so refuses
    the message hub's history buffers and numpy arrays (or, with
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set, loads anything).
    """
    path = Path(filename).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{filename} can not be found.")
    checkpoint = load_file(path, map_location)
    refuse_config_code(checkpoint, path)
    return checkpoint


def load_from_remote(filename: str, map_location: Any = None) -> Any:
    """Refuse a remote ``load_from`` (mmengine's loaders for URLs use ``weights_only=False``)."""
    raise ConfigError(
        f"{filename}: vltool loads checkpoints from local files only (mmengine would load this one with "
        "torch.load weights_only=False, running any code in it); download it and pass its path."
    )


for _prefix in [prefix for prefix in CheckpointLoader._schemes if prefix]:  # https://, s3://, open-mmlab:// ...
    CheckpointLoader.register_scheme(prefixes=_prefix, loader=load_from_remote, force=True)
