"""Checkpoints: atomic saving, exact resume (RNG streams), ZeRO-3 aware weights, multi-stage loading.

Every checkpoint is read weights-only, so no file can run code when loaded (:mod:`vltool.engine.safe_load`).
"""

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from mmengine.dist import all_gather_object, barrier, get_comm_device, get_rank, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from torch import nn

from vltool.constants import RESUME_LATEST
from vltool.engine import safe_load  # noqa: F401 - registers mmengine's weights-only local-file loader
from vltool.engine.lazy_weights import LazyTensor, open_weights
from vltool.errors import ConfigError
from vltool.io import move_into_place, remove, write_atomically

LAST_CHECKPOINT = "last_checkpoint"
PREFIX = "vlm."  # TrainingModel's state-dict prefix


def _is_partitioned(param: torch.Tensor) -> bool:
    """Whether ``param`` is a ZeRO-3 partition (its local tensor is empty; the values live across ranks)."""
    return hasattr(param, "ds_id")


def gathered_state(module: nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    """CPU copies of the named parameters with their full values, also under ZeRO-3.

    Under ZeRO-3 a parameter's local tensor is empty; reading ``state_dict()`` then saves empty
    tensors (the LLaVA "empty projector" bug). Each partitioned parameter is gathered on its own,
    so no rank ever holds more than one full parameter at a time. Every rank must call this.
    """
    state = {}
    for name, param in module.named_parameters():
        if name not in names:
            continue
        if _is_partitioned(param):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                state[name] = param.detach().cpu().clone()
        else:
            state[name] = param.detach().cpu().clone()
    return state


def load_parameters(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy ``state`` into ``module``'s parameters (also ZeRO-3 partitions); returns ``(missing, unexpected)``.

    ``missing`` lists trainable parameters the state does not hold; ``unexpected`` lists names
    the module does not have.

    Raises:
        ConfigError: a shape that does not fit, naming the parameter and both shapes.
    """
    params = dict(module.named_parameters())
    for name, value in state.items():
        param = params.get(name)
        if param is None:
            continue
        shape = param.ds_shape if _is_partitioned(param) else param.shape
        if tuple(shape) != tuple(value.shape):
            raise ConfigError(f"parameter {name}: checkpoint shape {tuple(value.shape)} != model shape {tuple(shape)}.")
        if _is_partitioned(param):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
                param.copy_(value)
        else:
            with torch.no_grad():
                param.copy_(value)
    missing = [name for name, param in params.items() if param.requires_grad and name not in state]
    unexpected = [name for name in state if name not in params]
    return missing, unexpected


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights (``vlm.``-prefixed names) from a checkpoint file or a DeepSpeed checkpoint directory.

    A DeepSpeed directory gives its fp32 master weights (exact, whatever the ZeRO stage), so
    pretrain checkpoints from ZeRO-2 or ZeRO-3 runs both load. Both kinds load weights-only: a
    file that would run code is refused before anything in it runs. The result is the weights'
    size in memory, read one tensor at a time; to load them into a model without holding them,
    use :func:`load_weights_lazily`.

    Raises:
        ConfigError: the path does not exist, holds no weights, is damaged, or holds something
            loading would have to run (one line naming the file).
    """
    return {name: tensor.materialize() for name, tensor in open_weights(path).items()}


def name_list(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, and how many more there are."""
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def load_checked(vlm: nn.Module, weights: dict[str, torch.Tensor], source: str, hint: str) -> list[str]:
    """Load ``weights`` (names without ``vlm.``) into ``vlm``, refusing any that do not fit.

    Args:
        vlm: the model.
        weights: parameter name -> value.
        source: what the weights are, for messages (``pretrained_pth PATH does not fit this model``).
        hint: what to do, appended to the message.

    Returns:
        The trainable parameters ``weights`` did not cover.

    Raises:
        ConfigError: names the model lacks, or a shape that does not fit, naming them.
    """
    check_fits(vlm, {name: tuple(value.shape) for name, value in weights.items()}, source, hint)
    missing, _ = load_parameters(vlm, weights)
    return missing


def check_fits(vlm: nn.Module, shapes: dict[str, tuple[int, ...]], source: str, hint: str) -> None:
    """Refuse weights the model lacks or whose shapes differ, before anything is copied (the model stays untouched).

    Raises:
        ConfigError: ``{source}: unexpected keys ...; {hint}`` or ``{source}: parameter X: checkpoint
            shape ... != model shape ... {hint}``.
    """
    params = dict(vlm.named_parameters())
    unexpected = [name for name in shapes if name not in params]
    if unexpected:
        raise ConfigError(f"{source}: unexpected keys {name_list(sorted(unexpected))}; {hint}")
    for name, shape in shapes.items():
        param = params[name]
        have = tuple(param.ds_shape if _is_partitioned(param) else param.shape)
        if have != tuple(shape):
            raise ConfigError(
                f"{source}: parameter {name}: checkpoint shape {tuple(shape)} != model shape {have}. {hint}"
            )


def load_weights_lazily(
    vlm: nn.Module, path: str | Path, source: str, hint: str, dtype: torch.dtype | None = None
) -> tuple[int, list[str]]:
    """Load a checkpoint's weights into ``vlm`` one tensor at a time, on one process or on every rank.

    Under many processes only rank 0 opens the checkpoint; each tensor is copied from its files
    into rank 0's parameter and broadcast from there into every rank's (on the process group's
    device, so NCCL works too). No rank holds the checkpoint: rank 0 holds at most
    :data:`~vltool.engine.lazy_weights.CHUNK_BYTES` of its files at a time, the others nothing
    beyond one tensor when their parameter is not on the broadcast device. ZeRO-3 partitions
    are filled by rank 0 alone inside ``GatheredParameters(modifier_rank=0)``. Every rank must call this.

    Args:
        vlm: the model.
        path: a checkpoint file or DeepSpeed checkpoint directory (``vlm.``-prefixed names).
        source, hint: for error messages, as in :func:`load_checked`.
        dtype: give each parameter the checkpoint fills a new tensor in this dtype before the copy
            (a conversion that saves in it): the values the part was loaded with, pages of its
            model folder, are then never read. Default: copy into the parameters as they are.

    Returns:
        How many tensors were loaded, and the trainable parameters the checkpoint did not cover.

    Raises:
        ConfigError: on every rank: the checkpoint cannot be read (rank 0's reason), names the
            model lacks, or a shape that does not fit; the model is then untouched.
    """
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    reads = not distributed or dist.get_rank() == 0
    weights, error = {}, None
    if reads:
        try:
            weights = {name.removeprefix(PREFIX): tensor for name, tensor in open_weights(path).items()}
        except ConfigError as err:
            error = str(err)
    index = [error, {name: tuple(tensor.shape) for name, tensor in weights.items()}]
    if distributed:
        dist.broadcast_object_list(index, src=0)
    error, shapes = index
    if error is not None:
        raise ConfigError(error)
    # a tied weight (an LM head sharing the embedding) is one parameter; DeepSpeed lists it under both names
    tied = {name for name, _ in vlm.named_parameters(remove_duplicate=False)} - set(dict(vlm.named_parameters()))
    shapes = {name: shape for name, shape in shapes.items() if name not in tied}
    check_fits(vlm, shapes, source, hint)
    params = dict(vlm.named_parameters())
    for name in shapes:
        _load_one(params[name], weights.get(name), distributed, dtype)
    return len(shapes), [name for name, param in params.items() if param.requires_grad and name not in shapes]


def _load_one(param: torch.Tensor, value: LazyTensor | None, distributed: bool, dtype: torch.dtype | None) -> None:
    """Fill ``param`` (in ``dtype`` if given) from ``value`` (held by rank 0 alone under many processes)."""
    if _is_partitioned(param):
        import deepspeed

        # every rank gathers; at exit DeepSpeed spreads rank 0's values and partitions them again
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if value is not None:
                value.copy_to(param.data)
        return
    if dtype is not None and param.dtype != dtype:
        param.data = torch.empty(param.shape, dtype=dtype, device=param.device)
    if value is not None:
        value.copy_to(param.data)
    if distributed:
        _broadcast_into(param.data)


def _broadcast_into(tensor: torch.Tensor) -> None:
    """Rank 0's ``tensor`` into every rank's, through a buffer when it is not on the group's device."""
    device = get_comm_device()
    if tensor.device == device and tensor.is_contiguous():
        dist.broadcast(tensor, src=0)
        return
    if dist.get_rank() == 0:
        dist.broadcast(tensor.to(device).contiguous(), src=0)
        return
    buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
    dist.broadcast(buffer, src=0)
    tensor.copy_(buffer)


def check_pretrained_exists(path: str | Path) -> None:
    """Fail fast, before any model is built, when ``pretrained_pth`` names nothing.

    Raises:
        ConfigError: saying how to produce it or how to do without it.
    """
    if not Path(path).exists():
        raise ConfigError(
            f"pretrained_pth {path} does not exist: train the pretrain stage first, or set --cfg-options "
            "pretrained_pth=PATH (or pretrained_pth=None pretrain_stage=None to start from a fresh projector)."
        )


def load_pretrained(vlm: nn.Module, path: str | Path) -> None:
    """Load a previous stage's checkpoint (``pretrained_pth``) into ``vlm``, reporting what matched.

    Trainable parameters the checkpoint lacks keep their initial weights and are listed in the
    log (a finetune run loading a projector-only pretrain checkpoint is the usual case).

    Raises:
        ConfigError: names in the checkpoint that the model lacks, a shape that does not fit, or
            a checkpoint with nothing this model can use.
    """
    check_pretrained_exists(path)
    loaded, missing = load_weights_lazily(
        vlm,
        path,
        f"pretrained_pth {path} does not fit this model",
        "check that the config builds the same projector/LoRA layout as the run that saved it.",
    )
    print_log(f"pretrained_pth {path}: loaded {loaded} tensors.", logger="current")
    if missing:
        print_log(
            f"pretrained_pth: {len(missing)} trainable parameters not in the checkpoint keep their initial "
            f"weights: {name_list(missing)}",
            logger="current",
        )


def find_resume_checkpoint(work_dir: str | Path, resume: str) -> str:
    """The checkpoint ``--resume`` means: ``auto`` (a bare ``--resume``) for the work dir's latest, else a path.

    Raises:
        ConfigError: nothing to resume, naming where vltool looked.
    """
    if resume != RESUME_LATEST:
        if not Path(resume).exists():
            raise ConfigError(f"--resume {resume}: no such checkpoint file or directory.")
        return str(resume)
    pointer = Path(work_dir) / LAST_CHECKPOINT
    if not pointer.is_file():
        raise ConfigError(
            f"--resume: nothing to resume in {work_dir} (no {LAST_CHECKPOINT} file); train without --resume, "
            "or pass --work-dir of the run to continue, or --resume PATH."
        )
    target = pointer.read_text().strip()
    if not Path(target).exists():
        raise ConfigError(f"--resume: {pointer} points to {target}, which does not exist.")
    return target


class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` made safe against a kill at any moment.

    mmengine deletes the oldest checkpoint *before* writing the new one and writes into the
    final name, so a run killed mid-save can leave ``last_checkpoint`` pointing at a deleted or
    half-written file. Here each checkpoint (a file, or a DeepSpeed directory) is written under a
    temporary name and renamed into place, ``last_checkpoint`` is replaced atomically, and only
    then are old checkpoints removed.
    """

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        filename = self.filename_tmpl.format(step)
        final = Path(self.out_dir) / filename
        temporary = final.with_name(f".{filename}.tmp")
        if is_main_process():  # left by a run killed mid-save
            remove(temporary)
        barrier()
        self.last_ckpt = str(final)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            temporary.name,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            **self.args,
        )
        barrier()  # every rank has written its DeepSpeed shards
        if is_main_process():
            move_into_place(temporary, final)
            write_atomically(Path(runner.work_dir) / LAST_CHECKPOINT, lambda pointer: pointer.write_text(str(final)))
        barrier()
        self._remove_old(runner, step)

    def _remove_old(self, runner: Any, step: int) -> None:
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:  # a bounded deque: the oldest goes on append
            old = Path(self.out_dir) / self.filename_tmpl.format(self.keep_ckpt_ids[0])
            if is_main_process():
                remove(old)
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))


class RngStateHook(Hook):
    """Saves every rank's RNG streams (torch, CUDA, numpy, random) and restores them on resume.

    Dropout (LoRA's included) draws from these streams, so without them a resumed run's losses
    drift from the uninterrupted run's. They are restored just before the first resumed
    iteration, after mmengine has skipped the batches already trained (the skip itself may
    draw from the torch stream when it starts a new epoch).
    """

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def _capture() -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(),
            "random": random.getstate(),
        }

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint["rng_states"] = all_gather_object(self._capture())  # every rank takes part

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states and get_rank() < len(states):
            self._pending = states[get_rank()]

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["torch"])
        if self._pending["cuda"]:
            torch.cuda.set_rng_state_all(self._pending["cuda"])
        np.random.set_state(self._pending["numpy"])
        random.setstate(self._pending["random"])
        self._pending = None
