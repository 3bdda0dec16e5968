"""What reaches the terminal: vltool's own lines, not its libraries' notices about themselves.

Left alone, the libraries vltool runs on print lines of their own on every command that no user
can act on: bitsandbytes that it could not fetch a faster CPU kernel, DeepSpeed that it picked
the CPU, mmengine that it set ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, PyTorch that an argument
mmengine passes is deprecated, transformers a 200-line report of the text-model weights a CLIP
vision tower does not use. :func:`configure` decides once, when the command line starts and
before any of these libraries is imported (commands import them lazily), what they may print:

- transformers: errors only (``TRANSFORMERS_VERBOSITY=error``, which ``transformers.utils.logging``
  reads when transformers first logs), except a model-loading report of weights that were not
  loaded (missing, mismatched): a model that would train from random weights is never silent.
- bitsandbytes: errors only (its loggers; it never sets their levels itself).
- DeepSpeed: ``DS_ACCELERATOR=cpu`` when there is no CUDA; DeepSpeed then takes the CPU without
  its "Setting accelerator to CPU" warning. With CUDA nothing is set and DeepSpeed finds it
  (it says so at INFO, below its WARNING level).
- Python warnings: only the few a library raises about its own defaults or its own use of
  another library, matched by module and message (:data:`NOISY_WARNINGS`), never by category.

Elsewhere: the configs name the PIL image-processor classes (transformers warns when a
torchvision-backed name falls back to PIL), mmengine's environment, config and hook order go to
the run's log file only (:mod:`vltool.engine.console`), and the torchrun relaunch sets
torchrun's ``OMP_NUM_THREADS`` default itself (:func:`vltool.engine.launch.relaunch_if_requested`).

The variables set here reach the processes vltool starts (torchrun's, DataLoader workers); a
variable the user has set is left as it is. With ``--debug`` nothing is changed and every
library prints what it would without vltool.
"""

import ctypes
import logging
import os
import sys
import warnings

QUIET_LOGGERS = ("bitsandbytes",)
NOISY_WARNINGS = (
    # mmengine sets these for each process of a distributed run and warns that it did
    (UserWarning, r"mmengine\.utils\.dl_utils\.setup_env", r"Setting (OMP|MKL)_NUM_THREADS environment variable"),
    # mmengine's DDP wrapper passes broadcast_buffers; the replacement behaves differently at init
    (FutureWarning, r"mmengine\.model\.wrappers\.distributed", r"`broadcast_buffers` is deprecated"),
)
LOAD_REPORT_LOGGER = "transformers.modeling_utils"
LOAD_PROBLEMS = ("MISSING", "MISMATCH", "CONVERSION")
"""Statuses in transformers' load report that mean weights were not loaded as saved."""


class LoadProblemsOnly(logging.Filter):
    """Passes a transformers load report that lists weights not loaded (and errors); drops other warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        return "LOAD REPORT" in message and any(status in message for status in LOAD_PROBLEMS)


_LOAD_PROBLEMS_ONLY = LoadProblemsOnly()


def configure(debug: bool) -> None:
    """Silence the libraries' notices about themselves, unless ``debug``; safe to call again."""
    if debug:
        from vltool.engine.console import show_runner_notices  # imports mmengine's runner: only for --debug

        show_runner_notices()
        return
    _quiet_transformers()
    if "DS_ACCELERATOR" not in os.environ and not cuda_driver_present():
        os.environ["DS_ACCELERATOR"] = "cpu"
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category, module, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def _quiet_transformers() -> None:
    # set by the user or by the vltool that started this process (torchrun's children inherit it)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if os.environ["TRANSFORMERS_VERBOSITY"] != "error":
        return  # the user's own level, also for the load report
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # already imported (vltool called from Python): it read the variable already
        hf_logging.set_verbosity_error()
    # the loader's own level, so its report passes the library's errors-only level
    load_report = logging.getLogger(LOAD_REPORT_LOGGER)
    load_report.setLevel(logging.WARNING)
    load_report.addFilter(_LOAD_PROBLEMS_ONLY)


def cuda_driver_present() -> bool:
    """Whether the CUDA driver library loads; without it torch has no CUDA, whatever its build.

    A stand-in for ``torch.cuda.is_available()``, which would cost every command a torch import
    (1.5-3 s on a small machine). It errs only towards "present" (a CPU-only torch on a GPU
    machine), and then DeepSpeed detects the accelerator itself and says what it found.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False
