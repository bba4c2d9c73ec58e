"""The one exception family of longmix: a fault of the input, settings or environment that the
user can fix. ``longmix.cli.main`` prints it as one line and exits with status 2; any other
exception is a bug and keeps its traceback."""

from __future__ import annotations

import importlib.util


class LongmixError(Exception):
    """Base of every error longmix raises on purpose; its message says what to do."""


class InputNotFoundError(LongmixError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class InvalidInputError(LongmixError, ValueError):
    """A value or file the user gave that cannot be used as it is."""


class MissingExtraError(LongmixError, ImportError):
    """An optional dependency (a ``longmix[EXTRA]``) that is not installed."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing, a broken module
        return False


def missing_extra(module: str | tuple[str, ...], extra: str, purpose: str) -> str | None:
    """One line naming the extra to install when ``module`` (or one of several) is missing, else
    None: usable as a settings ``check=`` so that the fault shows before any work."""
    modules = (module,) if isinstance(module, str) else module
    if all(_installed(name) for name in modules):
        return None
    return f"{purpose} needs the '{extra}' extra: pip install 'longmix[{extra}]'"


def require_extra(
    module: str | tuple[str, ...],
    extra: str,
    purpose: str,
    error: type[LongmixError] = MissingExtraError,
) -> None:
    """Raise ``error`` (one line naming the extra) unless ``module`` can be imported.

    Call it before the import it guards, where the optional dependency is first needed;
    ``error`` lets a package keep its own error class (``EvalError``, ``TrainError``)."""
    if problem := missing_extra(module, extra, purpose):
        raise error(problem)
