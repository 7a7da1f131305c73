"""Reading vectors at disk speed: the plain-page reader (``store/pages.py``,
``store/vectors.py``) against Arrow, and the vector cache (``store/cache.py``): never
stale, filtered views, float16, read-only folders, turned off, never written through."""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from embedkit.errors import InputError
from embedkit.plugins.info import BackboneInfo
from embedkit.store import cache as cache_module
from embedkit.store import dataset as dataset_module
from embedkit.store.cache import CACHE_ENV, cache_file, cache_mode, load_cache
from embedkit.store.dataset import open_latents
from embedkit.store.format import EMBEDDING, vectors_from_column
from embedkit.store.lock import STATE_DIR
from embedkit.store.pages import Extents, NotPlain
from embedkit.store.vectors import part_stats, read_vectors
from embedkit.store.writer import LatentWriter, write_latents

DIM = 8
INFO = BackboneInfo("toy", dim=DIM)


def vectors(n: int, seed: int = 0, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(dtype)


def ids_for(n: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def age(path: Path, seconds: float = 60.0) -> None:
    """Date the parts ``seconds`` back: a cache is only trusted when newer than every part
    (a part written in the same clock tick could change without changing its mtime)."""
    when = time.time_ns() - int(seconds * 1e9)
    for part in path.glob("part-*.parquet"):
        os.utime(part, ns=(when, when))


def caches(path: Path) -> list[str]:
    folder = path / STATE_DIR / "cache"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is a view of a memory-mapped file (the cache)."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base if isinstance(array.base, np.ndarray) else None
    return False


def arrow_vectors(path: Path) -> np.ndarray:
    """The vectors as Arrow decodes them: what the page reader must match."""
    table = pq.read_table(sorted(path.glob("part-*.parquet")), columns=[EMBEDDING])
    return vectors_from_column(table.column(EMBEDDING), DIM)


@pytest.fixture
def lat(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """40 rows over two parts (30 + 10), with a ``kind`` column, dated a minute back."""
    path = tmp_path / "lat"
    vecs = vectors(40)
    kinds = np.array(["a", "b", "c", "d"])[np.arange(40) % 4]

    write_latents(path, ids_for(30), vecs[:30], INFO, columns={"kind": kinds[:30]})
    write_latents(path, ids_for(10, "s"), vecs[30:], INFO, columns={"kind": kinds[30:]})
    age(path)
    return path, vecs


@pytest.fixture(autouse=True)
def default_setting(monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)


# -- the page reader --------------------------------------------------------------


def rewrite_parts(path: Path, **options) -> None:
    """Rewrite every part with pyarrow ``options`` (other page sizes, page versions,
    compression...), keeping the rows and the embedkit metadata."""
    for part in sorted(path.glob("part-*.parquet")):
        table = pq.read_table(part)
        pq.write_table(table, part, **options)


PLAIN = {"compression": "none", "use_dictionary": False}


@pytest.mark.parametrize(
    "options",
    [
        {},  # as the writer wrote them
        {**PLAIN, "data_page_size": 1, "write_batch_size": 3},  # a page per vector
        {**PLAIN, "data_page_size": 1, "write_batch_size": 3, "data_page_version": "2.0"},
        {**PLAIN, "row_group_size": 7, "data_page_size": 64},
        {**PLAIN, "write_statistics": False},
    ],
    ids=["writer", "small-pages", "v2-pages", "row-groups", "no-statistics"],
)
def test_plain_pages_read_without_arrow(lat, options):
    path, vecs = lat
    if options:
        rewrite_parts(path, **options)
    read = read_vectors(part_stats(sorted(path.glob("part-*.parquet"))), DIM, "float32")
    assert not read.decoded  # every page was read straight from the file
    np.testing.assert_array_equal(read.vectors, vecs)
    np.testing.assert_array_equal(read.vectors, arrow_vectors(path))


def test_extents_read_rows_that_straddle_pages(tmp_path):
    """pyarrow starts pages at row boundaries; other writers need not."""
    values = np.arange(32, dtype=np.float32)
    counts = [5, 11, 3, 13]
    blob, offsets, at = b"", [], 0
    for count in counts:  # pages of values with junk (headers, levels) between them
        blob += b"junk!"
        offsets.append(len(blob))
        blob += values[at : at + count].tobytes()
        at += count
    (tmp_path / "pages").write_bytes(blob)
    extents = Extents(np.array(offsets), np.array(counts), 4)
    with open(tmp_path / "pages", "rb", buffering=0) as handle:
        for first, stop in [(0, 32), (8, 16), (3, 4), (5, 16), (16, 24), (4, 30), (31, 32)]:
            out = np.empty(stop - first, np.float32)
            extents.read(handle, first, stop, memoryview(out).cast("B"))
            np.testing.assert_array_equal(out, values[first:stop])


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "snappy"},
        {"compression": "zstd", "use_dictionary": False},
        {"compression": "none", "use_dictionary": True},  # pyarrow's own defaults, uncompressed
    ],
    ids=["snappy+dictionary", "zstd", "dictionary"],
)
def test_other_layouts_are_decoded_by_arrow(lat, options):
    path, vecs = lat
    rewrite_parts(path, **options)
    read = read_vectors(part_stats(sorted(path.glob("part-*.parquet"))), DIM, "float32")
    assert read.decoded
    np.testing.assert_array_equal(read.vectors, vecs)


