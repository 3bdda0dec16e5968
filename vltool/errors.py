"""Errors a user can fix: the CLI prints their one-line message and exits non-zero."""


class VltoolError(Exception):
    """A problem with the user's input (file, sample, config, flag), not a bug in vltool.

    The message must say what is wrong, where (file, line, sample id) and what to do.
    """


class DatasetError(VltoolError):
    """A dataset file or sample that cannot be used."""


class ConfigError(VltoolError):
    """A config that cannot be found, loaded or built."""


class AnswerError(ConfigError):
    """One prompt of a batch that could not be answered (a server that refused it, say).

    Attributes:
        position: the prompt's index in its batch, so the caller can name the row.
    """

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


def user_message(error: VltoolError) -> str:
    """The one-line message of ``error``, also when it was raised in a PyTorch DataLoader worker.

    The DataLoader re-raises a worker's exception in the main process as the same type built
    from the worker's whole traceback text ("Caught DatasetError in DataLoader worker process
    0. Original Traceback ..."), which is no message for a user. The original message is that
    traceback's last line, after the exception's qualified name.
    """
    text = str(error)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    last = text.rstrip().splitlines()[-1]
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    return last[len(name) :] if last.startswith(name) else text
