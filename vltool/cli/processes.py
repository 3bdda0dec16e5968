"""Several processes for answering benchmarks: ``NPROC_PER_NODE=N`` relaunches under torchrun."""

import atexit
import sys


def start_processes() -> int:
    """Join the processes of this command and return this process's rank (0 when alone).

    With ``NPROC_PER_NODE`` set the command reruns under torchrun and this parent exits with its
    code; under torchrun each process joins the process group.
    """
    from vltool.engine.launch import init_distributed, relaunch_if_requested, under_torchrun

    relaunch_if_requested(sys.argv[1:])
    if not under_torchrun():
        return 0
    import torch.distributed as dist

    init_distributed("pytorch")
    atexit.register(dist.destroy_process_group)  # a clean exit, without torch's warning about a leaked group
    return dist.get_rank()
