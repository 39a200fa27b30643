"""Exact search over a memory-mapped index: float16 scan, float32 re-rank.

The float16 copy (``vectors.f16.npy``) halves the bytes a query streams; the candidates it
proposes are re-scored against the float32 rows (``vectors.npy``), so the top ``k`` and its
scores are exact unless an fp16 rounding (about 1e-3 on unit vectors) pushes a true top-k row
below the candidate cut, which :func:`._topk.n_candidates` makes far wider than that error.
With ``dtype="float32"`` the float32 rows are scanned directly and nothing is re-ranked.
The scanned file is memory-mapped (a cold process pays only for the pages it reads); the
re-ranked float32 rows are read one by one (``RowReader``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MtxError
from ..safe_read import load_npy
from ..state import atomic_path
from ._topk import BLOCK, RowReader, n_candidates, rerank, scan

NAME = "exact"
F16_FILE = "vectors.f16.npy"
DTYPES = ("float16", "float32")
REBUILD = "rebuild the index with `mtx search --force`"


def build(d: Path, vectors: np.ndarray, options: dict[str, Any], progress, commit,
          done: dict[str, Any], ids: list[str], items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write the float16 scan copy (when asked); returns the backend's meta."""
    dtype = options.get("dtype", "float16")
    if dtype not in DTYPES:
        raise MtxError(f"unknown index dtype {dtype!r}", hint="use float16 or float32")
    if dtype == "float16":
        n, dim = vectors.shape
        with atomic_path(d / F16_FILE) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
            with progress.task("fp16 copy", total=n, unit="tracks") as task:
                for s in range(0, n, BLOCK):
                    progress.check_interrupt()
                    mm[s:s + BLOCK] = vectors[s:s + BLOCK]
                    task.advance(min(BLOCK, n - s))
            mm.flush()
            del mm
    return {"dtype": dtype}


class ExactSearcher:
    def __init__(self, d: Path, meta: dict[str, Any], exact: np.ndarray) -> None:
        self.exact = exact
        self.dtype = meta.get("backend_meta", {}).get("dtype", "float32")
        self.scan_vectors = load_npy(d / F16_FILE, "r", REBUILD) if self.dtype == "float16" else exact
        self.rows = RowReader(d / "vectors.npy") if self.dtype == "float16" else None
        if self.scan_vectors.shape != exact.shape:
            raise MtxError(f"index {meta.get('name')!r} is damaged (fp16 copy {self.scan_vectors.shape}, "
                           f"vectors {exact.shape})", hint="rebuild it with `mtx search --force`")

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.dtype == "float32":
            return scan(self.exact, q, k)
        rows, _ = scan(self.scan_vectors, q, n_candidates(k))
        return rerank(self.rows, q, rows, k)


def open(d: Path, meta: dict[str, Any], exact: np.ndarray) -> ExactSearcher:  # noqa: A001 - the backend API
    return ExactSearcher(d, meta, exact)
