"""Errors users see as one line: each says what was expected, what was found and where."""


class VGMError(Exception):
    """Base class: the command-line tools print ``str(error)`` and exit non-zero."""

    exit_code = 1


class InputError(VGMError, ValueError):
    """Bad user data: a missing path or column, a non-numeric column, inf values, a corrupt file."""

    exit_code = 2


class ModelFileError(VGMError, ValueError):
    """A model file that is not valid JSON, has the wrong layout, or holds impossible parameters."""

    exit_code = 2


class OutputError(VGMError):
    """The output cannot be written: it exists without --overwrite, or the place is unwritable."""

    exit_code = 2


class NotFittedError(VGMError, AttributeError):
    """A model was used before ``fit`` (mirrors sklearn.exceptions.NotFittedError)."""


class BackendUnavailableError(VGMError, RuntimeError):
    """The requested backend cannot run here (for example ``--backend gpu`` without a GPU)."""

    exit_code = 3


class PoorFitWarning(UserWarning):
    """A mixture that describes its sample poorly (encoding stays lossless)."""


def shorten(values, limit=5):
    """``[1, 2, 3, 4, 5, 6, 7]`` -> ``"1, 2, 3, 4, 5 + 2 more"`` for error messages."""
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f" + {len(values) - limit} more" if len(values) > limit else "")


def first_line(exc):
    """An exception's first line: library errors can span several."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
