"""Where a file or folder lives: a local path, or a URI on a ``pyarrow.fs`` file system
(``s3://``, ``gs://``, ``hdfs://``, ...) as a :class:`RemotePath`.

:func:`locate` turns what a user gives into a ``pathlib.Path`` (a local path, or a
``file://`` URI) or a :class:`RemotePath`, which offers the part of ``Path`` embedkit
uses (``/``, ``name``, ``glob``, ``stat``, ``is_dir``, ``mkdir``, ``unlink``, ``open``,
``read_text``, ...) through the file system, so code written for folders works on both.
A RemotePath shows as its URI without the query or credentials (it is what messages
print); it has no ``__fspath__``, so it can never be taken for a local path by mistake.

File systems are made once per scheme, authority and query, and the options of a URI
with a query (``?endpoint_override=...``) serve later URIs of the same bucket without
one (the paths of the images listed in it). Credentials and endpoints come from the
standard variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...), as for pyarrow.
pyarrow is imported on first use: ``import embedkit`` stays cheap.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

from embedkit.errors import InputError, first_line

__all__ = [
    "OBJECT_STORES",
    "RemotePath",
    "RemoteStat",
    "arrow_source",
    "file_stat",
    "is_remote",
    "is_uri",
    "locate",
    "location_key",
]

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
#: schemes whose objects appear whole when their upload completes (a PUT is atomic)
OBJECT_STORES = frozenset({"s3", "gs", "gcs"})
_filesystems: dict[tuple[str, str, str], tuple[Any, str]] = {}
_lock = threading.Lock()
T = TypeVar("T")


def is_uri(value: object) -> bool:
    """Whether ``value`` is a string with a scheme (``s3://...``, ``file://...``)."""
    return isinstance(value, str) and bool(_URI.match(value))


def is_remote(path: object) -> bool:
    """Whether ``path`` (a :func:`locate` result) is on a non-local file system."""
    return isinstance(path, RemotePath)


def _file_system(scheme: str, netloc: str, query: str) -> tuple[Any, str]:
    """The file system for ``scheme://netloc?query`` and the path of its root in it."""
    key = (scheme, netloc, query)
    with _lock:
        known = _filesystems.get(key) or (
            None if query else _filesystems.get((scheme, netloc, "*"))
        )
    if known is not None:
        return known
    import pyarrow.fs as pafs

    root = f"{scheme}://{netloc}/" + (f"?{query}" if query else "")
    shown = f"{scheme}://{netloc.rpartition('@')[2]}"
    try:
        made = pafs.FileSystem.from_uri(root)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(
            f"cannot open {shown} ({first_line(exc)}); use a URI pyarrow.fs understands "
            "(s3://bucket/path, gs://bucket/path, hdfs://host/path) or a local path"
        ) from None
    with _lock:
        _filesystems[key] = made
        if query:  # later URIs of this bucket without options get these
            _filesystems.setdefault((scheme, netloc, "*"), made)
    return made


def locate(path: str | os.PathLike | RemotePath) -> Path | RemotePath:
    """A local ``Path`` (``file://`` URIs too), or a :class:`RemotePath` for a URI."""
    if isinstance(path, RemotePath):
        return path
    if not is_uri(path):
        return Path(path)
    parts = urlsplit(path)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return Path(unquote(parts.path))
    filesystem, root = _file_system(scheme, parts.netloc, parts.query)
    inner = unquote(parts.path).rstrip("/")
    host = parts.netloc.rpartition("@")[2]  # never show credentials
    return RemotePath(f"{scheme}://{host}{inner}", filesystem, root.rstrip("/") + inner)


def location_key(path: str | os.PathLike | RemotePath) -> str:
    """A string naming ``path`` the same way wherever it is given from (a cache key)."""
    found = locate(path)
    return str(found) if isinstance(found, RemotePath) else os.path.abspath(found)


def arrow_source(path: str | os.PathLike | RemotePath) -> tuple[str, Any]:
    """``(path, filesystem)`` to hand pyarrow: the filesystem None for a local path."""
    found = locate(path)
    if isinstance(found, RemotePath):
        return found.inner, found.filesystem
    return str(found), None


class RemoteStat(NamedTuple):
    """What ``stat`` gives for an object: no inode or change time on object storage."""

    st_size: int
    st_mtime_ns: int
    st_ino: int = 0
    st_dev: int = 0

    @property
    def st_ctime_ns(self) -> int:
        """The end of the modification time's second: the latest the object may have
        changed (S3 keeps whole seconds), for checks that trust only settled files."""
        return self.st_mtime_ns + 999_999_999

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9


def file_stat(path: str | os.PathLike | RemotePath) -> os.stat_result | RemoteStat:
    """``os.stat`` of a local file, or the size and modification time of a remote one."""
    found = locate(path)
    return found.stat() if isinstance(found, RemotePath) else os.stat(found)


class RemotePath:
    """A file or folder on a ``pyarrow.fs`` file system, shown as its URI.

    ``filesystem`` is the pyarrow file system, ``inner`` the path in it
    (``bucket/folder/file`` on S3). Errors of the file system other than a missing file
    become an :class:`InputError` naming the URI."""

    __slots__ = ("filesystem", "inner", "uri")

    def __init__(self, uri: str, filesystem: Any, inner: str):
        self.uri, self.filesystem, self.inner = uri, filesystem, inner

    # -- names ----------------------------------------------------------------
    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"RemotePath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.uri, self.inner) == (other.uri, other.inner)

    def __hash__(self) -> int:
        return hash((self.uri, self.inner))

    def __lt__(self, other: RemotePath) -> bool:
        return self.uri < other.uri

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(f"{self.uri}/{name}", self.filesystem, f"{self.inner}/{name}")

    @property
    def name(self) -> str:
        return posixpath.basename(self.inner)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(
            self.uri.rsplit("/", 1)[0], self.filesystem, posixpath.dirname(self.inner)
        )

    @property
    def atomic_put(self) -> bool:
        """Whether a written object appears only once complete (object stores)."""
        return self.uri.split("://", 1)[0] in OBJECT_STORES

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    # -- queries --------------------------------------------------------------
    def _checked(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            said = first_line(exc, 300).rstrip(".")
            raise InputError(
                f"{self.uri}: {said}; check the URI, that the bucket exists and your "
                "credentials (AWS_ACCESS_KEY_ID, ... as pyarrow.fs reads them)"
            ) from None

    def _info(self) -> Any:
        return self._checked(lambda: self.filesystem.get_file_info(self.inner))

    def exists(self) -> bool:
        return self._info().type.name != "NotFound"

    def is_dir(self) -> bool:
        return self._info().type.name == "Directory"

    def is_file(self) -> bool:
        return self._info().type.name == "File"

    def stat(self) -> RemoteStat:
        info = self._info()
        if info.type.name != "File":
            raise FileNotFoundError(f"{self.uri} is not a file")
        return RemoteStat(int(info.size), int(info.mtime_ns or 0))

    def _listing(self, recursive: bool) -> list[Any]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.inner, allow_not_found=True, recursive=recursive)
        return self._checked(lambda: self.filesystem.get_file_info(selector))

    def iterdir(self) -> Iterator[RemotePath]:
        return iter(sorted(self / posixpath.basename(i.path) for i in self._listing(False)))

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """The entries of this folder whose name matches ``pattern`` (no subfolders)."""
        return (p for p in self.iterdir() if fnmatch.fnmatch(p.name, pattern))

    def walk_files(self) -> list[tuple[str, RemoteStat]]:
        """``(path relative to this folder, stat)`` of every file below it, sorted."""
        start = len(self.inner.rstrip("/")) + 1
        found = [
            (i.path[start:], RemoteStat(int(i.size), int(i.mtime_ns or 0)))
            for i in self._listing(True)
            if i.type.name == "File"
        ]
        return sorted(found)

    # -- changes --------------------------------------------------------------
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self._checked(lambda: self.filesystem.create_dir(self.inner, recursive=True))

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        self._checked(lambda: self.filesystem.delete_file(self.inner))

    def replace(self, target: RemotePath) -> RemotePath:
        """Move onto ``target`` (on object storage a copy then a delete: the target
        appears whole, at once)."""
        self._checked(lambda: self.filesystem.move(self.inner, target.inner))
        return target

    def open(self, mode: str = "rb") -> Any:
        """A pyarrow file: ``rb`` random access, ``wb`` an output stream."""
        if mode == "rb":
            return self._checked(lambda: self.filesystem.open_input_file(self.inner))
        if mode == "wb":
            return self._checked(lambda: self.filesystem.open_output_stream(self.inner))
        raise ValueError(f"mode {mode!r}: a RemotePath opens as 'rb' or 'wb'")

    def read_bytes(self) -> bytes:
        with self.open("rb") as handle:
            return self._checked(handle.read)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """Write ``data`` as one object (see :meth:`_appearing_whole`)."""
        with self._appearing_whole() as target, target.open("wb") as handle:
            self._checked(lambda: handle.write(data))

    @contextmanager
    def _appearing_whole(self) -> Iterator[RemotePath]:
        """Where to write this file so that it appears whole: here on an object store
        (a PUT is atomic), else a hidden sibling moved here once the block is done."""
        if self.atomic_put:
            yield self
            return
        target = self.with_name(f".{self.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.parent.mkdir(parents=True, exist_ok=True)
        yield target
        target.replace(self)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def upload(self, local: str | os.PathLike) -> None:
        """Copy the complete local file ``local`` here, appearing whole (see write_bytes)."""
        import pyarrow.fs as pafs

        local_fs = pafs.LocalFileSystem()
        with self._appearing_whole() as target:
            self._checked(
                lambda: pafs.copy_files(
                    os.fspath(local), target.inner, source_filesystem=local_fs,
                    destination_filesystem=self.filesystem,
                )
            )  # fmt: skip
