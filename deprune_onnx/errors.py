"""User-facing errors.

Every problem a user can cause (a bad file, a bad option, a model we cannot handle) is raised as a
``DepruneError`` whose message is one line naming the file, node or option. The CLI turns it into that line on
stderr and exit code 2; anything else escaping is a bug in deprune-onnx, not in the user's input.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class DepruneError(Exception):
    """A problem with the user's input or options (exit code 2)."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        # One line, always: newlines from wrapped library messages would break scripts that grep stderr.
        super().__init__(" ".join(_own_message(str(message), type(self)).split()))


def _own_message(message: str, kind: type) -> str:
    """The error's own message. A DataLoader worker's error reaches the main process re-raised as the same type
    with the worker's whole traceback as its message ("Caught DepruneError in DataLoader worker process 0.
    Original Traceback ... deprune_onnx.errors.DepruneError: <message>"); keep what follows the class name."""
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    marker = f"{kind.__module__}.{kind.__qualname__}: "
    return message.rsplit(marker, 1)[1] if marker in message else message


class CheckFailed(DepruneError):
    """A comparison or verification ran and did not pass (exit code 1)."""

    exit_code = EXIT_CHECK_FAILED
