"""Chaining training stages: a finetune recipe names its pretrain stage, vltool finds that run's checkpoint.

``pretrain_stage`` is the previous stage's config name (its run lives in ``work_dirs/<name>``)
or its work dir; the checkpoint is the one that run's ``last_checkpoint`` file names, whatever
its schedule was. ``pretrained_pth`` names a checkpoint explicitly and wins over it.
"""

from pathlib import Path

from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.logging import print_log

from vltool.engine.checkpoint import LAST_CHECKPOINT
from vltool.engine.config import shipped_configs
from vltool.errors import ConfigError

WORK_DIRS = Path("work_dirs")
"""Where ``vltool train NAME`` writes by default (relative to the current directory)."""


def pretrained_checkpoint(cfg: Config) -> str | None:
    """The previous stage's checkpoint to load before training: ``pretrained_pth``, else ``pretrain_stage``'s.

    Raises:
        ConfigError: the stage's run has saved no checkpoint (the message gives the command that
            makes one), or its ``last_checkpoint`` names a file that is gone.
    """
    if cfg.get("pretrained_pth"):
        return str(cfg.pretrained_pth)
    stage = cfg.get("pretrain_stage")
    if not stage:
        return None
    checkpoint = stage_checkpoint(str(stage))
    if is_main_process():  # every process resolves it; one says so
        print_log(f"pretrain_stage {stage}: its last checkpoint is {checkpoint}", logger="current")
    return str(checkpoint)


def stage_work_dir(stage: str) -> Path:
    """The work dir of ``stage``: a directory as given, else ``work_dirs/<config name>``."""
    path = Path(stage)
    if path.is_dir() or (path.suffix != ".py" and path.name not in shipped_configs() and len(path.parts) > 1):
        return path
    return WORK_DIRS / path.stem


def stage_checkpoint(stage: str) -> Path:
    """The checkpoint ``stage``'s run saved last (``<work dir>/last_checkpoint``).

    Raises:
        ConfigError: no ``last_checkpoint`` (the stage has not run, or ran elsewhere), or one
            naming a checkpoint that no longer exists.
    """
    work_dir = stage_work_dir(stage)
    pointer = work_dir / LAST_CHECKPOINT
    if not pointer.is_file():
        config = stage if work_dir == WORK_DIRS / Path(stage).stem else "PRETRAIN_CONFIG"
        command = f"vltool train {config}" + ("" if config == stage else f" --work-dir {work_dir}")
        raise ConfigError(
            f"pretrain_stage '{stage}': {pointer} does not exist, so that stage has saved no checkpoint. Run "
            f"`{command}` first, or set --cfg-options pretrain_stage=WORK_DIR (a run with another --work-dir) "
            "or pretrained_pth=PATH."
        )
    named = Path(pointer.read_text().strip())
    # mmengine writes the path as the run saw it; from another directory, look beside the pointer
    for candidate in (named, work_dir / named.name):
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"pretrain_stage '{stage}': {pointer} names {named}, which does not exist (removed or moved); "
        "set --cfg-options pretrained_pth=PATH to one that does."
    )
