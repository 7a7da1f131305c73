"""``auto`` by measurement: build each candidate index on a sample of the data, tune it to
the recall target, time its queries, and rank them by the q/s predicted at full size.

The candidates are those of :func:`embedkit.index.choose.candidate_choices` (Flat,
HNSW32, IVF-Flat, IVF-SQ8 and IVF-PQ with re-ranking; whichever fit the memory budget).
Each is built twice, on a random sample of ``sample_rows(n)`` rows and on a quarter of it
(same held-out queries, exact ground truth for both), tuned with
:func:`embedkit.index.tune.tune` (recall lower bound >= target) and timed: CPU seconds of
one thread, best of ``TIME_REPEATS`` runs, so other jobs on the machine disturb the figure
little; the whole selection runs on one faiss thread. The two sizes give how the cost of
reaching the target grows with the rows (``qps ∝ rows^-a``, ``a`` clipped to [0, 1]; 1
for Flat), hence q/s at ``n`` rows. The candidates whose recall bound reached the target
are ranked fastest first (Flat, exact, always reaches it when it fits); the build makes
the first over all rows and tunes it again, and takes the next when it falls short there.

The module also streams rows from a latent dataset (:func:`collect_rows`), for this
sample and for the build's own passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
from tqdm import tqdm

from embedkit.index.choose import IndexChoice, resized_factory, train_rows
from embedkit.index.metric import METRICS, prepare_vectors
from embedkit.index.tune import Truth, Tuned, measure_recall, tune
from embedkit.store.dataset import LatentDataset

__all__ = [
    "TIME_REPEATS",
    "Measured",
    "Selection",
    "collect_rows",
    "cpu_qps",
    "measure_candidate",
    "measures_auto",
    "one_thread",
    "progress_bar",
    "rank",
    "sample_positions",
    "sample_rows",
    "select_index",
    "stream_batches",
]

MEASURE_MIN_FLOATS = 1 << 19  # N·D from which auto measures (2 MiB of float32)
MEASURE_MIN_ROWS = 1000
SAMPLE_MIN_ROWS = 10_000
SAMPLE_MAX_ROWS = 100_000
SAMPLE_MAX_BYTES = 256 << 20  # the sample held in memory during the selection
SMALL_FRACTION = 4  # the second build uses 1/4 of the sample
MAX_QUERIES = 1000
TIME_REPEATS = 3


@dataclass
class Measured:
    """What the selection measured for one candidate (``index.json`` ``selection``).

    ``params``, ``recall``, ``recall_lower``, ``reached``: tuned on the sample;
    ``qps_sample``/``qps_small``: one-thread CPU q/s, each tuned to the target, on the
    sample and on its quarter; ``exponent``: the growth of that cost with the rows that
    they give (q/s ∝ rows^-a, a in [0, 1]); ``qps_predicted``: q/s expected at n rows.
    """

    kind: str
    factory: str
    params: dict[str, float]
    recall: float
    recall_lower: float
    reached: bool
    qps_sample: float
    qps_small: float | None
    exponent: float
    qps_predicted: float
    build_seconds: float


@dataclass
class Selection:
    """The outcome: the ``ranked`` choices at full size (the first is built; the next ones
    if it falls short on all rows: ``fallbacks``), every candidate measured, the cost."""

    ranked: list[IndexChoice]
    candidates: list[Measured]
    sample_rows: int
    small_rows: int
    queries: int
    seconds: float = 0.0
    fallbacks: list[dict] = field(default_factory=list)

    @property
    def choice(self) -> IndexChoice:
        return self.ranked[len(self.fallbacks)]

    def fall_back(self, recall: float | None, lower: float | None) -> IndexChoice | None:
        """Record that the current choice fell short on all rows; the next one, if any."""
        self.fallbacks.append({"factory": self.choice.factory, "recall": recall, "lower": lower})
        return self.choice if len(self.fallbacks) < len(self.ranked) else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("ranked")
        out["chosen"] = self.ranked[min(len(self.fallbacks), len(self.ranked) - 1)].factory
        for row in out["candidates"]:
            for key in ("recall", "recall_lower", "qps_sample", "qps_small", "qps_predicted"):
                if row[key] is not None:
                    row[key] = round(float(row[key]), 1 if "qps" in key else 4)
            row["exponent"] = round(row["exponent"], 3)
            row["build_seconds"] = round(row["build_seconds"], 3)
        out["seconds"] = round(self.seconds, 3)
        return out


def measures_auto(kind: str, n: int, dim: int, gpu: bool, recall_sample: int) -> bool:
    """Whether ``auto`` chooses by measurement: from ``MEASURE_MIN_FLOATS`` floats (N·D;
    below, Flat: exact search over 2 MiB takes microseconds a query) and 1000 rows, on the
    CPU (the timings are CPU ones), with recall measured (``recall_sample > 0``).
    Otherwise the rules of ``choose_index`` decide."""
    big = n * dim >= MEASURE_MIN_FLOATS and n >= MEASURE_MIN_ROWS
    return kind == "auto" and big and not gpu and recall_sample > 0


def sample_positions(n: int, dim: int) -> np.ndarray:
    """The sorted rows (seeded) the selection measures on: :func:`sample_rows` of them."""
    return np.sort(np.random.default_rng(2).choice(n, sample_rows(n, dim), replace=False))


def sample_rows(n: int, dim: int) -> int:
    """Rows drawn for the selection: n/4, within [10k, 100k] rows and 256 MiB, at most n."""
    most = max(SAMPLE_MIN_ROWS, SAMPLE_MAX_BYTES // (4 * max(dim, 1)))
    return int(min(n, max(SAMPLE_MIN_ROWS, min(n // 4, SAMPLE_MAX_ROWS, most))))


def _new(factory: str, dim: int, metric: str, rows: int) -> faiss.Index:
    return faiss.index_factory(dim, resized_factory(factory, rows), METRICS[metric])


def _build(factory: str, base: np.ndarray, metric: str, seed: int) -> tuple[faiss.Index, float]:
    start = time.perf_counter()
    index = _new(factory, base.shape[1], metric, len(base))
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        rows = train_rows(len(base), ivf.nlist if ivf is not None else None)
        pick_rows = np.random.default_rng(seed).choice(len(base), rows, replace=False)
        index.train(base[np.sort(pick_rows)])
    index.add(base)
    return index, time.perf_counter() - start


@contextmanager
def one_thread() -> Iterator[None]:
    """Run faiss on one OpenMP thread inside the block (the thread count is restored)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def cpu_qps(index: faiss.Index, queries: np.ndarray, k: int, repeats: int = TIME_REPEATS) -> float:
    """Queries per CPU second of one thread: best of ``repeats`` timed searches."""
    best = math.inf
    with one_thread():
        for _ in range(repeats):
            start = time.process_time()
            index.search(queries, k)
            best = min(best, time.process_time() - start)
    return len(queries) / max(best, 1e-6)


