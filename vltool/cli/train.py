"""``vltool train CONFIG``: one process, many (``NPROC_PER_NODE`` / torchrun / srun), with or without DeepSpeed."""

import sys

import typer

from vltool.cli.options import CFG_OPTIONS, collect_cfg_options
from vltool.constants import RESUME_LATEST


def expand_bare_resume(argv: list[str]) -> list[str]:
    """``--resume`` with no value (last, or followed by another option) -> ``--resume auto``.

    Typer has no optional-value options; XTuner users type a bare ``--resume``.
    """
    expanded = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            expanded[i] = f"--resume={RESUME_LATEST}"
    return expanded


def train(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="Config file, or the name of a shipped config (see list-cfg)."),
    work_dir: str = typer.Option(None, "--work-dir", help="Checkpoints and logs go here (default: work_dirs/NAME)."),
    deepspeed: str = typer.Option(
        None,
        "--deepspeed",
        help="DeepSpeed config: zero1, zero2, zero2_offload, zero3, zero3_offload, or a JSON file.",
    ),
    resume: str = typer.Option(
        None,
        "--resume",
        help="Continue from the work dir's latest checkpoint (--resume) or from a given one (--resume PATH).",
    ),
    launcher: str = typer.Option(
        None, "--launcher", help="none, pytorch or slurm (default: pytorch under torchrun, else none)."
    ),
    seed: int = typer.Option(None, "--seed", help="Random seed (overrides randomness.seed)."),
    cfg_options: list[str] = CFG_OPTIONS,
) -> None:
    """Train a model from a config: [bold]vltool train demo[/] runs the CPU demo.

    [bold]NPROC_PER_NODE=N[/] (with NNODES, NODE_RANK, ADDR, PORT for several nodes) reruns the
    command under torchrun in N processes per node.
    """
    from vltool.engine.launch import relaunch_if_requested

    relaunch_if_requested(sys.argv[1:])
    from vltool.engine.config import load_config  # heavy imports stay out of `vltool --help`
    from vltool.engine.runner import build_runner

    cfg = load_config(config, collect_cfg_options(cfg_options, ctx))
    if seed is not None:
        cfg.randomness.seed = seed
    build_runner(cfg, work_dir, deepspeed=deepspeed, resume=resume, launcher=launcher).train()
