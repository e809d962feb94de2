"""Domain errors. The CLI turns every one of them into a one-line ``Error: ...``.

Each message says what is wrong, naming the file or option, and what to do
about it, so that a user never needs a traceback.
"""


class TransferError(Exception):
    """Base class for every error the user can act on."""


class ConfigError(TransferError):
    """An option has an invalid value or options contradict each other."""


class DataError(TransferError):
    """The dataset folder cannot be used as given."""


class WeightsError(TransferError):
    """Backbone weights cannot be found, downloaded or loaded."""


class RunError(TransferError):
    """A run folder or model artifact is missing, incomplete or would be overwritten."""


class TrainingError(TransferError):
    """Training went wrong in a way the settings can fix: the loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; the message says how to continue it. ``status``: the exit status."""

    def __init__(self, message: str, status: int = 130):
        super().__init__(message)
        self.status = status


class ImageError(TransferError):
    """One image file cannot be decoded; the message is the reason."""


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (TensorFlow's run to pages), or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
