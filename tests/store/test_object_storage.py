"""Latent datasets, sources and indexes on object storage (``s3://`` against a local moto
server, see conftest.py) and at ``file://`` URIs: embed, open_latents, index, search, the
CLI, and the one-line errors of bad URIs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
from sample_images import expected_vectors, make_images

import embedkit
from embedkit import InputError, open_latents
from embedkit.cli import main
from embedkit.index import build_index, load_index
from embedkit.index.search import clear_index_cache, neighbors
from embedkit.index.update import update_index
from embedkit.location import RemotePath, locate
from embedkit.store.lock import ObjectLock


def run(source, out, **kwargs) -> embedkit.EmbedResult:
    return embedkit.embed(source, "pixels", out, **{"num_workers": 0, "progress": False, **kwargs})


def by_id(latents) -> dict[str, np.ndarray]:
    ds = open_latents(latents)
    return dict(zip(ds.ids().tolist(), ds.to_numpy(), strict=True))


def objects(uri: str) -> list[str]:
    """Every object below ``uri``, relative to it."""
    where = locate(uri)
    return [name for name, _ in where.walk_files()]


def upload(local: Path, uri: str) -> None:
    where = locate(uri)
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_bytes(local.read_bytes())


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMBEDKIT_CACHE_DIR", str(tmp_path / "cache"))
    clear_index_cache()
    yield
    clear_index_cache()


def test_embed_to_s3_reads_back_like_a_local_folder(s3_bucket: str, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", 6)
    uri = f"{s3_bucket}/latents"

    result = run(tmp_path / "imgs", uri, rows_per_part=4, batch_size=2)
    run(tmp_path / "imgs", tmp_path / "local", rows_per_part=4, batch_size=2)

    assert (str(result.path), result.embedded, result.errors) == (uri, 6, 0)
    ds = open_latents(uri)
    assert isinstance(ds.path, RemotePath) and repr(ds).startswith(f"<LatentDataset {uri} rows=6")
    assert all(f.name.startswith("part-0000") and f.name.endswith(".parquet") for f in ds.files)
    assert len(ds.files) == 2 and len(ds) == 6
    assert ds.ids().tolist() == open_latents(tmp_path / "local").ids().tolist()
    np.testing.assert_array_equal(ds.to_numpy(), open_latents(tmp_path / "local").to_numpy())
    np.testing.assert_array_equal(
        np.stack([by_id(uri)[p.name] for p in paths]), expected_vectors(paths)
    )
    batches = list(ds.iter_batches(batch_size=4))
    assert sum(len(b.ids) for b in batches) == 6
    one = ds.filter(id=paths[2].name)
    assert len(one) == 1 and one.to_numpy().shape == (1, ds.dim)
    np.testing.assert_array_equal(ds.vectors_of([paths[3].name]), expected_vectors(paths[3:4]))
    assert len(ds.fingerprint()) == 16
    # nothing but complete parts: no staged object left, the lock released
    assert not [name for name in objects(uri) if name.startswith(".") or "/." in name]
    assert not [name for name in objects(uri) if name.endswith(".lock")]


def test_sources_on_s3_folder_and_table_with_a_corrupt_image(
    s3_bucket: str, tmp_path: Path
) -> None:
    paths = make_images(tmp_path / "imgs", 4)
    for path in paths:
        upload(path, f"{s3_bucket}/photos/{path.name}")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    upload(bad, f"{s3_bucket}/photos/sub/bad.png")
    table = pd.DataFrame({"path": [f"photos/{p.name}" for p in paths], "label": list("abab")})
    table.to_parquet(tmp_path / "table.parquet")
    upload(tmp_path / "table.parquet", f"{s3_bucket}/table.parquet")

    rows = embedkit.read_source(f"{s3_bucket}/photos/")
    assert rows["id"].tolist() == [p.name for p in paths] + ["sub/bad.png"]
    assert rows["path"].iloc[0] == f"{s3_bucket}/photos/{paths[0].name}"
    result = run(f"{s3_bucket}/photos", f"{s3_bucket}/from-folder", num_workers=1)
    assert (result.embedded, result.errors) == (4, 1)
    errors = open_latents(f"{s3_bucket}/from-folder").errors()
    assert errors["source"].tolist() == [f"{s3_bucket}/photos/sub/bad.png"]
    np.testing.assert_array_equal(
        np.stack([by_id(f"{s3_bucket}/from-folder")[p.name] for p in paths]),
        expected_vectors(paths),
    )

    run(f"{s3_bucket}/table.parquet", f"{s3_bucket}/from-table")
    frame = open_latents(f"{s3_bucket}/from-table").to_pandas(embedding=False)
    assert frame["id"].tolist() == [f"photos/{p.name}" for p in paths]
    assert frame["label"].tolist() == list("abab")
    assert frame["source"].iloc[0] == f"{s3_bucket}/photos/{paths[0].name}"


def test_resume_after_an_interrupted_run_and_the_lock(s3_bucket: str, tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 3)
    uri = f"{s3_bucket}/latents"
    run(tmp_path / "imgs", uri)
    # a killed run leaves a staged part and a lock whose heartbeat stopped long ago
    locate(f"{uri}/.part-00001-dead.tmp").write_bytes(b"half a part")
    stale = {"owner": "host gone pid 1", "token": "x", "heartbeat": time.time() - 3600}
    locate(f"{uri}/.embedkit/writer.lock").write_text(json.dumps(stale))
    make_images(tmp_path / "imgs", 2, start=3)

    result = run(tmp_path / "imgs", uri)

    assert (result.embedded, result.skipped) == (2, 3)
    assert len(open_latents(uri)) == 5
    assert ".part-00001-dead.tmp" not in objects(uri)
    held = rf"^another embed is writing to {uri} \(host "
    with ObjectLock(locate(uri)), pytest.raises(InputError, match=held):  # a live run's lock
        run(tmp_path / "imgs", uri)
    with pytest.raises(InputError, match="another latent space"):  # refused: lock released
        run(tmp_path / "imgs", uri, backbone_options={"size": 4})
    assert run(tmp_path / "imgs", uri).skipped == 5
    make_images(tmp_path / "imgs", 1, start=1, size=40)  # img_0001.png changed on disk
    result = run(tmp_path / "imgs", uri, update=True)  # its part rewritten on the store
    assert (result.replaced, result.embedded, len(open_latents(uri))) == (1, 1, 5)


def test_options_in_the_uri_query(
    s3_bucket: str, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_images(tmp_path / "imgs", 2)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    host = s3_endpoint.removeprefix("http://")
    uri = f"{s3_bucket}/latents?endpoint_override={host}&scheme=http"

    result = run(tmp_path / "imgs", uri)

    assert str(result.path) == f"{s3_bucket}/latents"  # shown without its query
    assert len(open_latents(uri)) == 2


def test_index_and_search_on_s3_with_stale_and_damaged_indexes(
    s3_bucket: str, tmp_path: Path
) -> None:
    make_images(tmp_path / "imgs", 12)
    uri = f"{s3_bucket}/latents"
    run(tmp_path / "imgs", uri)
    run(tmp_path / "imgs", tmp_path / "local")

    built = build_index(uri, kind="flat", progress=False)
    assert str(built.path) == f"{uri}/index"
    assert {"index/index.json", "index/index.faiss", "index/ids.parquet"} <= set(objects(uri))
    loaded = load_index(uri, mmap=True)
    assert loaded.ntotal == 12
    copies = list((tmp_path / "cache" / "indexes").glob("*/*"))  # read from a local copy
    assert sorted(p.name for p in copies) == ["ids.parquet", "index.faiss"]
    ids = ["img_0000.png", "img_0005.png"]
    hits = neighbors(uri, ids=ids, k=3)
    build_index(tmp_path / "local", kind="flat", progress=False)
    want = neighbors(tmp_path / "local", ids=ids, k=3)
    assert hits[["query", "id"]].values.tolist() == want[["query", "id"]].values.tolist()

    make_images(tmp_path / "imgs", 1, start=12)
    run(tmp_path / "imgs", uri)  # a new part: the saved index is stale
    with pytest.raises(InputError, match=r"^the index in s3://.*/latents/index is stale: 1 part"):
        load_index(uri)
    updated = update_index(uri)  # in place: the new files beside the old, then index.json
    assert (updated.info.update["action"], updated.ntotal) == ("update", 13)
    assert load_index(uri).ntotal == 13
    assert len([name for name in objects(uri) if name.endswith(".faiss")]) == 1
    build_index(uri, kind="flat", progress=False)
    locate(f"{uri}/index/index.faiss").write_bytes(b"not an index at all")
    with pytest.raises(
        InputError, match=rf"^the index file {uri}/index/index.faiss does not match"
    ):
        load_index(uri)


def test_bad_uris_are_one_line_errors(s3_bucket: str, tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 1)
    missing = "s3://no-such-bucket-embedkit/latents"
    with pytest.raises(InputError, match=f"^latent dataset {missing} does not exist"):
        open_latents(missing)
    with pytest.raises(InputError, match=r"^cannot open nosuch://x \(.*\); use a URI pyarrow"):
        open_latents("nosuch://x/latents")
    with pytest.raises(InputError, match=f"^{missing}: Bucket .* not found.*; check the URI"):
        run(tmp_path / "imgs", missing)
    with pytest.raises(InputError, match=f"^source {s3_bucket}/nothing does not exist"):
        embedkit.read_source(f"{s3_bucket}/nothing/")


def test_cli_embed_index_search_on_s3(
    s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_images(tmp_path / "imgs", 5)
    uri = f"{s3_bucket}/latents"

    main(["embed", str(tmp_path / "imgs"), "-b", "pixels", "-o", uri, "--workers", "0"])
    main(["index", uri, "--kind", "flat", "--no-gpu"])
    capsys.readouterr()
    main(["search", uri, "--id", "img_0001.png", "-k", "2", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert [row["query"] for row in rows] == ["img_0001.png"] * 2
    with pytest.raises(SystemExit) as stopped:
        main(["search", "s3://no-such-bucket-embedkit/x", "--id", "a"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: latent dataset s3://no-such-bucket-embedkit/x does not exist; "
                   "create it with `embedkit embed`"]  # fmt: skip


def test_file_uri_is_a_local_folder(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 2)
    uri = (tmp_path / "latents").as_uri()

    result = run((tmp_path / "imgs").as_uri(), uri)

    assert result.path == tmp_path / "latents"
    assert len(open_latents(uri)) == 2 and open_latents(tmp_path / "latents").ids().size == 2
    assert isinstance(pafs.FileSystem.from_uri(uri)[0], pafs.LocalFileSystem)  # as pyarrow sees it


@pytest.fixture
def ray_for_s3(s3_bucket: str):
    """A local Ray started after the S3 variables are set, so its workers see them (on a
    real cluster every node has its own credentials); shut down after the test."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'embedkit[ray]'")
    pytest.importorskip("ray.data")
    assert not ray.is_initialized(), "another test left Ray running"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
