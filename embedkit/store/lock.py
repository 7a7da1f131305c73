"""One writer at a time per latent dataset: a lock file inside the folder (``filelock``,
released by the OS when the holder dies) and the holder's pid, for the error message.

On object storage there is no lock a killed process releases, and no atomic "create if
absent" through ``pyarrow.fs``: :class:`ObjectLock` is an object naming its holder,
refreshed by a heartbeat while held and treated as abandoned once its heartbeat is
older than :data:`LOCK_TTL_SECONDS`. It refuses a second run that starts while the
first is alive (the usual mistake); two runs starting within the same second can still
both go ahead (see docs/storage.md).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from filelock import FileLock, Timeout

from embedkit.errors import InputError
from embedkit.location import RemotePath

__all__ = ["LOCK_TTL_SECONDS", "STATE_DIR", "DatasetLock", "LockHeld", "ObjectLock", "writer_lock"]

#: hidden folder of a dataset for its lock (and other state that is not data)
STATE_DIR = ".embedkit"
LOCK_FILE = "writer.lock"
PID_FILE = "writer.pid"
#: an object lock whose heartbeat is older than this is abandoned (its holder died)
LOCK_TTL_SECONDS = 120.0
HEARTBEAT_SECONDS = 30.0
#: after writing its lock object a run waits this long and reads it back: a run that
#: wrote its own in the meantime is seen, and one of the two gives way
SETTLE_SECONDS = 1.0


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


class LockHeld(InputError):
    """The object lock is held by a live run (the message names it)."""


class ObjectLock:
    """A lock on the dataset ``folder`` on object storage: the object
    ``folder/.embedkit/<name>`` holding its owner (host, pid), a token and a heartbeat
    time, rewritten every :data:`HEARTBEAT_SECONDS` by a thread while held."""

    def __init__(self, folder: RemotePath, name: str = LOCK_FILE):
        self.path = folder
        self.object = folder / STATE_DIR / name
        self.token = uuid.uuid4().hex
        self.owner = f"host {socket.gethostname()} pid {os.getpid()}"
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _holder(self) -> dict | None:
        try:
            held = json.loads(self.object.read_text())
        except (FileNotFoundError, ValueError):
            return None
        alive = time.time() - float(held.get("heartbeat", 0)) < LOCK_TTL_SECONDS
        return held if alive else None

    def _write(self) -> None:
        record = {"owner": self.owner, "token": self.token, "heartbeat": time.time()}
        self.object.write_text(json.dumps(record))

    def acquire(self, timeout: float = 0) -> ObjectLock:
        """Take the lock, waiting up to ``timeout`` seconds; :class:`LockHeld` if not."""
        deadline = time.monotonic() + timeout
        while True:
            held = self._holder()
            if held is None:
                self._write()
                time.sleep(SETTLE_SECONDS)
                held = self._holder()
                if held is not None and held.get("token") == self.token:
                    break
            if time.monotonic() >= deadline:
                who = held.get("owner", "unknown") if held else "unknown"
                raise LockHeld(
                    f"another embed is writing to {self.path} ({who}); wait for it to finish, "
                    f"or write to another folder (if it died, its lock {self.object} expires "
                    f"{LOCK_TTL_SECONDS:.0f}s after its last heartbeat)"
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="embedkit-lock")
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._write()
            except Exception:  # a failed beat: the next one may pass; expiry covers the rest
                continue

    def release(self) -> None:
        """Stop the heartbeat and delete the lock object if it is still ours."""
        if self._beat is None:
            return
        self._stop.set()
        self._beat.join()
        self._beat = None
        held = self._holder()
        if held is not None and held.get("token") == self.token:
            self.object.unlink(missing_ok=True)

    def __enter__(self) -> ObjectLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def writer_lock(path: Path | RemotePath) -> DatasetLock | ObjectLock:
    """The writer lock of the dataset at ``path``: a file lock, or an object lock."""
    return ObjectLock(path) if isinstance(path, RemotePath) else DatasetLock(path)