@pytest.mark.parametrize("small_pages", [False, True])
def test_selected_rows_sparse_and_dense(lat, small_pages, monkeypatch):
    path, vecs = lat
    if small_pages:
        rewrite_parts(path, **PLAIN, data_page_size=1, write_batch_size=3, row_group_size=9)
    stats = part_stats(sorted(path.glob("part-*.parquet")))
    rng = np.random.default_rng(3)
    for rows in ([0], [39], [5, 6, 7, 29, 30, 31], np.sort(rng.choice(40, 25, replace=False))):
        rows = np.asarray(rows, dtype=np.int64)
        np.testing.assert_array_equal(read_vectors(stats, DIM, "float32", rows).vectors, vecs[rows])
    monkeypatch.setattr("embedkit.store.vectors.RUNS_PER_BLOCK", 1)  # every block read whole
    rows = np.arange(0, 40, 3)
    np.testing.assert_array_equal(read_vectors(stats, DIM, "float32", rows).vectors, vecs[rows])


def test_float16_plain_pages(tmp_path):
    vecs = vectors(20, dtype="float16")
    path = write_latents(tmp_path / "half", ids_for(20), vecs, INFO, dtype="float16")
    read = read_vectors(part_stats(sorted(path.glob("part-*.parquet"))), DIM, "float16")
    assert not read.decoded and read.vectors.dtype == np.float16
    np.testing.assert_array_equal(read.vectors, vecs)


def test_vectors_of_reads_only_their_rows(lat):
    path, vecs = lat
    ds = open_latents(path, cache=False)
    got = ds.vectors_of(["s0003", "r0001", "s0003", "r0029"])
    np.testing.assert_array_equal(got, vecs[[33, 1, 33, 29]])
    assert got.flags.writeable  # a new array, its own
    with pytest.raises(InputError, match="'nope' not found"):
        ds.vectors_of(["r0001", "nope"])
    red = ds.filter(kind="b")  # rows 1, 5, 9, ...
    np.testing.assert_array_equal(red.vectors_of(["r0005"]), vecs[[5]])
    with pytest.raises(InputError, match="'r0004' not found"):
        red.vectors_of(["r0004"])


def test_fingerprint_formula_unchanged(lat):
    """Saved indexes compare it: the digest of name:size:rows:mtime:inode per part."""
    path, _ = lat
    digest = hashlib.sha256()
    for f in sorted(path.glob("part-*.parquet")):
        st = f.stat()
        rows = pq.ParquetFile(f).metadata.num_rows
        digest.update(f"{f.name}:{st.st_size}:{rows}:{st.st_mtime_ns}:{st.st_ino};".encode())
    assert open_latents(path).fingerprint() == digest.hexdigest()[:16]


