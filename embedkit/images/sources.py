"""Image sources -> one table of rows: id, path and the carried columns.

A source may be a URI on object storage (``s3://bucket/photos/``, a table at
``s3://bucket/photos.parquet``), and a table's paths may be URIs: the ``path`` of such
rows is a URI, which :func:`~embedkit.images.decode.load_image` fetches.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from embedkit.errors import InputError
from embedkit.location import RemotePath, is_uri, locate

__all__ = ["IMAGE_EXTENSIONS", "Source", "read_source"]

#: column names the latent format owns: a table's columns of these names are not carried
RESERVED_COLUMNS = ("id", "path", "source", "embedding", "source_size", "source_mtime_ns")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
TABLE_SUFFIXES = {".parquet": pd.read_parquet, ".pq": pd.read_parquet, ".csv": pd.read_csv}
Source = str | os.PathLike | Sequence[str | os.PathLike] | pd.DataFrame


def _scan_folder(root: Path) -> pd.DataFrame:
    paths = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    return pd.DataFrame(
        {
            "id": [p.relative_to(root).as_posix() for p in paths],
            "path": [str(p) for p in paths],
        }
    )


def _scan_remote(root: RemotePath) -> pd.DataFrame:
    found = [
        rel
        for rel, _ in root.walk_files()
        if posixpath.splitext(rel)[1].lower() in IMAGE_EXTENSIONS
    ]
    return pd.DataFrame({"id": found, "path": [str(root / rel) for rel in found]})


def _read_table(file: Path | RemotePath) -> pd.DataFrame:
    reader = TABLE_SUFFIXES.get(file.suffix.lower())
    if reader is None:
        raise InputError(f"{file} is neither an image folder nor a .parquet/.csv table")
    try:
        if isinstance(file, RemotePath):
            return reader(io.BytesIO(file.read_bytes()))
        return reader(file)
    except Exception as exc:  # pandas/pyarrow raise many types; the message is what matters
        raise InputError(f"cannot read table {file}: {type(exc).__name__}: {exc}") from exc


def _absolute(raw: pd.Series, root: Path | RemotePath) -> list[str]:
    """Each path of a table as it is read: URIs and absolute paths as given, relative
    ones under the table's folder ``root``."""
    out = []
    for value in raw:
        if is_uri(value):
            out.append(value)
        elif isinstance(root, RemotePath) and not value.startswith("/"):
            out.append(str(root / posixpath.normpath(value)))
        else:
            path = Path(value)
            out.append(str(path if path.is_absolute() else root / path))
    return out


def _from_table(
    frame: pd.DataFrame,
    root: Path | RemotePath,
    where: str,
    path_column: str,
    id_column: str | None,
) -> pd.DataFrame:
    if path_column not in frame.columns:
        raise InputError(
            f"{where} has no path column {path_column!r}; columns are "
            f"{', '.join(map(str, frame.columns))}; pass --path-column NAME"
        )
    if id_column is not None and id_column not in frame.columns:
        raise InputError(
            f"{where} has no id column {id_column!r}; columns are "
            f"{', '.join(map(str, frame.columns))}"
        )
    frame = frame.reset_index(drop=True)
    empty = frame[path_column].isna() | (frame[path_column].astype(str).str.strip() == "")
    if empty.any():
        row = int(empty.to_numpy().nonzero()[0][0])
        raise InputError(
            f"{where} row {row}: column {path_column!r} is empty; every row needs an image path"
        )
    raw = frame[path_column].astype(str)
    absolute = _absolute(raw, root)
    if id_column is None and "id" in frame.columns and path_column != "id":
        id_column = "id"
    if id_column:
        missing = frame[id_column].isna() | (frame[id_column].astype(str).str.strip() == "")
        if missing.any():  # else the id would be NaN: the writer fails mid-run
            row = int(missing.to_numpy().nonzero()[0][0])
            raise InputError(f"{where} row {row}: column {id_column!r} is empty; ids are required")
    as_id = lambda p: p if is_uri(p) else Path(p).as_posix()  # noqa: E731
    ids = frame[id_column].astype(str) if id_column else raw.map(as_id)
    carried = frame.drop(columns=[c for c in (path_column, id_column) if c], errors="ignore")
    # Reserved names: an "id"/"path" column not chosen as id/path would duplicate ours.
    carried = carried.drop(columns=[c for c in RESERVED_COLUMNS if c in carried.columns])
    out = pd.DataFrame({"id": ids.to_numpy(), "path": absolute})
    return pd.concat([out, carried.reset_index(drop=True)], axis=1)


def _from_uris(paths: list[RemotePath]) -> pd.DataFrame:
    """Ids relative to the common folder of the paths (the URIs, across buckets)."""
    try:
        root = posixpath.commonpath([p.parent.inner for p in paths])
    except ValueError:
        root = ""
    ids = [posixpath.relpath(p.inner, root) if root else str(p) for p in paths]
    return pd.DataFrame({"id": ids, "path": [str(p) for p in paths]})


def _from_paths(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    located = [locate(p) for p in paths]
    remote = [p for p in located if isinstance(p, RemotePath)]
    if remote and len(remote) < len(located):
        raise InputError("a list of images must be all local paths or all URIs, not both")
    if remote:
        return _from_uris(remote)
    resolved = [Path(p).resolve() for p in paths]
    parents = [str(p.parent) for p in resolved]
    root = Path(os.path.commonpath(parents)) if parents else Path.cwd()
    return pd.DataFrame(
        {
            "id": [p.relative_to(root).as_posix() for p in resolved],
            "path": [str(p) for p in resolved],
        }
    )


def read_source(
    source: Source, path_column: str = "path", id_column: str | None = None
) -> pd.DataFrame:
    """Resolve any supported source to a DataFrame with ``id``, ``path`` and carried columns.

    Args:
        source: an image folder (recursive), a ``.parquet``/``.csv`` table with a path
            column, a list of image paths, or a pandas DataFrame with a path column; a
            folder, table or path may be a URI (``s3://bucket/photos/``).
        path_column: the column holding image paths (relative paths are resolved
            against the table's folder, or the working directory for a DataFrame).
        id_column: the column holding ids; default ``id`` when present, else the path
            (relative to the corpus root for folders and path lists).
    """
    if isinstance(source, pd.DataFrame):
        rows = _from_table(source, Path.cwd(), "DataFrame", path_column, id_column)
    elif isinstance(source, (str, os.PathLike)):
        path = locate(source)
        if not path.exists():
            raise InputError(f"source {path} does not exist; pass an image folder or a table")
        remote = isinstance(path, RemotePath)
        if path.is_dir():
            rows = _scan_remote(path) if remote else _scan_folder(path.resolve())
        else:
            root = path.parent if remote else path.resolve().parent
            rows = _from_table(_read_table(path), root, str(path), path_column, id_column)
    else:
        rows = _from_paths(list(source))
    if rows.empty:
        raise InputError(
            f"source {source if not isinstance(source, pd.DataFrame) else 'DataFrame'}"
            f" holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    duplicated = rows["id"].duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise InputError(f"duplicate id {rows['id'].iloc[row]!r} at row {row}; ids must be unique")
    return rows
