"""Checkpoints: atomic saving, exact resume (RNG streams), ZeRO-3 aware weights, multi-stage loading.

Every checkpoint is read weights-only, so no file can run code when loaded (:mod:`vltool.engine.safe_load`).
"""

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.dist import all_gather_object, barrier, get_rank, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from torch import nn

from vltool.constants import RESUME_LATEST
from vltool.engine import safe_load  # also registers mmengine's weights-only local-file loader
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

    A DeepSpeed directory is consolidated from its ZeRO shards to fp32 (exact master weights,
    whatever the stage), so pretrain checkpoints from ZeRO-2 or ZeRO-3 runs both load. Both
    kinds load weights-only: a file that would run code is refused before anything in it runs.

    Raises:
        ConfigError: the path does not exist, holds no weights, is damaged, or holds something
            loading would have to run (one line naming the file).
    """
    path = Path(path)
    if path.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        safe_load.check_directory(path)
        try:
            with safe_load.weights_only_loading(path):  # DeepSpeed's reader asks for weights_only=False
                return dict(get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name))
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"{path}: not a DeepSpeed checkpoint directory ({err}).") from None
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist.")
    checkpoint = safe_load.load_file(path)
    weights = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"{path}: holds no model weights (expected a vltool checkpoint with a 'state_dict').")
    return weights


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
    names = {name for name, _ in vlm.named_parameters()}
    unexpected = [name for name in weights if name not in names]
    if unexpected:  # checked before anything is copied: a mismatched file leaves the model untouched
        raise ConfigError(f"{source}: unexpected keys {name_list(sorted(unexpected))}; {hint}")
    try:
        missing, _ = load_parameters(vlm, weights)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err} {hint}") from None
    return missing


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
    weights = {name.removeprefix(PREFIX): value for name, value in read_weights(path).items()}
    missing = load_checked(
        vlm,
        weights,
        f"pretrained_pth {path} does not fit this model",
        "check that the config builds the same projector/LoRA layout as the run that saved it.",
    )
    print_log(f"pretrained_pth {path}: loaded {len(weights)} tensors.", logger="current")
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