def _tuned_qps(
    choice: IndexChoice, base: np.ndarray, queries: np.ndarray, truth: Truth, metric: str,
    target: float,
) -> tuple[Tuned, float, float]:  # fmt: skip
    """Build ``choice`` on ``base``, tune it to ``target``, time it: (tuning, q/s, build s)."""
    index, seconds = _build(choice.factory, base, metric, seed=len(base))
    if choice.kind == "flat":
        tuned = measure_recall(index, queries, truth, {})
    else:
        tuned = tune(index, queries, truth, target)
    return tuned, cpu_qps(index, queries, truth.k), seconds


def measure_candidate(
    choice: IndexChoice,
    n: int,
    metric: str,
    target: float,
    sample: tuple[np.ndarray, np.ndarray, Truth],
    small: tuple[np.ndarray, Truth] | None,
) -> Measured:
    """Build, tune and time ``choice`` on the sample (``base, queries, truth``) and on
    ``small`` (``base, truth``, same queries), and predict its q/s at ``n`` rows."""
    base, queries, truth = sample
    tuned, qps, seconds = _tuned_qps(choice, base, queries, truth, metric, target)
    qps_small, exponent = None, 1.0  # Flat: brute force grows with the rows
    if choice.kind != "flat" and small is not None:
        _, qps_small, small_s = _tuned_qps(choice, small[0], queries, small[1], metric, target)
        seconds += small_s
        ratio = math.log(len(base) / len(small[0]))
        exponent = min(max(math.log(qps_small / qps) / ratio, 0.0), 1.0)
    return Measured(
        choice.kind, choice.factory, dict(tuned.params), float(tuned.recall),
        float(tuned.lower), bool(tuned.reaches(target)), float(qps), qps_small,
        float(exponent), float(qps * (len(base) / n) ** exponent), float(seconds),
    )  # fmt: skip


