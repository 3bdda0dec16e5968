"""Processes and nodes: relaunch under torchrun, read torchrun/slurm environments, start torch.distributed.

``NPROC_PER_NODE=N [NNODES=.. NODE_RANK=.. ADDR=.. PORT=..] vltool train ...`` (XTuner's variables)
relaunches the same command under ``torch.distributed.run``; running under ``torchrun`` directly is
detected from its environment, and ``--launcher slurm`` reads srun's. Every process then joins one
process group: NCCL when CUDA is available, gloo otherwise.
"""

import os
import socket
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from vltool.errors import ConfigError

LAUNCHERS = ("none", "pytorch", "slurm")
RELAUNCH_VARIABLES = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "ADDR", "PORT")


def free_port() -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or anything that sets its variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(argv: list[str], env: dict[str, str]) -> list[str] | None:
    """The torchrun command that reruns ``argv`` in ``NPROC_PER_NODE`` processes, or None.

    Args:
        argv: the vltool arguments after the program name (``["train", "demo", ...]``).
        env: the environment holding ``NPROC_PER_NODE`` and optionally ``NNODES``, ``NODE_RANK``,
            ``ADDR`` and ``PORT``. Without ``PORT`` a single-node run takes a random free port.

    Raises:
        ConfigError: a variable that is not a positive integer, or a multi-node run without
            ``ADDR`` and ``PORT`` (every node must name the same rendezvous).
    """
    if "NPROC_PER_NODE" not in env or under_torchrun():
        return None
    numbers = {}
    for name, default in (("NPROC_PER_NODE", None), ("NNODES", "1"), ("NODE_RANK", "0")):
        value = env.get(name, default)
        if value is None or not value.isdigit() or (name != "NODE_RANK" and int(value) < 1):
            raise ConfigError(f"{name}={value!r} must be a positive integer (e.g. NPROC_PER_NODE=8).")
        numbers[name] = int(value)
    if numbers["NODE_RANK"] >= numbers["NNODES"]:
        raise ConfigError(f"NODE_RANK={numbers['NODE_RANK']} must be below NNODES={numbers['NNODES']}.")
    if numbers["NNODES"] > 1 and not (env.get("ADDR") and env.get("PORT")):
        raise ConfigError("NNODES > 1 needs ADDR (the first node's address) and PORT set the same on every node.")
    if env.get("PORT") and not env["PORT"].isdigit():
        raise ConfigError(f"PORT={env['PORT']!r} must be a port number (e.g. PORT=29500).")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={numbers['NPROC_PER_NODE']}",
        f"--nnodes={numbers['NNODES']}",
        f"--node_rank={numbers['NODE_RANK']}",
        f"--master_addr={env.get('ADDR', '127.0.0.1')}",
        f"--master_port={env.get('PORT') or free_port()}",
        "-m",
        "vltool.cli.app",
        *argv,
    ]


def relaunch_if_requested(argv: list[str]) -> None:
    """Rerun this command under torchrun when ``NPROC_PER_NODE`` is set, and exit with its code.

    The children inherit this process's environment, with ``OMP_NUM_THREADS=1`` unless it is set:
    torchrun's own default for several processes per node, set here so that torchrun does not
    print a banner saying it set it.
    """
    env = dict(os.environ)
    command = torchrun_command(argv, env)
    if command is None:
        return
    if int(env["NPROC_PER_NODE"]) > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    # the children must not see NPROC_PER_NODE's request again: under_torchrun() stops the loop
    sys.exit(subprocess.call(command, env=env))


def slurm_environment(env: dict[str, str]) -> dict[str, str]:
    """torch.distributed's variables from srun's (``SLURM_PROCID``, ``SLURM_NTASKS``, ...).

    The first host of ``SLURM_NODELIST`` is the rendezvous address unless ``MASTER_ADDR`` is
    set; the port is ``PORT``, ``MASTER_PORT`` or 29500.

    Raises:
        ConfigError: not inside an srun step.
    """
    missing = [name for name in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST") if name not in env]
    if missing:
        raise ConfigError(f"--launcher slurm needs srun's variables ({', '.join(missing)} unset); start it with srun.")
    address = env.get("MASTER_ADDR")
    if not address:
        address = _first_slurm_host(env["SLURM_NODELIST"]) or "127.0.0.1"
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": address,
        "MASTER_PORT": env.get("PORT") or env.get("MASTER_PORT") or "29500",
    }


def _first_slurm_host(nodelist: str) -> str | None:
    """The first host name of a slurm node list (``node[01-04]`` -> ``node01``), or None without scontrol."""
    try:
        hosts = subprocess.run(["scontrol", "show", "hostname", nodelist], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return hosts.stdout.split()[0] if hosts.returncode == 0 and hosts.stdout.strip() else None


def resolve_launcher(launcher: str | None) -> str:
    """The launcher to use: the one asked for, else ``pytorch`` under torchrun, else ``none``."""
    if launcher is None:
        return "pytorch" if under_torchrun() else "none"
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}.")
    return launcher


def init_distributed(launcher: str, timeout_s: float = 1800.0, single_process: bool = False) -> None:
    """Join the process group for ``launcher`` (a no-op when already joined).

    Args:
        launcher: ``pytorch`` (torchrun's variables), ``slurm`` (srun's) or ``none``.
        timeout_s: collective timeout; dataset preparation has its own (``dataset_prepare_timeout``).
        single_process: with launcher ``none``, still form a world of one (DeepSpeed needs a
            process group even on one device).
    """
    if dist.is_initialized() or (launcher == "none" and not single_process):
        return
    if launcher == "slurm":
        os.environ.update(slurm_environment(dict(os.environ)))
    elif launcher == "none":
        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(name, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