# -- the cache: when it is written and served ------------------------------------------


def test_auto_writes_no_cache_for_plain_parts(lat):
    path, vecs = lat
    for _ in range(2):
        x = open_latents(path).to_numpy()
        np.testing.assert_array_equal(x, vecs)
        assert not mapped(x) and not x.flags.writeable
    assert caches(path) == []


def test_auto_caches_parts_arrow_must_decode(lat, monkeypatch):
    path, vecs = lat
    rewrite_parts(path, compression="snappy")  # as embedkit wrote them before plain vectors
    age(path)
    first = open_latents(path).to_numpy()
    assert not mapped(first)
    assert caches(path) == [f"vectors-{open_latents(path).fingerprint()}.npy"]
    monkeypatch.setattr(dataset_module, "read_vectors", None)  # the parts are not read again
    second = open_latents(path).to_numpy()
    assert mapped(second)
    np.testing.assert_array_equal(second, vecs)


def test_cache_on_serves_a_read_only_memory_map(lat):
    path, vecs = lat
    open_latents(path, cache=True).to_numpy()
    x = open_latents(path, cache=True).to_numpy()
    assert mapped(x)
    np.testing.assert_array_equal(x, vecs)
    stored = cache_file(path, open_latents(path).fingerprint())
    assert np.load(stored).dtype == np.float32 and stored.stat().st_size > vecs.nbytes


def test_returned_arrays_cannot_write_into_the_cache(lat):
    path, vecs = lat
    open_latents(path, cache=True).to_numpy()
    stored = cache_file(path, open_latents(path).fingerprint())
    before = stored.read_bytes()
    for x in (
        open_latents(path, cache=True).to_numpy(),
        open_latents(path, cache=True).filter(kind="a").to_numpy(),
        open_latents(path, cache=False).to_numpy(),
    ):
        with pytest.raises(ValueError, match="read-only"):
            x[0, 0] = 1.0
        with pytest.raises(ValueError):
            x += 1.0
    mapping = open_latents(path, cache=True).to_numpy()
    with pytest.raises(ValueError):
        mapping.flags.writeable = True  # the map itself is read-only, not just the flag
    mine = mapping.copy()
    mine[0, 0] = 1.0  # what callers do instead
    assert stored.read_bytes() == before
    np.testing.assert_array_equal(open_latents(path, cache=True).to_numpy(), vecs)


def test_vectors_of_from_the_cache_is_a_copy(lat, monkeypatch):
    path, vecs = lat
    open_latents(path, cache=True).to_numpy()
    monkeypatch.setattr(dataset_module, "read_vectors", None)
    got = open_latents(path, cache=True).vectors_of(["s0001", "r0002", "s0001"])
    np.testing.assert_array_equal(got, vecs[[31, 2, 31]])
    got[0, 0] = 5.0
    np.testing.assert_array_equal(open_latents(path, cache=True).to_numpy(), vecs)


# -- never stale ---------------------------------------------------------------


def test_part_rewritten_in_place_same_size(lat, tmp_path):
    """Same name, inode, ids and size, other vectors: the old cache is not served."""
    path, vecs = lat
    open_latents(path, cache=True).to_numpy()
    assert mapped(open_latents(path, cache=True).to_numpy())
    old_cache = caches(path)
    other = vectors(10, seed=7)

    kinds = np.array(["a", "b", "c", "d"])[np.arange(30, 40) % 4]
    twin = write_latents(tmp_path / "twin", ids_for(10, "s"), other, INFO, columns={"kind": kinds})
    part = sorted(path.glob("part-*.parquet"))[1]
    data = next(twin.glob("part-*.parquet")).read_bytes()
    assert len(data) == part.stat().st_size
    inode = part.stat().st_ino
    with part.open("r+b") as f:
        f.write(data)
    assert part.stat().st_ino == inode
    x = open_latents(path, cache=True).to_numpy()
    np.testing.assert_array_equal(x, np.concatenate([vecs[:30], other]))
    assert old_cache[0] not in caches(path)  # replaced (or, same clock tick, not written)


