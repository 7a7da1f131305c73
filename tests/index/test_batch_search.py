"""Many queries at once: ids from a file or a folder of images, in chunks, into a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import embedkit
from embedkit.cli import cli
from embedkit.errors import InputError
from embedkit.index.batch_search import read_query_ids, search_many
from embedkit.index.search import neighbors
from embedkit.plugins.info import BackboneInfo
from embedkit.store.writer import write_latents


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    x = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("many") / "lat"
    return write_latents(path, [f"r{i}" for i in range(len(x))], x, BackboneInfo("t", dim=16))


def test_chunks_give_the_one_call_answer(latents: Path) -> None:
    ids = [f"r{i}" for i in range(0, 3000, 2)]  # 1500 queries: two chunks of 1024
    many = search_many(latents, ids=ids, k=5, chunk=1024)
    once = neighbors(latents, ids=ids, k=5)
    pd.testing.assert_frame_equal(many, once)


def test_id_files(tmp_path: Path) -> None:
    text = tmp_path / "ids.txt"
    text.write_text("# wanted\nr1\n\nr2\n")
    assert read_query_ids(text) == ["r1", "r2"]
    table = tmp_path / "ids.csv"
    pd.DataFrame({"id": ["r3", "r4"]}).to_csv(table, index=False)
    assert read_query_ids(table) == ["r3", "r4"]
    pd.DataFrame({"name": ["r3"]}).to_csv(table, index=False)
    with pytest.raises(InputError, match="no 'id' column"):
        read_query_ids(table)
    with pytest.raises(InputError, match="no id file"):
        read_query_ids(tmp_path / "missing.txt")


def test_cli_ids_from_writes_a_table(latents: Path, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(f"r{i}" for i in range(1100)))
    hits = tmp_path / "hits.parquet"
    args = ["search", str(latents), "--ids-from", str(ids), "-k", "3", "-o", str(hits)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "1,100 queries, 3,300 rows" in result.output
    table = pd.read_parquet(hits)
    assert len(table) == 3300 and table["query"].nunique() == 1100
    assert not (table["query"] == table["id"]).any()  # the query row itself is left out
    both = ["search", str(latents), "--ids-from", str(ids), "--id", "r1"]
    assert CliRunner().invoke(cli, both).exit_code != 0


def test_cli_images_from_a_folder(tmp_path: Path) -> None:
    from embedkit.images.corpus import make_shapes

    make_shapes(tmp_path / "shapes", n=40, size=32, seed=3)
    out = tmp_path / "lat"
    embedkit.embed(tmp_path / "shapes", "pixels", out, num_workers=0, progress=False)
    hits = tmp_path / "hits.csv"
    args = [
        "search",
        str(out),
        "--images-from",
        str(tmp_path / "shapes"),
        "-k",
        "1",
        "-o",
        str(hits),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(hits)
    assert len(table) == 40 and (table["score"] > 0.999).all()  # each image finds itself
    assert all(
        Path(q).name == Path(i).name for q, i in zip(table["query"], table["id"], strict=True)
    )
