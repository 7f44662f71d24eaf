"""The one error path of every command line: known failures end in one line and exit status 2.

A known failure is something the user can fix without reading code: a bad config value, missing
or corrupt data, an unreadable checkpoint, a results folder that cannot be written or is in use.
Each is raised as a `UserError` (or one of the OS errors below) whose message names the file and
the fix. `cli` turns them into

    error: <message>

on stderr and exit status 2, with no traceback unless `NORMREPRO_DEBUG=1`. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Callable


class UserError(Exception):
    """A failure the user can fix; the message says which file and how."""


class ConfigError(UserError, ValueError):
    """A config file or override is missing, malformed or has a bad value."""


class DataError(UserError, ValueError):
    """Input data is missing, does not match its manifest, or is malformed."""


class CheckpointError(UserError):
    """A checkpoint or weights file cannot be read."""


class BusyError(UserError):
    """A results folder is in use by another command."""


def debug_enabled() -> bool:
    return os.environ.get("NORMREPRO_DEBUG", "").lower() in ("1", "true", "yes")


def describe_os_error(exc: OSError) -> str | None:
    """One line for the OS errors a user can fix (permissions, a full disk, a missing file)."""
    path = exc.filename or "a file"
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write or read {path}: {exc.strerror or 'permission denied'}; make it "
                f"writable (e.g. chmod -R u+w {os.path.dirname(str(path)) or '.'}) or run from a "
                "folder you own")
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}; free some space and rerun"
    if isinstance(exc, FileNotFoundError) and exc.filename is None and len(exc.args) == 1:
        return str(exc.args[0])  # raised with its own message (names the file and the fix)
    if isinstance(exc, FileNotFoundError):
        return f"{path} not found ({exc.strerror}); run the stage that makes it first (make does)"
    return None


def report(exc: BaseException) -> int | None:
    """Print the one-line message of a known failure and return 2; None for anything else."""
    if isinstance(exc, UserError):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = describe_os_error(exc)
    else:
        message = None
    if message is None:
        return None
    # One line: a message that grew several lines (e.g. a wrapped YAML error) is joined.
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"error: {line}", file=sys.stderr, flush=True)
    return 2


def cli(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a command's `main(argv)`: known failures print one line and return 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except (UserError, OSError) as exc:
            if debug_enabled():
                raise
            code = report(exc)
            if code is None:
                raise
            return code

    return wrapper
