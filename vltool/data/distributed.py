"""Prepare the dataset once under many processes: rank 0 tokenises it, every other rank maps its files.

Without this each of N processes tokenises the same file, and a large file keeps the others in
their first collective until NCCL's 30-minute timeout kills the job. Here the wait happens in
a gloo group of its own whose timeout is the config's ``dataset_prepare_timeout``, so it works
on CPU, does not depend on NCCL's timeout, and ends with a message that names the setting.
Only the prepared folder's name travels: every rank memory-maps the same files, so a node
holds one copy of the dataset in its page cache however many ranks it runs. A node that does
not see rank 0's folder (no shared disk) prepares its own copy once, on its local rank 0.
"""

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

from vltool.data.dataset import PreparedMissing, VisionLanguageDataset
from vltool.errors import ConfigError, DatasetError, VltoolError

T = TypeVar("T")
D = TypeVar("D", bound=VisionLanguageDataset)

DATASET_PREPARE_TIMEOUT_KEY = "dataset_prepare_timeout"
DEFAULT_DATASET_PREPARE_TIMEOUT_S = 1800.0


@dataclass
class _Failure:
    """Sent instead of the result when rank 0's build raised, so the other ranks stop waiting."""

    error: Exception


def is_multiprocess() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_from_rank0(build: Callable[[], T], timeout_s: float, setting: str) -> T:
    """Call ``build`` on rank 0 only and return its (picklable) result on every rank.

    In one process this is ``build()``. Every rank must call it at the same point.

    Args:
        build: computes the value; runs on rank 0 alone.
        timeout_s: how long the other ranks wait for rank 0.
        setting: the config key that sets ``timeout_s``, named when the wait runs out.

    Raises:
        DatasetError: on the waiting ranks, when the wait runs out or rank 0 is lost; the same
            error as rank 0's when its build raised a vltool error.
        RuntimeError: on the waiting ranks, when rank 0's build raised any other error.
    """
    if timeout_s <= 0:
        raise ConfigError(f"{setting}={timeout_s} must be a positive number of seconds.")
    if not is_multiprocess():
        return build()
    # a group of its own: gloo runs on CPU, and its timeout (not the default group's) bounds this wait
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    try:
        if dist.get_rank() == 0:
            return _build_and_send(build, group, timeout_s, setting)
        return _receive(group, timeout_s, setting)
    finally:
        dist.destroy_process_group(group)


def _build_and_send(build: Callable[[], T], group: Any, timeout_s: float, setting: str) -> T:
    start = time.monotonic()
    try:
        value = build()
    except Exception as err:
        # a vltool error (a bad sample, say) is the user's to fix, so every rank reports it as is
        sent = err if isinstance(err, VltoolError) else RuntimeError(f"rank 0 failed: {type(err).__name__}: {err}")
        try:
            dist.broadcast_object_list([_Failure(sent)], src=0, group=group)
        except RuntimeError:
            pass  # the others have gone already; rank 0's own error is the one to show
        raise
    try:
        dist.broadcast_object_list([value], src=0, group=group)
    except RuntimeError as err:
        raise DatasetError(
            f"rank 0 prepared the dataset in {time.monotonic() - start:.0f} s but the other ranks had stopped "
            f"waiting ({setting}={timeout_s:g} s) or failed; raise {setting} in the config or pre-tokenise with "
            "`vltool prepare-dataset CONFIG`."
        ) from err
    return value


def _receive(group: Any, timeout_s: float, setting: str) -> Any:
    received: list[Any] = [None]
    try:
        dist.broadcast_object_list(received, src=0, group=group)
    except RuntimeError as err:
        if any(word in str(err).lower() for word in ("timed out", "timeout")):  # gloo's wording varies by op
            raise DatasetError(
                f"dataset preparation on rank 0 took longer than {setting}={timeout_s:g} s; raise {setting} "
                "in the config or pre-tokenise with `vltool prepare-dataset CONFIG`."
            ) from err
        raise DatasetError(
            f"rank {dist.get_rank()} lost rank 0 while it prepared the dataset; its log shows why."
        ) from err
    if isinstance(received[0], _Failure):
        raise received[0].error
    return received[0]


def build_dataset_once(build_dataset: Callable[..., D], timeout_s: float = DEFAULT_DATASET_PREPARE_TIMEOUT_S) -> D:
    """Build the dataset on every rank while only rank 0 reads and tokenises the data file.

    Rank 0 builds the dataset (preparing it, or opening the cached folder) and sends the
    folder's name; the other ranks open that folder in their own ``cache_dir``. Where a node
    does not have it, that node's local rank 0 prepares it while the node's other ranks wait.

    Args:
        build_dataset: builds the dataset; called with no arguments to prepare and with
            ``prepared=NAME`` to open, e.g. ``partial(build, cfg.train_dataloader.dataset, tokenizer=...)``.
        timeout_s: the config's ``dataset_prepare_timeout``: how long the others wait.

    Raises:
        DatasetError: see :func:`broadcast_from_rank0`.
    """
    built: list[D] = []

    def prepare_on_rank0() -> str:
        built.append(build_dataset())
        return built[0].store_path.name

    name = broadcast_from_rank0(prepare_on_rank0, timeout_s, DATASET_PREPARE_TIMEOUT_KEY)
    if not is_multiprocess():
        return built[0]
    dataset = built[0] if built else _open(build_dataset, name)
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    try:
        node = (socket.gethostname(), os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0")))
        missing: list[Any] = [None] * dist.get_world_size()
        _gather(missing, (node, dataset is None), group, timeout_s)
        nodes_without = {where for where, lacks in missing if lacks}
        if not nodes_without:
            return dataset
        failure = None
        if node in nodes_without and os.environ.get("LOCAL_RANK", "0") == "0":
            try:
                dataset = build_dataset()
            except Exception as err:
                failure = _Failure(
                    err if isinstance(err, VltoolError) else RuntimeError(f"{type(err).__name__}: {err}")
                )
        outcomes: list[Any] = [None] * dist.get_world_size()
        _gather(outcomes, failure, group, timeout_s)
    finally:
        dist.destroy_process_group(group)
    for outcome in outcomes:
        if outcome is not None:
            raise outcome.error
    return dataset if dataset is not None else build_dataset(prepared=name)


def _open(build_dataset: Callable[..., D], name: str) -> D | None:
    """The dataset from the prepared folder ``name``, or None when this machine's disk lacks it."""
    try:
        return build_dataset(prepared=name)
    except PreparedMissing:
        return None


def _gather(out: list[Any], value: Any, group: Any, timeout_s: float) -> None:
    """``all_gather_object`` in the preparation group, with its timeout named when it runs out."""
    try:
        dist.all_gather_object(out, value, group=group)
    except RuntimeError as err:
        raise DatasetError(
            f"a node took longer than {DATASET_PREPARE_TIMEOUT_KEY}={timeout_s:g} s to prepare its copy of the "
            f"dataset, or a rank was lost; raise {DATASET_PREPARE_TIMEOUT_KEY} in the config or pre-tokenise with "
            "`vltool prepare-dataset CONFIG` on each node."
        ) from err
