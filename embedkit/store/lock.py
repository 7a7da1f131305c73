"""One writer at a time per latent dataset: a lock file inside the folder (``filelock``,
released by the OS when the holder dies) and the holder's pid, for the error message."""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from embedkit.errors import InputError

__all__ = ["STATE_DIR", "DatasetLock"]

#: hidden folder of a dataset for its lock (and other state that is not data)
STATE_DIR = ".embedkit"
LOCK_FILE = "writer.lock"
PID_FILE = "writer.pid"


class DatasetLock:
    """An exclusive, non-blocking lock on the latent dataset folder ``path``.

    A second writer — another process, or another writer in this one — is refused at
    once with a one-line error naming the folder and the pid holding it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        state = self.path / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        self._pid_file = state / PID_FILE
        # each DatasetLock owns its lock: two in one process must exclude each other too
        self._lock = FileLock(state / LOCK_FILE, is_singleton=False)

    def acquire(self) -> DatasetLock:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise InputError(
                f"another embed is writing to {self.path} (pid {self._holder()}); wait for it "
                "to finish, or write to another folder"
            ) from None
        self._pid_file.write_text(str(os.getpid()))
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    def _holder(self) -> str:
        try:
            return self._pid_file.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def __enter__(self) -> DatasetLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