def test_ray_workers_write_parts_to_s3_and_build_the_index_there(
    s3_bucket: str, ray_for_s3, tmp_path: Path
) -> None:
    """The Ray engine's part writers stage parts on S3 and the driver commits them (a
    move: each part appears whole); a sharded index build reads them back on Ray."""
    paths = make_images(tmp_path / "imgs", 40)
    uri = f"{s3_bucket}/ray-latents"
    result = embedkit.embed(tmp_path / "imgs", "pixels", uri, engine="ray", batch_size=8,
                            rows_per_part=10, progress=False)  # fmt: skip
    assert (result.embedded, result.errors) == (40, 0) and sum(result.rows_by_node.values()) == 40
    ds = open_latents(uri)
    assert len(ds) == 40 and len(ds.files) >= 2  # closed after 10 rows (whole batches)
    assert not [name for name in objects(uri) if name.rsplit("/", 1)[-1].startswith(".part-")]
    np.testing.assert_array_equal(
        np.stack([by_id(uri)[p.name] for p in paths]), expected_vectors(paths)
    )

    sharded = build_index(uri, kind="flat", engine="ray", shards=3, progress=False)
    local = build_index(uri, kind="flat", save=False, progress=False)
    assert sharded.info.sharding["shards"] == 3
    assert sharded.ids.tolist() == local.ids.tolist()
    hits = neighbors(uri, ids=[paths[0].name], k=3)
    assert (
        hits["id"].tolist() == neighbors(uri, ids=[paths[0].name], k=3, index=local)["id"].tolist()
    )
