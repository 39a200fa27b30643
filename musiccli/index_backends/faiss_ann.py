"""Approximate search with FAISS: ``IVF<nlist>,SQ8`` over inner product, exact float32 re-rank.

Why IVF + 8-bit scalar quantisation rather than HNSW: on 2 CPU cores an IVF index over 1M x 512
trains (k-means on a 64-per-list sample) and fills in well under a minute, while an HNSW graph of
1M nodes takes many minutes to insert; ``IndexHNSWFlat`` would also keep every float32 vector
(2 GB at 1M x 512) plus its graph in RAM, over the 1.2 GB budget, whereas SQ8 codes take 512 MB
and the float32 rows stay on disk, memory-mapped, read only for the candidates being re-ranked.
The re-rank removes the quantisation error; what remains is the probing error, set by ``nprobe``.

Build is resumable: the trained (empty) index is saved first, then rows are added in blocks and
the partial index is saved every :data:`SAVE_EVERY` rows and on interruption, with the stage
counter ``ann_added`` moving only after the file is in place.
"""

from __future__ import annotations

import builtins
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MtxError
from ..state import atomic_path
from ._topk import RowReader, n_candidates, rerank

log = logging.getLogger(__name__)

NAME = "ann"
INDEX_FILE = "ann.faiss"
PARTIAL_FILE = "ann.partial.faiss"
ADD_BLOCK = 65_536
SAVE_EVERY = 262_144
TRAIN_PER_LIST = 64
SPARSE_LIMIT = 0.5


def _faiss():
    from ..extras import require_extra

    return require_extra("faiss", "ann", "the ANN backend (faiss-cpu)")