def rank(measured: list[Measured], choices: list[IndexChoice], target: float) -> list[IndexChoice]:
    """The candidates that reached the target, fastest predicted first, each with its reason
    (if none did: the best recall bound alone)."""
    reached = sorted((m for m in measured if m.reached), key=lambda m: -m.qps_predicted)
    if not reached:
        best = max(measured, key=lambda m: m.recall_lower)
        why = f"no candidate reached recall {target}; best recall bound {best.recall_lower:.3f}"
        reached = [best]
    else:
        why = f"fastest measured reaching recall bound >= {target}"
    by_factory = {c.factory: c for c in choices}
    ranked = []
    for place, best in enumerate(reached):
        rest = ", ".join(
            f"{m.kind} {m.qps_predicted:,.0f}" + ("" if m.reached else " (short of target)")
            for m in sorted(measured, key=lambda m: -m.qps_predicted)
            if m is not best
        )
        head = why if place == 0 else f"next fastest measured reaching recall bound >= {target}"
        reason = f"auto, {head}: {best.qps_predicted:,.0f} q/s/core predicted (vs {rest})"
        choice = by_factory[best.factory]
        ranked.append(IndexChoice(choice.kind, choice.factory, reason, choice.estimated_bytes))
    return ranked


def select_index(
    sample: np.ndarray,
    n: int,
    metric: str,
    k: int,
    target: float,
    choices: list[IndexChoice],
    progress: bool = False,
) -> Selection:
    """Measure every candidate in ``choices`` on ``sample`` (prepared vectors, random rows
    of the data) and choose one for ``n`` rows (see the module docstring)."""
    start = time.perf_counter()
    if progress:
        tqdm.write(f"measuring {', '.join(c.factory for c in choices)} on {len(sample):,} rows")
    rng = np.random.default_rng(1)
    order = rng.permutation(len(sample))
    n_queries = min(MAX_QUERIES, max(len(sample) // 10, 1))
    queries = np.ascontiguousarray(sample[order[:n_queries]])
    base = np.ascontiguousarray(sample[order[n_queries:]])
    small_base = base[: len(base) // SMALL_FRACTION]
    truth = _truth(queries, base, k, metric)
    small = (small_base, _truth(queries, small_base, k, metric)) if len(small_base) > k else None
    with one_thread():  # small builds: OpenMP stragglers on shared cores cost more than it gains
        measured = [
            measure_candidate(c, n, metric, target, (base, queries, truth), small) for c in choices
        ]
    ranked = rank(measured, choices, target)
    if progress:
        tqdm.write(f"chose {ranked[0].factory}: {ranked[0].reason}")
    return Selection(
        ranked, measured, len(base), len(small_base), n_queries, time.perf_counter() - start
    )


def _truth(queries: np.ndarray, base: np.ndarray, k: int, metric: str) -> Truth:
    kk = min(2 * k, len(base))
    dist, ids = faiss.knn(queries, base, kk, metric=METRICS[metric])
    return Truth.from_knn(queries, dist, ids, k, metric == "cosine")


# -- streamed rows: the selection's sample, the build's passes ---------------------------
def stream_batches(
    ds: LatentDataset, metric: str, batch_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(offset, ids, prepared vectors)`` for each streamed batch."""
    offset = 0
    for batch in ds.iter_batches(batch_size=batch_size):
        vectors = prepare_vectors(batch.vectors, metric, f"latents in {ds.path}")
        yield offset, np.asarray(batch.ids, dtype=object), vectors
        offset += len(vectors)


def _take_positions(positions: np.ndarray, offset: int, values: np.ndarray) -> np.ndarray:
    """The entries of one batch (starting at row ``offset``) at the sorted ``positions``."""
    lo, hi = np.searchsorted(positions, [offset, offset + len(values)])
    return values[positions[lo:hi] - offset]


def progress_bar(progress: bool, total: int, desc: str) -> tqdm:
    """A tqdm bar over ``total`` vectors (disabled unless ``progress``)."""
    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not progress)


def collect_rows(
    ds: LatentDataset,
    metric: str,
    positions: list[np.ndarray],
    progress: bool,
    batch_size: int,
    desc: str = "sample",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One streamed pass: the prepared vectors and ids at each set of sorted positions."""
    dim = ds.dim
    if not any(len(p) for p in positions):
        return [(np.zeros((0, dim), np.float32), np.array([], dtype=object)) for _ in positions]
    vectors: list[list[np.ndarray]] = [[] for _ in positions]
    ids: list[list[np.ndarray]] = [[] for _ in positions]
    with progress_bar(progress, len(ds), desc) as bar:
        for offset, batch_ids, batch in stream_batches(ds, metric, batch_size):
            for pos, got_v, got_i in zip(positions, vectors, ids, strict=True):
                got_v.append(_take_positions(pos, offset, batch))
                got_i.append(_take_positions(pos, offset, batch_ids))
            bar.update(len(batch))
    return [(np.concatenate(v), np.concatenate(i)) for v, i in zip(vectors, ids, strict=True)]
