"""A checkpoint's tensors read one at a time from memory-mapped files, never the whole checkpoint at once.

Why: reading a checkpoint whole costs its size in RAM next to the model it loads into, and a 7B
full finetune's fp32 weights are 28 GiB. DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint``
also reads the module file whole and concatenates the ranks' fp32 partitions into new memory:
loading the Qwen2.5-0.5B-shaped benchmark's ZeRO-2 checkpoint as ``pretrained_pth`` grew every
rank by 3.70 GiB, twice its 1.85 GiB of fp32 weights (docs/benchmarks.md).

Here every file is opened with ``torch.load(mmap=True, weights_only=True)``: the unpickler builds
the index (names, shapes and where each tensor lies in the file) and the tensors stay pages of
the file, read when touched. A :class:`LazyTensor` names the pieces of the files a tensor is made
of (for a ZeRO checkpoint, slices of several ranks' flat fp32 partitions) and copies them into a
tensor the caller owns in chunks of :data:`CHUNK_BYTES`, handing each chunk's pages back to the
kernel (``madvise(MADV_DONTNEED)``) once copied. So a load grows a process by the tensors it
creates, and by at most one chunk when it copies into existing parameters.

The weights-only rule of :mod:`vltool.engine.safe_load` holds: every file is read through
:func:`~vltool.engine.safe_load.load_file`; DeepSpeed's reader, which asks for
``weights_only=False``, is not used. Its layout rules (which pieces make a tensor, ZeRO stages 1
to 3) are followed in :mod:`vltool.engine.zero_layout`, checked bit for bit against DeepSpeed's
own consolidation in ``tests/engine/test_lazy_weights.py``.
"""

import ctypes
import math
import mmap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from vltool.engine import safe_load
from vltool.errors import ConfigError

CHUNK_BYTES = 64 * 2**20  # copied between hand-backs of file pages: the most a copy holds of a file at once
MADV_DONTNEED = 4  # Linux: drop these pages from the process; a private, unwritten file mapping re-reads them


def _madvise() -> ctypes._CFuncPtr | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # not Linux/glibc: pages stay mapped until the file is closed
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return function


_MADVISE = _madvise()


def release_pages(view: torch.Tensor) -> None:
    """Hand back the whole memory pages inside ``view``, a piece of a read-only memory-mapped file.

    The mapping is private and never written, so the kernel drops the pages from this process
    (they stay in the page cache) and reads them again if they are touched again; the pages at
    the edges, shared with neighbouring tensors, stay.
    """
    if _MADVISE is None or view.device.type != "cpu" or view.numel() == 0:
        return
    start = view.data_ptr()
    end = start + view.numel() * view.element_size()
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        _MADVISE(first, last - first, MADV_DONTNEED)


@dataclass
class LazyTensor:
    """One checkpoint tensor: its shape and dtype, and the flat file pieces that hold its values in order.

    The pieces' concatenation, cut to ``shape``'s element count, is the tensor (ZeRO-3 pads each
    parameter's partitions to a multiple of the world size).
    """

    shape: torch.Size
    dtype: torch.dtype
    pieces: list[torch.Tensor]  # 1-D, contiguous; never written
    mapped: bool = True  # the pieces are pages of mapped files, handed back once copied (else this process's memory)

    def numel(self) -> int:
        return math.prod(self.shape)

    def copy_to(self, target: torch.Tensor) -> None:
        """Copy the values into ``target`` (same shape; any dtype and device), a chunk at a time.

        Raises:
            ValueError: ``target`` has another number of elements.
        """
        if target.numel() != self.numel():
            raise ValueError(f"target of {target.numel()} elements for a tensor of shape {tuple(self.shape)}")
        flat = target.view(-1) if target.is_contiguous() else torch.empty(self.numel(), dtype=target.dtype)
        chunk = max(1, CHUNK_BYTES // max(1, self.pieces[0].element_size() if self.pieces else 1))
        done = 0
        with torch.no_grad():
            for piece in self.pieces:
                take = min(piece.numel(), self.numel() - done)
                for start in range(0, take, chunk):
                    part = piece[start : min(start + chunk, take)]
                    flat[done + start : done + start + part.numel()].copy_(part)
                    if self.mapped:  # handing back pages of memory that is not a file's would zero them
                        release_pages(part)
                done += take
            if flat.data_ptr() != target.data_ptr():  # a non-contiguous target got a contiguous copy
                target.copy_(flat.view(self.shape))

    def materialize(self) -> torch.Tensor:
        """The tensor, in memory this process owns."""
        tensor = torch.empty(self.shape, dtype=self.dtype)
        self.copy_to(tensor)
        return tensor


def lazy(tensor: torch.Tensor, mapped: bool) -> LazyTensor:
    """A whole tensor as a :class:`LazyTensor`; ``mapped``: it is part of a memory-mapped file.

    The tensors ``torch.save`` writes are contiguous; a strided one is copied once, into memory
    of this process.
    """
    mapped = mapped and tensor.is_contiguous()
    return LazyTensor(tensor.shape, tensor.dtype, [tensor.reshape(-1)], mapped)


def open_mapped(path: Path, allowed: list | None = None, source: Path | None = None) -> tuple[object, bool]:
    """``torch.load`` of ``path`` weights-only, and whether it is memory-mapped (a pre-zip legacy file is read whole).

    Raises:
        ConfigError: naming ``source`` (default ``path``): the file holds code or is damaged.
    """
    mapped = zipfile.is_zipfile(path)
    return safe_load.load_file(path, allowed=allowed, mmap=mapped, source=source), mapped


def open_weights(path: str | Path) -> dict[str, LazyTensor]:
    """Model weights (``vlm.``-prefixed names) of a checkpoint file or a DeepSpeed checkpoint directory, unread.

    A DeepSpeed directory gives the fp32 master weights, whatever the ZeRO stage, as
    :func:`~vltool.engine.zero_layout.zero_weights` lays them out.

    Raises:
        ConfigError: the path does not exist, holds no weights, is damaged, or holds something
            loading would have to run (one line naming the file).
    """
    path = Path(path)
    if path.is_dir():
        from vltool.engine.zero_layout import zero_weights  # imports deepspeed: only for its directories

        return zero_weights(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist.")
    checkpoint, mapped = open_mapped(path)
    weights = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"{path}: holds no model weights (expected a vltool checkpoint with a 'state_dict').")
    return {name: lazy(value, mapped) for name, value in weights.items()}
