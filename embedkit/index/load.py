"""Loading a saved index, refusing (or rebuilding) one whose latents have changed — the
refusal names the cheapest fix, an update in place or a rebuild — or whose
``index.json`` predates file digests."""

from __future__ import annotations

from pathlib import Path

from embedkit.errors import InputError
from embedkit.index.build import build_index
from embedkit.index.gpu import use_gpu
from embedkit.index.info import FORMAT_VERSION, INFO_FILE, IndexInfo, index_dir
from embedkit.index.loaded import LoadedIndex
from embedkit.index.persist import file_of, read_index_files, read_info
from embedkit.index.refresh import stale_message
from embedkit.index.tune import set_params
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.store.vectors import fingerprint_of, part_stats

__all__ = ["load_index"]


def load_index(
    latents: str | Path | LatentDataset,
    mmap: bool = False,
    rebuild: bool = False,
    gpu: bool | None = None,
    progress: bool = False,
) -> LoadedIndex:
    """Load the index saved in ``<latents>/index/``.

    Args:
        latents: the latent dataset folder (or :class:`LatentDataset`).
        mmap: memory-map the index file read-only instead of reading it into RAM.
        rebuild: if the latents changed since the index was built, rebuild it with the
            same settings instead of raising.
        gpu: ``None`` keeps the index on the CPU and searches a GPU copy of it (made on
            the first search that pays for it: many queries over a large index, see
            :attr:`LoadedIndex.gpu`); ``True`` makes the GPU copy now (an error without
            a GPU); ``False`` never uses a GPU. ``index`` is the CPU index either way.
        progress: progress bars for a rebuild.

    Example:
        >>> idx = load_index("latents/", mmap=True)
        >>> idx.info.recall, idx.ntotal
    """
    ds = open_latents(latents)
    if ds.expression is not None:
        raise InputError("load_index needs the whole dataset, not a filtered view")
    folder = index_dir(ds)
    info = read_info(ds)
    if info is None:
        raise InputError(f"no index in {folder}; build one with `embedkit index {ds.path}`")
    if info.format > FORMAT_VERSION:
        raise InputError(f"{folder} was written by a newer embedkit; upgrade or rebuild it")
    refusal = _refusal(info, ds, folder)
    if refusal is not None:
        if rebuild:
            return build_index(
                ds,
                metric=info.metric,
                kind=info.requested_kind,
                memory_budget=info.memory_budget,
                recall_sample=info.recall_sample,
                k=info.k,
                gpu=gpu,
                progress=progress,
                target_recall=info.target_recall,
            )
        raise InputError(refusal)
    try:
        files = read_index_files(folder, ds, mmap, info)
    except InputError:
        again = read_info(ds)  # an update may have replaced the files meanwhile: once more
        if again is None or again.files == info.files or _refusal(again, ds, folder):
            raise
        info, files = again, read_index_files(folder, ds, mmap, again)
    set_params(files.index, info.params)
    policy = gpu if use_gpu(gpu) else False
    loaded = LoadedIndex(
        index=files.index, ids=files.ids, info=info, dataset=ds, path=folder, gpu=policy,
        part_of=files.part_of,
    )  # fmt: skip
    if policy is True:
        loaded.prepare_gpu()  # the CPU index stays too: searches past the GPU limits use it
    return loaded


def _refusal(info: IndexInfo, ds: LatentDataset, folder: Path) -> str | None:
    """Why the saved index cannot be used as it is (and what fixes it), or None."""
    stats = part_stats(ds.files)
    if info.fingerprint != fingerprint_of(stats):
        return stale_message(info, stats, folder, ds.path)
    if file_of(info, "index") is None or file_of(info, "ids") is None:
        return (
            f"{folder / INFO_FILE} has no file digests (written by an older embedkit); "
            f"re-run `embedkit index {ds.path}` (or pass rebuild=True)"
        )
    return None
