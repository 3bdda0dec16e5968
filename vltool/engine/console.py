"""mmengine's start-up notices go to the run's log file, not the terminal.

Before the first iteration mmengine's runners log, at INFO, the machine's environment (~40
lines), the whole config (~130 lines for the demo) and the order of every hook (~80 lines),
plus a few notices about mmengine itself (deprecated file clients, a dataset without
``metainfo``). A user starting ``vltool train`` sees ~250 lines before the first loss. These
records still reach the log file (``work_dir/<timestamp>/<timestamp>.log``); a filter on the
runner logger's console handler keeps them off the terminal. Progress, loss, checkpoint and
vltool's own lines pass.

The runners below differ from mmengine's only in adding that filter where mmengine builds the
logger (``Runner.build_logger``; ``FlexibleRunner`` builds it with its strategy), which is
before the first of these records is logged. ``vltool --debug`` calls
:func:`show_runner_notices` to leave the console as mmengine set it.
"""

import logging
import re
from typing import Any

from mmengine._strategy import BaseStrategy
from mmengine.logging import MMLogger
from mmengine.runner import FlexibleRunner, Runner

# messages of mmengine's runner machinery, matched from their start
RUNNER_NOTICES = re.compile(
    "|".join(
        (
            r"Hooks will be executed in the following order",
            r"Distributed training is not used, all SyncBatchNorm",
            r"Dataset \w+ has no metainfo",
            r'"FileClient" will be deprecated',
            r'"HardDiskBackend" is the alias of "LocalBackend"',
        )
    )
)
_settings = {"console": False}


def is_runner_notice(record: logging.LogRecord) -> bool:
    """Whether ``record`` is one of mmengine's start-up notices (environment, config, hook order, ...)."""
    if record.funcName == "_log_env" and record.module in ("runner", "_flexible_runner"):
        return True  # the environment dump and the config: matched by where they come from, not their text
    return RUNNER_NOTICES.match(record.getMessage()) is not None


class FileOnly(logging.Filter):
    """Drops mmengine's start-up notices from the handler it is on (the console), nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_runner_notice(record)


def keep_notices_off_console(logger: MMLogger) -> MMLogger:
    """Put a :class:`FileOnly` filter on ``logger``'s console handler (once); its file handler keeps everything."""
    for handler in logger.handlers:
        # a FileHandler is a StreamHandler too: only the plain one writes to the terminal
        if type(handler) is logging.StreamHandler and not any(isinstance(f, FileOnly) for f in handler.filters):
            handler.addFilter(FileOnly())
    return logger


def show_runner_notices() -> None:
    """Let mmengine's start-up notices reach the terminal again (``vltool --debug``)."""
    _settings["console"] = True


class QuietRunner(Runner):
    """mmengine's ``Runner``, with its start-up notices in the log file only."""

    def build_logger(self, *args: Any, **kwargs: Any) -> MMLogger:
        logger = super().build_logger(*args, **kwargs)
        return logger if _settings["console"] else keep_notices_off_console(logger)


class QuietFlexibleRunner(FlexibleRunner):
    """mmengine's ``FlexibleRunner`` (DeepSpeed runs), with its start-up notices in the log file only."""

    def build_strategy(self, *args: Any, **kwargs: Any) -> BaseStrategy:
        strategy = super().build_strategy(*args, **kwargs)
        if not _settings["console"]:
            keep_notices_off_console(strategy.logger)
        return strategy
