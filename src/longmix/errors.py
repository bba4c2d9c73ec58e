"""The one exception family of longmix: a fault of the input, settings or environment that the
user can fix. ``longmix.cli.main`` prints it as one line and exits with status 2; any other
exception is a bug and keeps its traceback."""


class LongmixError(Exception):
    """Base of every error longmix raises on purpose; its message says what to do."""


class InputNotFoundError(LongmixError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class InvalidInputError(LongmixError, ValueError):
    """A value or file the user gave that cannot be used as it is."""
