"""One command at a time per results folder: an `fcntl.flock` on `<folder>/.lock`.

`normrepro.plan` takes the lock of the folder a pipeline writes (e.g. `results/convnext/smoke/`)
before it writes anything there and hands the locked file descriptor down to the make it starts,
so the lock lasts exactly as long as that make (and is released by the kernel if it dies). A
second command for the same folder refuses with the holder's pid, command and start time.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from normrepro.errors import BusyError

LOCK_NAME = ".lock"


class FolderLock:
    """An exclusive, non-blocking lock on `folder`; `fd` stays open (and locked) until close()."""

    def __init__(self, folder: str | Path, what: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise BusyError(f"{self.folder} is in use by another command ({holder}); wait for it "
                            "to finish (or stop it), then run this one again") from None
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, `{self.what}`, since {started}\n".encode(), 0)
        self.fd = fd
        return self

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.close()
