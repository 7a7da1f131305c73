"""What the Ray tests compare: a dataset against the local engine's, row by row by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedkit import open_latents


def by_id(out: Path) -> pd.DataFrame:
    """Every column, sorted by id, the embedding as one ``[N, D]`` array in ``attrs``."""
    ds = open_latents(out)
    frame = ds.to_pandas(embedding=False)
    order = np.argsort(frame["id"].to_numpy())
    frame = frame.iloc[order].reset_index(drop=True)
    frame.attrs["vectors"] = ds.to_numpy()[order]
    return frame


def assert_same_dataset(out: Path, local_out: Path, n: int) -> None:
    """``n`` distinct ids, vectors (to 1e-5), sources, carried columns, schema and
    metadata all as in ``local_out``."""
    got, want = by_id(out), by_id(local_out)
    assert len(got) == len(set(got["id"])) == n
    assert got["id"].tolist() == want["id"].tolist()
    np.testing.assert_allclose(got.attrs["vectors"], want.attrs["vectors"], atol=1e-5, rtol=0)
    pd.testing.assert_frame_equal(got, want)  # source and every carried column
    ray_ds, local_ds = open_latents(out), open_latents(local_out)
    assert ray_ds.schema.remove_metadata() == local_ds.schema.remove_metadata()
    strip = {"created": ""}
    assert ray_ds.meta.__dict__ | strip == local_ds.meta.__dict__ | strip
