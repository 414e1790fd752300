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
        super().__init__(" ".join(str(message).split()))


class CheckFailed(DepruneError):
    """A comparison or verification ran and did not pass (exit code 1)."""

    exit_code = EXIT_CHECK_FAILED
