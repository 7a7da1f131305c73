"""The writer behind a thread: batches go through a bounded queue to a thread that turns
them into Parquet, so the next forward pass starts at once. Parquet encoding and file
writes release the GIL; the queue bounds the memory a slow disk can pile up."""

from __future__ import annotations

import queue
import threading
from typing import Any

from embedkit.store.writer import LatentWriter

__all__ = ["WriterThread"]

#: batches waiting for the writer at most: enough to ride out a slow row-group flush
QUEUE_DEPTH = 4


class WriterThread:
    """Feeds ``writer`` from a background thread; :meth:`finish` drains the queue and
    re-raises, in the caller, any error the writer met (also raised at the next call)."""

    def __init__(self, writer: LatentWriter, depth: int = QUEUE_DEPTH):
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedkit-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            method, args = item
            if self._error is None:  # after a failure, drain without writing
                try:
                    getattr(self.writer, method)(*args)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc

    def _put(self, method: str, args: tuple[Any, ...]) -> None:
        self._raise()
        self._queue.put((method, args))

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, *args: Any) -> None:
        """:meth:`LatentWriter.write`, in the background."""
        self._put("write", args)

    def write_errors(self, *args: Any) -> None:
        """:meth:`LatentWriter.write_errors`, in the background."""
        self._put("write_errors", args)

    def finish(self) -> None:
        """Write everything queued, stop the thread, raise the writer's error if any."""
        self._queue.put(None)
        self._thread.join()
        self._raise()
