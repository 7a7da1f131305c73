"""Searches the explorer answers, as JSON-ready dicts: neighbours of an id, of an
uploaded image, of edited latents, and the 2-D map. All go through
:func:`embedkit.neighbors` with the index :meth:`ServeState.search_index` picks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from embedkit.index.search import neighbors
from embedkit.serve.responses import ApiError, jsonable, short
from embedkit.serve.upload import decode_upload

if TYPE_CHECKING:
    import pandas as pd

    from embedkit.serve.state import ServeState, Version

__all__ = ["map_payload", "nearest", "neighbor_payload", "query_payload", "result_rows"]


def result_rows(version: Version, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``{"id", "rank", "score" | "distance", "labels"}`` for each row of a
    :func:`embedkit.neighbors` frame, labels from the version's table."""
    if frame.empty:
        return []
    measure = "score" if "score" in frame.columns else "distance"
    ids = [str(i) for i in frame["id"].tolist()]
    rows = version.table.rows_in_order(ids)
    labels = version.table.labels_of(rows)
    values = frame[measure].to_numpy(dtype=np.float64)
    ranks = frame["rank"].to_numpy()
    return [
        {
            "id": id_,
            "rank": int(rank),
            measure: jsonable(round(float(value), 6)),
            "labels": label or {},
        }
        for id_, rank, value, label in zip(ids, ranks, values, labels, strict=True)
    ]


def _search(state: ServeState, version: Version, k: int, **query: Any) -> pd.DataFrame:
    return neighbors(version.ds, k=k, index=state.search_index(version), columns=[], **query)


def neighbor_payload(state: ServeState, id_: str, k: int) -> dict[str, Any]:
    """The ``k`` nearest neighbours of a stored id (404 when the dataset lacks it)."""
    version = state.current()
    version.row_of(id_)
    frame = _search(state, version, k, ids=[id_])
    return {"query": id_, "results": result_rows(version, frame)}


def nearest(state: ServeState, version: Version, vectors: np.ndarray, k: int) -> list[list[dict]]:
    """The ``k`` nearest stored latents of each vector: one result list per vector."""
    frame = _search(state, version, k, vectors=np.atleast_2d(vectors))
    found: list[list[dict]] = [[] for _ in range(len(np.atleast_2d(vectors)))]
    rows = result_rows(version, frame)
    for query, row in zip(frame["query"].tolist(), rows, strict=True):
        found[int(query)].append(row)
    return found


def query_payload(state: ServeState, data: bytes, k: int) -> dict[str, Any]:
    """Neighbours of an uploaded image, embedded with the dataset's backbone."""
    backbone = state.backbone()
    image = decode_upload(data, backbone.decode_size)
    vector = state.encode([image])
    version = state.current()
    if state.metric(version) == "l2" and version.ds.normalized:
        # the stored latents were normalized: a query must be too (cosine does it itself)
        vector = vector / np.maximum(np.linalg.norm(vector, axis=1, keepdims=True), 1e-12)
    return {"query": "upload", "results": nearest(state, version, vector, k)[0]}


def map_payload(
    state: ServeState, color: str | None, limit: int, method: str = "pca"
) -> dict[str, Any]:
    """Columnar 2-D coordinates (``method``: pca, umap, tsne) of (a sample of) the rows,
    with a column's values."""
    version = state.current()
    table = version.table
    if color and color not in table.labels:
        raise ApiError(
            400, f"no label column {short(color)}; columns: {', '.join(table.labels) or 'none'}"
        )
    frame = state.projection(version, limit, method)
    ids = [str(i) for i in frame["id"].tolist()]
    colors = None
    if color:
        rows = table.rows_in_order(ids)
        colors = [row[color] if row else None for row in table.labels_of(rows, [color])]
    return {
        "method": method,
        "ids": ids,
        "x": np.round(frame["x"].to_numpy(dtype=np.float64), 5).tolist(),
        "y": np.round(frame["y"].to_numpy(dtype=np.float64), 5).tolist(),
        "color": colors,
        "sampled": len(ids) < table.rows,
        "total": table.rows,
    }