def test_part_appended(lat):
    path, vecs = lat
    open_latents(path, cache=True).to_numpy()
    old_cache = caches(path)
    more = vectors(5, seed=9)
    write_latents(path, ids_for(5, "t"), more, INFO, columns={"kind": ["a"] * 5})
    age(path, 30)
    x = open_latents(path, cache=True).to_numpy()
    np.testing.assert_array_equal(x, np.concatenate([vecs, more]))
    assert len(caches(path)) == 1 and caches(path) != old_cache  # the old one deleted
    assert mapped(open_latents(path, cache=True).to_numpy())


def test_part_deleted(lat):
    path, vecs = lat
    open_latents(path, cache=True).to_numpy()
    old_cache = caches(path)
    sorted(path.glob("part-*.parquet"))[0].unlink()
    x = open_latents(path, cache=True).to_numpy()
    np.testing.assert_array_equal(x, vecs[30:])
    assert len(caches(path)) == 1 and caches(path) != old_cache


def test_part_replaced_by_identical_bytes_rebuilds(lat):
    """A new inode under the same name: another fingerprint, so another cache."""
    path, vecs = lat
    open_latents(path, cache=True).to_numpy()
    old_cache = caches(path)
    part = sorted(path.glob("part-*.parquet"))[0]
    copy = part.with_name(".copy.tmp")
    copy.write_bytes(part.read_bytes())
    os.replace(copy, part)
    age(path)
    np.testing.assert_array_equal(open_latents(path, cache=True).to_numpy(), vecs)
    assert caches(path) != old_cache


def test_cache_not_newer_than_a_part_is_not_trusted(lat):
    """git's racily-clean rule: a cache written in the same clock tick as a part could
    miss a later same-size rewrite that keeps that mtime."""
    path, vecs = lat
    ds = open_latents(path, cache=True)
    ds.to_numpy()
    stats = part_stats(ds.files)
    stored = cache_file(path, ds.fingerprint())
    shape, newest = (40, DIM), max(s.mtime_ns for s in stats)
    assert load_cache(path, ds.fingerprint(), shape, np.dtype("float32"), newest) is not None
    cache_ns = stored.stat().st_mtime_ns
    assert load_cache(path, ds.fingerprint(), shape, np.dtype("float32"), cache_ns) is None
    # parts from the future (or written this very tick) are never cached
    later = time.time_ns() + 3600 * 10**9
    for part in ds.files:
        os.utime(part, ns=(later, later))
    x = open_latents(path, cache=True).to_numpy()
    np.testing.assert_array_equal(x, vecs)
    assert caches(path) == []


def test_damaged_or_wrong_cache_is_not_served(lat):
    path, vecs = lat
    ds = open_latents(path, cache=True)
    ds.to_numpy()
    stored = cache_file(path, ds.fingerprint())
    np.save(stored, np.zeros((39, DIM), np.float32))  # another shape under the right name
    np.testing.assert_array_equal(open_latents(path, cache=True).to_numpy(), vecs)
    stored.write_bytes(b"not a npy file")
    np.testing.assert_array_equal(open_latents(path, cache=True).to_numpy(), vecs)
    assert mapped(open_latents(path, cache=True).to_numpy())  # rewritten


def test_part_replaced_during_a_read_is_read_again(lat, monkeypatch):
    path, vecs = lat
    ds = open_latents(path, cache=True)
    stale = part_stats(ds.files)
    part = ds.files[0]
    copy = part.with_name(".copy.tmp")
    copy.write_bytes(part.read_bytes())
    os.replace(copy, part)  # the described file is gone: a new inode
    calls = []

    def describe(files):
        calls.append(1)
        return stale if len(calls) == 1 else part_stats(files)

    monkeypatch.setattr(dataset_module, "part_stats", describe)
    np.testing.assert_array_equal(ds.to_numpy(), vecs)
    assert len(calls) == 2
    assert caches(path) == [f"vectors-{ds.fingerprint()}.npy"] or caches(path) == []


