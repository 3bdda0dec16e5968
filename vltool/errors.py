"""Errors a user can fix: the CLI prints their one-line message and exits non-zero."""


class VltoolError(Exception):
    """A problem with the user's input (file, sample, config, flag), not a bug in vltool.

    The message must say what is wrong, where (file, line, sample id) and what to do.
    """


class DatasetError(VltoolError):
    """A dataset file or sample that cannot be used."""


class ConfigError(VltoolError):
    """A config that cannot be found, loaded or built."""