def default_params(n: int) -> dict[str, int]:
    """nlist ~ sqrt(N) lists (at least 39 training rows each); nprobe probes 1/20 of them (>= 16)."""
    nlist = max(1, min(int(round(math.sqrt(n))), n // 39 or 1))
    return {"nlist": nlist, "nprobe": min(nlist, max(16, nlist // 20))}


def _save(faiss, index, path: Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def build(d: Path, vectors: np.ndarray, options: dict[str, Any], progress, commit,
          done: dict[str, Any], ids: list[str], items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    faiss = _faiss()
    n, dim = vectors.shape
    params = {**default_params(n), **{k: int(v) for k, v in options.items() if k in ("nlist", "nprobe")}}
    partial = d / PARTIAL_FILE
    added = int(done.get("ann_added", -1))
    if added >= 0 and partial.exists():
        index = faiss.read_index(str(partial))
        if index.ntotal != added:
            raise MtxError(f"partial ANN index holds {index.ntotal} rows, the stage record says {added}",
                           hint="rebuild it with `mtx search --force`")
        log.info("resuming the ANN index at row %d of %d", added, n)
    else:
        index = faiss.index_factory(dim, f"IVF{params['nlist']},SQ8", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        take = min(n, TRAIN_PER_LIST * params["nlist"])
        sample = np.sort(rng.choice(n, size=take, replace=False)) if take < n else np.arange(n)
        log.info("training the ANN index (IVF%d,SQ8) on %d rows", params["nlist"], take)
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        _save(faiss, index, partial)
        added = 0
        commit(ann_added=0)
    last_saved = added
    try:
        with progress.task("ANN index", total=n, unit="tracks", completed=added) as task:
            while added < n:
                progress.check_interrupt()
                end = min(n, added + ADD_BLOCK)
                index.add(np.ascontiguousarray(vectors[added:end], dtype=np.float32))
                step, added = end - added, end   # counted before anything else can raise
                task.advance(step)
                if added - last_saved >= SAVE_EVERY and added < n:
                    _save(faiss, index, partial)
                    commit(ann_added=added)
                    last_saved = added
    except BaseException:
        if added != last_saved:   # Ctrl-C: keep what was added, so --continue picks up here
            _save(faiss, index, partial)
            commit(ann_added=added)
        raise
    _save(faiss, index, d / INDEX_FILE)
    partial.unlink(missing_ok=True)
    return {"factory": f"IVF{params['nlist']},SQ8", "metric": "inner_product", **params}


LABELS_FILE = "labels.npy"   # after an update: label -> row of vectors.npy (-1: removed); absent: label = row


def update(d: Path, old: Path, vectors: np.ndarray, source: np.ndarray, meta: dict[str, Any],
           options: dict[str, Any], progress) -> dict[str, Any]:
    """Write into ``d`` the index of ``old`` updated to ``vectors``, without retraining.

    ``source[k]`` is the row of the old index that row ``k`` copies, or -1 for a new row. Old rows not
    copied are removed (``remove_ids``), new rows are added under fresh labels (``add_with_ids``), and
    ``labels.npy`` maps every label to its row. The coarse quantiser stays the one trained on the
    first build; when more than :data:`SPARSE_LIMIT` of the labels are dead the index is rebuilt.
    """
    faiss = _faiss()
    index = faiss.read_index(str(old / INDEX_FILE))
    labels = np.load(old / LABELS_FILE) if (old / LABELS_FILE).exists() else np.arange(index.ntotal, dtype=np.int64)
    label_of_old = np.full(int(labels.max(initial=-1)) + 1, -1, dtype=np.int64)
    live = np.flatnonzero(labels >= 0)
    label_of_old[labels[live]] = live                       # old row -> its label
    kept_old = source[source >= 0]
    gone = np.setdiff1d(labels[live] if len(live) else np.zeros(0, np.int64), kept_old)
    dropped = label_of_old[gone[gone < len(label_of_old)]] if len(gone) else np.zeros(0, np.int64)
    fresh = np.flatnonzero(source < 0)
    total = len(labels) + len(fresh)
    if total and (total - len(vectors)) / total > SPARSE_LIMIT:
        log.info("the ANN index has more removed rows than live ones; rebuilding it")
        return build(d, vectors, options, progress, lambda **_: None, {}, [], {})
    if len(dropped):
        index.remove_ids(np.ascontiguousarray(dropped, dtype=np.int64))
    new_labels = np.arange(len(labels), total, dtype=np.int64)
    for s in range(0, len(fresh), ADD_BLOCK):
        rows = fresh[s:s + ADD_BLOCK]
        index.add_with_ids(np.ascontiguousarray(vectors[rows], dtype=np.float32), new_labels[s:s + ADD_BLOCK])
    out = np.full(total, -1, dtype=np.int64)
    kept_rows = np.flatnonzero(source >= 0)
    out[label_of_old[source[kept_rows]]] = kept_rows
    out[new_labels] = fresh
    with atomic_path(d / LABELS_FILE) as tmp:
        with builtins.open(tmp, "wb") as f:   # this module's own open() is the backend API
            np.save(f, out)
    _save(faiss, index, d / INDEX_FILE)
    return {**meta.get("backend_meta", {}), "updated_rows": int(len(fresh)), "removed_rows": int(len(dropped))}


class AnnSearcher:
    def __init__(self, d: Path, meta: dict[str, Any], exact: np.ndarray) -> None:
        faiss = _faiss()
        path = d / INDEX_FILE
        if not path.exists():
            raise MtxError(f"index {meta.get('name')!r} has no {INDEX_FILE}", hint="rebuild it with `mtx search --force`")
        self.index = faiss.read_index(str(path))
        # One query at a time: OpenMP threads only add synchronisation (measured at 1M x 512 on 2 busy
        # cores: 10.5 ms per query with one thread, 28 ms with two). MTX_ANN_THREADS overrides it.
        faiss.omp_set_num_threads(int(os.environ.get("MTX_ANN_THREADS", "1")))
        bm = meta.get("backend_meta", {})
        nprobe = int(os.environ.get("MTX_ANN_NPROBE", bm.get("nprobe", 16)))
        faiss.extract_index_ivf(self.index).nprobe = nprobe
        self.exact = exact
        self.rows = RowReader(d / "vectors.npy")   # scattered re-rank reads, no mapping
        self.labels = np.load(d / LABELS_FILE) if (d / LABELS_FILE).exists() else None

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        c = min(n_candidates(k), self.index.ntotal)
        _, rows = self.index.search(np.asarray(q, dtype=np.float32)[None, :], c)
        rows = rows[0]
        if self.labels is not None:   # an updated index: labels are not rows
            rows = rows[(rows >= 0) & (rows < len(self.labels))]
            rows = self.labels[rows]
        return rerank(self.rows, q, rows[rows >= 0], k)


def open(d: Path, meta: dict[str, Any], exact: np.ndarray) -> AnnSearcher:  # noqa: A001 - the backend API
    return AnnSearcher(d, meta, exact)