def test_a_part_that_keeps_changing_is_a_one_line_error(lat, monkeypatch):
    path, _ = lat
    ds = open_latents(path, cache=False)
    stale = part_stats(ds.files)
    part = ds.files[1]
    copy = part.with_name(".copy.tmp")
    copy.write_bytes(part.read_bytes())
    os.replace(copy, part)
    monkeypatch.setattr(dataset_module, "part_stats", lambda files: stale)
    with pytest.raises(InputError, match="kept changing while it was read") as exc:
        ds.to_numpy()
    assert "\n" not in str(exc.value) and part.name in str(exc.value)


def test_a_part_cut_short_while_read_is_read_again(lat, monkeypatch):
    path, vecs = lat
    real, calls = Extents.read, []

    def cut_short(self, *args):
        calls.append(1)
        if len(calls) == 1:
            raise NotPlain("the file ends at byte 9, inside a page")
        return real(self, *args)

    monkeypatch.setattr(Extents, "read", cut_short)
    np.testing.assert_array_equal(open_latents(path, cache=False).to_numpy(), vecs)
    assert len(calls) > 2


# -- filtered views, float16 ----------------------------------------------------------


@pytest.mark.parametrize("setting", [True, False, "auto"])
def test_filtered_views(lat, setting, monkeypatch):
    path, vecs = lat
    open_latents(path, cache=setting).to_numpy()
    kinds = np.array(["a", "b", "c", "d"])[np.arange(40) % 4]
    if setting is True:
        monkeypatch.setattr(dataset_module, "read_vectors", None)  # served by the cache
    ds = open_latents(path, cache=setting)
    np.testing.assert_array_equal(ds.filter(kind="c").to_numpy(), vecs[kinds == "c"])
    either = ds.filter(kind=["a", "d"]).filter(pc.field("id") >= "r0010")
    keep = np.isin(kinds, ["a", "d"]) & (np.arange(40) >= 10)
    np.testing.assert_array_equal(either.to_numpy(), vecs[keep])
    assert ds.filter(kind="zzz").to_numpy().shape == (0, DIM)
    assert ds.filter(kind="c").to_numpy().flags.writeable is False


def test_filter_on_a_column_a_hand_written_part_lacks(lat):
    path, vecs = lat
    meta = open_latents(path).meta
    flat = pa.array(vectors(2, seed=4).reshape(-1))
    table = pa.table({"id": ["h0", "h1"], "source": ["", ""]})
    table = table.append_column(EMBEDDING, pa.FixedSizeListArray.from_arrays(flat, DIM))
    pq.write_table(
        table.replace_schema_metadata({b"embedkit": meta.to_bytes()}), path / "part-00009.parquet"
    )
    ds = open_latents(path, cache=False)
    assert len(ds.filter(kind="a").to_numpy()) == 10  # the new part's rows have no kind
    np.testing.assert_array_equal(ds.to_numpy()[:40], vecs)


@pytest.mark.parametrize("layout", [{}, {"compression": "snappy"}], ids=["plain", "snappy"])
def test_float16(tmp_path, layout):
    vecs = vectors(25, dtype="float16")

    path = write_latents(tmp_path / "half", ids_for(25), vecs, INFO, dtype="float16")
    if layout:
        rewrite_parts(path, **layout)
    age(path)
    for _ in range(2):
        x = open_latents(path, cache=True).to_numpy()
        assert x.dtype == np.float16
        np.testing.assert_array_equal(x, vecs)
    assert mapped(x)
    assert np.load(cache_file(path, open_latents(path).fingerprint())).dtype == np.float16
    got = open_latents(path, cache=True).filter(pc.field("id") < "r0005").to_numpy()
    np.testing.assert_array_equal(got, vecs[:5])
    np.testing.assert_array_equal(open_latents(path).vectors_of(["r0007"]), vecs[[7]])


# -- turned off, read-only folders, disk space, concurrent writers -----------------------------


