"""Top-k helpers shared by the backends: block-wise candidate scan and exact re-rank."""

from __future__ import annotations

import numpy as np

BLOCK = 65_536   # rows per scan block: a float32 copy of one block stays a few tens of MB at 512 dims


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first (argpartition, then a sort of k)."""
    n = scores.shape[0]
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(scores, n - k)[n - k:] if k < n else np.arange(n)
    return top[np.argsort(-scores[top], kind="stable")]


def scan(vectors: np.ndarray, q: np.ndarray, k: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best rows of ``vectors`` (any float dtype, e.g. a float16 memmap) by dot product.

    Blocks are upcast to float32 so the product runs in BLAS; memory is O(block x D).
    """
    q = np.asarray(q, dtype=np.float32)
    rows, scores = [], []
    for s in range(0, vectors.shape[0], block):
        chunk = np.asarray(vectors[s:s + block], dtype=np.float32)
        sc = chunk @ q
        best = top_k(sc, k)
        rows.append(best + s)
        scores.append(sc[best])
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    rows_a, scores_a = np.concatenate(rows), np.concatenate(scores)
    best = top_k(scores_a, k)
    return rows_a[best].astype(np.int64), scores_a[best].astype(np.float32)


def rerank(exact: np.ndarray, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-score ``candidates`` (row numbers) against the float32 rows ``exact``; the best ``k``, best first."""
    cand = np.unique(np.asarray(candidates, dtype=np.int64))
    cand = cand[cand >= 0]   # FAISS pads missing results with -1
    if cand.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    sc = np.asarray(exact[cand], dtype=np.float32) @ np.asarray(q, dtype=np.float32)   # sorted rows: sequential reads
    best = top_k(sc, k)
    return cand[best], sc[best].astype(np.float32)


def n_candidates(k: int, factor: int = 10, floor: int = 100) -> int:
    """How many approximate candidates to re-rank exactly for a top-``k`` answer."""
    return max(factor * int(k), floor)


class RowReader:
    """Reads chosen rows of a ``.npy`` matrix with ``os.pread``: what a re-rank needs, nothing more.

    Memory-mapping the float32 rows would do for reading, but every page fault on a mapping also
    maps the neighbouring pages already in the page cache (fault-around), so after a few hundred
    queries of scattered reads most of a multi-GB file counts in the process's resident set.
    """

    def __init__(self, path) -> None:
        import os

        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{path}: .npy format {version} is not supported")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-D array")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        import os

        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        for i, r in enumerate(rows.tolist()):
            out[i] = np.frombuffer(os.pread(self.fd, self.row_bytes, self.offset + r * self.row_bytes), self.dtype)
        return out

    def __del__(self) -> None:
        import os

        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)