def test_disabled_neither_reads_nor_writes(lat, monkeypatch):
    path, _ = lat
    x = open_latents(path, cache=False).to_numpy()
    assert not mapped(x) and caches(path) == []
    assert not (path / STATE_DIR / "cache").exists()
    open_latents(path, cache=True).to_numpy()  # a valid cache exists now
    assert not mapped(open_latents(path, cache="off").to_numpy())
    monkeypatch.setenv(CACHE_ENV, "0")
    assert not mapped(open_latents(path).to_numpy())
    assert open_latents(path).filter(kind="a").cache == "off"  # views keep the setting
    monkeypatch.setenv(CACHE_ENV, "1")
    assert mapped(open_latents(path).to_numpy())
    assert caches(path)  # off never deleted it either


def test_setting_words():
    assert cache_mode(True) == "on" and cache_mode(False) == "off"
    assert cache_mode("AUTO") == cache_mode(None) == "auto"
    with pytest.raises(InputError, match="not auto, on or off") as exc:
        cache_mode("sometimes")
    assert "\n" not in str(exc.value)


def test_open_latents_with_another_setting(lat):
    path, _ = lat
    ds = open_latents(path)
    assert ds.cache == "auto"
    assert open_latents(ds) is ds
    assert open_latents(ds, cache=False).cache == "off"


@contextmanager
def refused(path):
    raise PermissionError(30, "Read-only file system", str(path))
    yield  # pragma: no cover


def test_read_only_folder(lat, monkeypatch):
    path, vecs = lat
    open_latents(path, cache=True).to_numpy()  # a cache made while it was writable
    valid = caches(path)
    monkeypatch.setattr(cache_module, "atomic_path", refused)  # EROFS on every cache write
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: refused(self).__enter__())
    # a valid cache is still served from a read-only folder
    assert mapped(open_latents(path, cache=True).to_numpy())
    # a new part makes it stale; it can be neither replaced nor deleted: skipped, not served
    more = vectors(3, seed=5)
    write_latents(path, ids_for(3, "u"), more, INFO, columns={"kind": ["a"] * 3})
    age(path)
    x = open_latents(path, cache=True).to_numpy()
    np.testing.assert_array_equal(x, np.concatenate([vecs, more]))
    assert not mapped(x) and caches(path) == valid


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder_by_permissions(lat):
    path, vecs = lat
    os.chmod(path, 0o555)
    try:
        np.testing.assert_array_equal(open_latents(path, cache=True).to_numpy(), vecs)
        assert caches(path) == []
    finally:
        os.chmod(path, 0o755)


def test_not_written_when_the_disk_is_nearly_full(lat, monkeypatch):
    path, vecs = lat
    monkeypatch.setattr(cache_module, "MIN_FREE_BYTES", 1 << 62)
    np.testing.assert_array_equal(open_latents(path, cache=True).to_numpy(), vecs)
    assert caches(path) == []


def test_abandoned_temp_files_removed(lat):
    path, _ = lat
    folder = path / STATE_DIR / "cache"
    folder.mkdir(parents=True)
    old, fresh = folder / ".vectors-x.npy.dead.tmp", folder / ".vectors-y.npy.live.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    open_latents(path, cache=True).to_numpy()
    assert not old.exists() and fresh.exists()  # another reader may be writing that one


def test_reading_while_a_writer_appends(lat):
    """A reader never takes the writer's lock; the writer goes on and its rows show up."""
    path, vecs = lat
    more = vectors(6, seed=11)

    with LatentWriter(path, INFO, rows_per_part=3) as writer:
        writer.write(ids_for(3, "w"), [""] * 3, more[:3], {"kind": ["a"] * 3})
        age(path)
        x = open_latents(path, cache=True).to_numpy()
        np.testing.assert_array_equal(x, np.concatenate([vecs, more[:3]]))
        assert len(caches(path)) == 1
        with pytest.raises(InputError, match="another embed is writing"):
            LatentWriter(path, INFO)  # the writer still holds its lock
        writer.write(ids_for(3, "x"), [""] * 3, more[3:], {"kind": ["a"] * 3})
    age(path)
    x = open_latents(path, cache=True).to_numpy()
    np.testing.assert_array_equal(x, np.concatenate([vecs, more]))
    assert len(caches(path)) == 1
