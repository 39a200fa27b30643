"""The HDF5 embedding store: one file per (encoder, manifest).

Layout of the final file:
- dataset ``ids``: utf-8 strings [N];
- dataset ``content_hashes``: utf-8 strings [N], the audio identity of each row
  (``manifest.content_hash``): a row is keyed by (track id, content hash), so a changed
  library re-embeds only new and changed tracks and keeps every other row as it is;
- datasets ``failed_ids``, ``failed_hashes``, ``failed_reasons`` [F]: the tracks that failed, keyed
  the same way, so an update does not retry a file nobody changed (``--retry-failed`` does);
- dataset ``embeddings``: [N, D] float32/float16, chunked (about 1 MiB chunks) and resizable;
- optional dataset ``windows`` [M, D_window] with ``window_offsets`` [N+1] when aggregation is ``none``;
- optional dataset ``tag_probs`` [N, T] float32 (``embed --tags``) with attribute ``tag_names`` [T];
  tags computed later for a finished store live beside it instead, in ``<manifest>.tags.h5``
  (datasets ``ids`` and ``tag_probs``), so adding them never rewrites the embeddings;
- attributes: encoder, encoder_version, model_id, sample_rate, window, hop, aggregation, dim,
  ``library`` (``manifest.library_digest`` of the rows it was built for), manifest_hash, ...

Writing is crash-safe: while a stage runs, each committed unit is a small HDF5
*part* file written under a temporary name and renamed into
``.<manifest>.parts/``. HDF5 is not safe against ``kill -9`` while a file is open
for writing, so the final file is only assembled (streamed part by part, never all
N x D in memory) once every part is present, then renamed into place.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import MtxError
from .state import atomic_path

log = logging.getLogger(__name__)

STR_DTYPE = h5py.string_dtype("utf-8")
HASHES = "content_hashes"
DTYPES = {"float32": np.float32, "float16": np.float16}


# Reads and temporaries are sized in bytes, never in rows: 4,096 rows is 16 MB at 1,024 dims but
# 1.3 GB at MERT's 76,800 (and five times that in float64 temporaries).
READ_BYTES = 64 << 20


def rows_for_bytes(bytes_per_row: int, budget: int | None = None) -> int:
    """How many rows of ``bytes_per_row`` fit in ``budget`` (default ``READ_BYTES``; at least one)."""
    return int(max(1, (READ_BYTES if budget is None else budget) // max(1, bytes_per_row)))


def chunk_rows(dim: int, itemsize: int, target_bytes: int = 1 << 20) -> int:
    return int(max(1, min(4096, target_bytes // max(1, dim * itemsize))))


def parts_dir(path: Path) -> Path:
    return path.parent / f".{path.stem}.parts"


def _strings(f: h5py.File | h5py.Group, name: str, values: Sequence[str], **kw: Any) -> None:
    f.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR_DTYPE, **kw)


def write_part(path: Path, index: int, ids: Sequence[str], vectors: np.ndarray,
               failed: Sequence[tuple[str, str]] = (), windows: list[np.ndarray] | None = None,
               tags: np.ndarray | None = None, hashes: Sequence[str] | None = None,
               failed_hashes: Sequence[str] | None = None) -> None:
    """Commit one unit of work: rows for ``ids`` (with their content ``hashes``) plus the ids that
    failed and why (and tag probabilities)."""
    pdir = parts_dir(path)
    pdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(pdir / f"part-{index:06d}.h5") as tmp:
        with h5py.File(tmp, "w") as f:
            _strings(f, "ids", ids)
            f.create_dataset("embeddings", data=vectors)
            if hashes is not None:
                _strings(f, HASHES, hashes)
            _strings(f, "failed_ids", [i for i, _ in failed])
            _strings(f, "failed_reasons", [r for _, r in failed])
            if failed_hashes is not None:
                _strings(f, "failed_hashes", failed_hashes)
            if windows is not None:
                f.create_dataset("window_counts", data=np.array([len(w) for w in windows], dtype=np.int64))
                if windows:
                    f.create_dataset("windows", data=np.concatenate(windows, axis=0))
            if tags is not None:
                f.create_dataset("tags", data=np.asarray(tags, dtype=np.float32))


def committed_parts(path: Path) -> dict[int, Path]:
    pdir = parts_dir(path)
    out = {}
    for p in sorted(pdir.glob("part-*.h5")):
        try:
            out[int(p.stem.split("-")[1])] = p
        except ValueError:
            continue
    return out


def h5_strings(values: Any) -> list[str]:
    """An HDF5 string dataset's values (bytes or str, by h5py version and dtype) as Python strings."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def part_failures(part: Path) -> list[tuple[str, str, str]]:
    """(id, content hash or "", reason) of the tracks that failed in a part."""
    with h5py.File(part, "r") as f:
        return _part_failures(f)


def read_part_failures(part: Path) -> list[tuple[str, str]]:
    with h5py.File(part, "r") as f:
        return list(zip(h5_strings(f["failed_ids"][()]), h5_strings(f["failed_reasons"][()])))


def assemble(path: Path, dim: int, dtype: str, attrs: dict[str, Any], n_parts: int,
             keep_windows: bool = False, tag_names: Sequence[str] | None = None) -> int:
    """Stream all parts, in order, into the final file; return the number of rows.

    With ``tag_names`` every part must hold ``tags`` [rows, len(tag_names)]; they become ``tag_probs``.
    Content hashes and failures of the parts are kept (``content_hashes``, ``failed_*``).
    """
    parts = committed_parts(path)
    missing = [i for i in range(n_parts) if i not in parts]
    if missing:
        raise MtxError(f"cannot assemble {path.name}: {len(missing)} part(s) missing",
                       hint="rerun with --continue")
    np_dtype = DTYPES[dtype]
    rows = chunk_rows(dim, np.dtype(np_dtype).itemsize)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as out:
            ids_ds = out.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR_DTYPE, chunks=(4096,))
            hash_ds = None
            emb = out.create_dataset("embeddings", shape=(0, dim), maxshape=(None, dim), dtype=np_dtype,
                                     chunks=(rows, dim))
            win = offs = None
            n = 0
            tag_ds = None
            if tag_names is not None:
                n_tags = len(tag_names)
                tag_ds = out.create_dataset("tag_probs", shape=(0, n_tags), maxshape=(None, n_tags),
                                            dtype=np.float32, chunks=(chunk_rows(n_tags, 4), n_tags))
                tag_ds.attrs.create("tag_names", data=list(tag_names), dtype=STR_DTYPE)
            n_windows = 0
            failed: list[tuple[str, str, str]] = []
            hashed = True
            for i in range(n_parts):
                with h5py.File(parts[i], "r") as part:
                    failed.extend(_part_failures(part))
                    ids = part["ids"][()]
                    vec = part["embeddings"][()]
                    hashed = hashed and HASHES in part
                    if len(ids) == 0:
                        continue
                    if vec.shape[1] != dim:
                        raise MtxError(f"part {i} has dim {vec.shape[1]}, expected {dim}",
                                       hint="rerun with --force")
                    ids_ds.resize((n + len(ids),))
                    ids_ds[n:] = ids
                    if hashed:
                        if hash_ds is None:
                            hash_ds = out.create_dataset(HASHES, shape=(n,), maxshape=(None,), dtype=STR_DTYPE,
                                                         chunks=(4096,))
                        hash_ds.resize((n + len(ids),))
                        hash_ds[n:] = part[HASHES][()]
                    emb.resize((n + len(ids), dim))
                    emb[n:] = vec.astype(np_dtype, copy=False)
                    if tag_ds is not None:
                        if "tags" not in part or part["tags"].shape != (len(ids), tag_ds.shape[1]):
                            raise MtxError(f"part {i} has no tag probabilities of the expected shape",
                                           hint="rerun with --force")
                        tag_ds.resize((n + len(ids), tag_ds.shape[1]))
                        tag_ds[n:] = part["tags"][()]
                    if keep_windows and "windows" in part:
                        w = part["windows"][()]
                        counts = part["window_counts"][()]
                        if win is None:
                            win = out.create_dataset("windows", shape=(0, w.shape[1]), maxshape=(None, w.shape[1]),
                                                     dtype=np_dtype, chunks=(chunk_rows(w.shape[1], 4), w.shape[1]))
                            offs = [0]
                        win.resize((n_windows + len(w), w.shape[1]))
                        win[n_windows:] = w.astype(np_dtype, copy=False)
                        for c in counts:
                            offs.append(offs[-1] + int(c))
                        n_windows += len(w)
                    n += len(ids)
            if hashed and hash_ds is None:
                _strings(out, HASHES, [], maxshape=(None,), chunks=(4096,))
            elif not hashed and hash_ds is not None:
                del out[HASHES]  # some parts came without hashes: no row is keyed by content
            if offs is not None:
                out.create_dataset("window_offsets", data=np.array(offs, dtype=np.int64))
            write_failures(out, failed if hashed else [(i, "", r) for i, _, r in failed])
            for k, v in attrs.items():
                out.attrs[k] = v if v is not None else ""
            out.attrs["count"] = n
    return n


def _part_failures(f: h5py.File) -> list[tuple[str, str, str]]:
    """(id, content hash or "", reason) of the failures a part or a store holds."""
    if "failed_ids" not in f:
        return []
    ids = h5_strings(f["failed_ids"][()])
    reasons = h5_strings(f["failed_reasons"][()])
    hashes = h5_strings(f["failed_hashes"][()]) if "failed_hashes" in f else [""] * len(ids)
    return list(zip(ids, hashes, reasons))


def write_failures(out: h5py.File, failed: Sequence[tuple[str, str, str]]) -> None:
    _strings(out, "failed_ids", [f[0] for f in failed])
    _strings(out, "failed_hashes", [f[1] for f in failed])
    _strings(out, "failed_reasons", [f[2] for f in failed])


def tags_path(path: Path) -> Path:
    """The side file for tags computed for the finished store at ``path`` (``embed --tags`` later)."""
    return path.with_name(f"{path.stem}.tags.h5")


def assemble_tags(path: Path, tag_names: Sequence[str], attrs: dict[str, Any], n_parts: int) -> int:
    """Stream the ``ids`` and ``tags`` of every part into a tag side file (no embeddings); return the rows."""
    parts = committed_parts(path)
    missing = [i for i in range(n_parts) if i not in parts]
    if missing:
        raise MtxError(f"cannot assemble {path.name}: {len(missing)} part(s) missing", hint="rerun with --continue")
    n_tags = len(tag_names)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as out:
            ids_ds = out.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR_DTYPE, chunks=(4096,))
            tag_ds = out.create_dataset("tag_probs", shape=(0, n_tags), maxshape=(None, n_tags), dtype=np.float32,
                                        chunks=(chunk_rows(n_tags, 4), n_tags))
            tag_ds.attrs.create("tag_names", data=list(tag_names), dtype=STR_DTYPE)
            n = 0
            for i in range(n_parts):
                with h5py.File(parts[i], "r") as part:
                    ids = part["ids"][()]
                    if len(ids) == 0:
                        continue
                    if "tags" not in part or part["tags"].shape != (len(ids), n_tags):
                        raise MtxError(f"part {i} has no tag probabilities of the expected shape",
                                       hint="rerun with --force")
                    ids_ds.resize((n + len(ids),))
                    ids_ds[n:] = ids
                    tag_ds.resize((n + len(ids), n_tags))
                    tag_ds[n:] = part["tags"][()]
                    n += len(ids)
            for k, v in attrs.items():
                out.attrs[k] = v if v is not None else ""
            out.attrs["count"] = n
    return n


def retry_path(path: Path) -> Path:
    """Where ``embed`` commits the tracks an update or ``--retry-failed`` embeds before they are
    composed into the store at ``path``: inside the store's parts folder, so discarding the store
    discards it too."""
    return parts_dir(path) / "retry.h5"


def merge(path: Path, extra: Path, order: Sequence[str], attrs: dict[str, Any] | None = None) -> int:
    """Rewrite the store at ``path`` with the rows of the store ``extra`` added; return the rows.

    Rows of the result are in the order of ``order`` (the manifest's ids), which is the order a
    clean run writes. See :func:`compose`, which this calls.
    """
    rank = {id_: k for k, id_ in enumerate(order)}
    with h5py.File(path, "r") as base, h5py.File(extra, "r") as more:
        ids = [h5_strings(f["ids"][()]) for f in (base, more)]
        hashed = all(HASHES in f for f, i in zip((base, more), ids))
        hashes = [h5_strings(f[HASHES][()]) if hashed else [] for f in (base, more)]
    unknown = [i for i in ids[0] + ids[1] if i not in rank]
    if unknown:
        raise MtxError(f"cannot merge into {path.name}: {len(unknown)} row(s) are not in the manifest, "
                       f"e.g. {unknown[0]!r}", hint="rerun `mtx embed` with --force")
    rows = sorted(((src, i) for src in (0, 1) for i in range(len(ids[src]))), key=lambda si: rank[ids[si[0]][si[1]]])
    return compose(path, [path, extra], rows, [ids[s][i] for s, i in rows],
                   [hashes[s][i] for s, i in rows] if hashed else None, None, attrs or {})


def compose(path: Path, sources: Sequence[Path], picks: Sequence[tuple[int, int]], ids: Sequence[str],
            hashes: Sequence[str] | None, failed: Sequence[tuple[str, str, str]] | None,
            attrs: dict[str, Any], attrs_from: int = 0) -> int:
    """Write the store at ``path`` from rows of other stores; return its rows.

    ``picks[k] = (s, i)``: output row ``k`` (id ``ids[k]``, content hash ``hashes[k]``) is row ``i`` of
    ``sources[s]``. Every per-row dataset the sources hold (``embeddings``, ``tag_probs``, ``windows``
    + ``window_offsets``) is copied in runs of consecutive rows (never all N x D in memory); each
    source that gives rows must hold the same ones. ``failed``: the failures the store lists (None:
    none). The attributes are those of ``sources[attrs_from]`` updated with ``attrs``. The result is
    written to a temporary file and replaces ``path`` atomically (a source may be ``path`` itself).
    """
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(h5py.File(p, "r")) for p in sources]
        used = sorted({s for s, _ in picks})
        names = [n for n in ("embeddings", "tag_probs") if any(n in f for f in files)]
        windows = any("windows" in files[s] for s in used)
        for name in names + (["windows", "window_offsets"] if windows else []):
            if any(name not in files[s] for s in used):
                raise MtxError(f"cannot merge into {path.name}: only one of the stores has `{name}`",
                               hint="rerun `mtx embed` with --force")
        runs = _runs(list(picks))
        sizes = [f["embeddings"].shape[0] for f in files]
        offsets = ([f["window_offsets"][()] if "window_offsets" in f else np.zeros(s + 1, np.int64)
                    for f, s in zip(files, sizes)] if windows else None)
        n = len(picks)
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as out:
                _strings(out, "ids", ids, maxshape=(None,), chunks=(4096,))
                if hashes is not None:
                    _strings(out, HASHES, hashes, maxshape=(None,), chunks=(4096,))
                # A store without rows may lack a dataset (no windows at all); no run then reads it.
                for name in names:
                    _copy_runs(out, name, [f.get(name) for f in files], runs, [np.arange(k + 1) for k in sizes], n)
                if windows:
                    counts = [int(np.diff(offsets[s])[i]) for s, i in picks]
                    _copy_runs(out, "windows", [f.get("windows") for f in files], runs, offsets, int(sum(counts)))
                    out.create_dataset("window_offsets", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
                if failed is not None:
                    write_failures(out, failed)
                base = files[attrs_from]
                for k, v in {**{k: base.attrs[k] for k in base.attrs}, **attrs}.items():
                    out.attrs[k] = v if v is not None else ""
                out.attrs["count"] = n
    return n


def _runs(rows: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(source, first, end) runs of consecutive rows of one source, in output order."""
    out: list[list[int]] = []
    for src, i in rows:
        if out and out[-1][0] == src and out[-1][2] == i:
            out[-1][2] = i + 1
        else:
            out.append([src, i, i + 1])
    return [(s, a, b) for s, a, b in out]


def _copy_runs(out: h5py.File, name: str, sources: list[h5py.Dataset | None], runs: list[tuple[int, int, int]],
               offsets: list[np.ndarray], total: int) -> None:
    """Copy row runs of ``sources`` into a new dataset ``name`` of ``total`` rows; run ``(s, a, b)`` covers
    the rows ``offsets[s][a]:offsets[s][b]`` of source ``s`` (identity offsets for per-track datasets)."""
    present = [d for d in sources if d is not None]
    first = next((d for d in present if d.shape[0]), present[0])   # its width, dtype and attributes
    width = first.shape[1]
    ds = out.create_dataset(name, shape=(total, width), maxshape=(None, width), dtype=first.dtype,
                            chunks=(chunk_rows(width, first.dtype.itemsize), width))
    for key in first.attrs:
        ds.attrs[key] = first.attrs[key]
    block = rows_for_bytes(width * first.dtype.itemsize)
    at = 0
    for s, a, b in runs:
        lo, hi = int(offsets[s][a]), int(offsets[s][b])
        for start in range(lo, hi, block):
            stop = min(hi, start + block)
            ds[at:at + stop - start] = sources[s][start:stop].astype(first.dtype, copy=False)
            at += stop - start


def discard(path: Path) -> None:
    path.unlink(missing_ok=True)
    shutil.rmtree(parts_dir(path), ignore_errors=True)


def remove_parts(path: Path) -> None:
    shutil.rmtree(parts_dir(path), ignore_errors=True)


class EmbeddingStore:
    """Read-only access to a finished store. Rows are read on demand, never all at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise MtxError(f"embedding store not found: {self.path}",
                           hint="run `mtx embed --audio-encoder NAME` first")
        self._f: h5py.File | None = None
        try:
            self._f = h5py.File(self.path, "r")
            self._emb = self._f["embeddings"]
            raw_ids = self._f["ids"][()]
        except (OSError, KeyError) as e:
            self.close()  # a file without our datasets must not stay open (and locked) behind the error
            raise MtxError(f"{self.path} is not a valid embedding store ({e})",
                           hint="rerun `mtx embed` with --force") from None
        self.ids: list[str] = h5_strings(raw_ids)
        self._pos = {i: k for k, i in enumerate(self.ids)}
        self.attrs: dict[str, Any] = {k: _attr(v) for k, v in self._f.attrs.items()}
        try:
            self._check_shape()
            self._check_finite()
        except MtxError:
            self.close()
            raise

    def _check_shape(self) -> None:
        shape = tuple(self._emb.shape)
        if len(shape) != 2 or shape[1] < 1:
            raise MtxError(f"store {self.path} is malformed: embeddings have shape {shape}, expected [N, D]",
                           hint="rerun `mtx embed` with --force")
        if shape[0] != len(self.ids):
            raise MtxError(f"store {self.path} is malformed: {len(self.ids)} ids for {shape[0]} embedding rows",
                           hint="rerun `mtx embed` with --force")
        if len(self._pos) != len(self.ids):
            raise MtxError(f"store {self.path} is malformed: {len(self.ids) - len(self._pos)} duplicate id(s)",
                           hint="rerun `mtx embed` with --force")
        if not np.issubdtype(self._emb.dtype, np.floating):
            raise MtxError(f"store {self.path} is malformed: embeddings are {self._emb.dtype}, not floats",
                           hint="rerun `mtx embed` with --force")

    def _check_finite(self, block: int = 8192) -> None:
        """Refuse NaN/inf rows at load (streamed): they would turn training into "diverged" and search into NaN."""
        bad, first = 0, None
        for start in range(0, len(self.ids), block):
            rows = np.asarray(self._emb[start:start + block])
            ok = np.isfinite(rows).all(axis=1)
            if not ok.all():
                bad += int((~ok).sum())
                if first is None:
                    first = self.ids[start + int(np.flatnonzero(~ok)[0])]
        if bad:
            raise MtxError(f"store {self.path} has {bad} row(s) with non-finite values (NaN or inf), "
                           f"e.g. {first!r}",
                           hint="re-embed with `mtx embed --force` (a corrupt file or an unstable encoder)")

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()  # h5py: closing an already closed file is a no-op

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self._emb.shape[1])

    @property
    def encoder(self) -> str:
        return str(self.attrs.get("encoder", ""))

    def has(self, id_: str) -> bool:
        return id_ in self._pos

    @property
    def hashes(self) -> list[str] | None:
        """The content hash of each row (``manifest.content_hash``), or None for a store made before them."""
        if HASHES not in self._f:
            return None
        values = h5_strings(self._f[HASHES][()])
        if len(values) != len(self.ids):
            raise MtxError(f"store {self.path} is malformed: {len(values)} content hashes for {len(self.ids)} rows",
                           hint="rerun `mtx embed` with --force")
        return values

    def failures(self) -> list[tuple[str, str, str]]:
        """(id, content hash or "", reason) of the tracks that failed when the store was built."""
        return _part_failures(self._f)

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        return np.array([self._pos[i] for i in ids], dtype=np.int64)

    def rows(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 rows at the given positions (any order, duplicates allowed)."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort(pos, kind="stable")
        uniq, inverse = np.unique(pos[order], return_inverse=True)
        block = self._emb[uniq]  # h5py needs increasing indices
        out = np.empty((pos.size, self.dim), dtype=np.float32)
        out[order] = block[inverse]
        return out

    def get(self, ids: Sequence[str]) -> np.ndarray:
        return self.rows(self.positions(ids))

    def iter_chunks(self, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 [rows, D]) blocks in row order; ``size`` rows, by default ``READ_BYTES`` worth."""
        size = size or rows_for_bytes(4 * self.dim)
        for start in range(0, len(self), size):
            yield start, np.asarray(self._emb[start:start + size], dtype=np.float32)

    def mean_std(self, positions: np.ndarray | None = None, chunk: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std, streamed in float64 (Chan et al. parallel merge).

        ``chunk`` rows per read, by default as many as fit ``READ_BYTES`` with the float32 read (two
        copies inside ``rows``) and the one float64 working copy, which is centred and squared in place.
        """
        n = 0
        mean = np.zeros(self.dim, dtype=np.float64)
        m2 = np.zeros(self.dim, dtype=np.float64)
        sel = np.arange(len(self)) if positions is None else np.sort(np.asarray(positions))
        chunk = chunk or rows_for_bytes(self.dim * (4 + 4 + 8))
        for s in range(0, len(sel), chunk):
            x = self.rows(sel[s:s + chunk]).astype(np.float64)
            k = len(x)
            bm = x.mean(0)
            x -= bm
            np.square(x, out=x)
            bm2 = x.sum(0)
            delta = bm - mean
            tot = n + k
            mean += delta * k / tot
            m2 += bm2 + delta**2 * n * k / tot
            n = tot
        if n == 0:
            raise MtxError("no embeddings to compute statistics from", hint="check the manifest split")
        std = np.sqrt(m2 / max(1, n - 1))
        return mean.astype(np.float32), std.astype(np.float32)


class TagTable:
    """Read-only zero-shot tags of a store: its own ``tag_probs``, else those of its tag side file."""

    def __init__(self, store_path: Path) -> None:
        store_path = Path(store_path)
        side = tags_path(store_path)
        self.path = store_path
        if not _has_dataset(store_path, "tag_probs"):
            self.path = side
        if not _has_dataset(self.path, "tag_probs"):
            raise MtxError(f"{store_path} has no tag probabilities",
                           hint="run `mtx embed` with --tags and an encoder that has a tagger")
        self._f = h5py.File(self.path, "r")
        self.ids: list[str] = h5_strings(self._f["ids"][()])
        self._tags = self._f["tag_probs"]
        self.tag_names: list[str] = [str(_attr(v)) for v in self._tags.attrs["tag_names"]]

    def __enter__(self) -> "TagTable":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __len__(self) -> int:
        return len(self.ids)

    def iter_chunks(self, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 [rows, T]) blocks of ``tag_probs`` in row order; by default ``READ_BYTES`` worth."""
        size = size or rows_for_bytes(4 * self._tags.shape[1])
        for start in range(0, len(self), size):
            yield start, np.asarray(self._tags[start:start + size], dtype=np.float32)


def has_tags(store_path: Path) -> bool:
    """Whether tags exist for the store at ``store_path`` (inside it or in its side file)."""
    return _has_dataset(Path(store_path), "tag_probs") or _has_dataset(tags_path(Path(store_path)), "tag_probs")


def _has_dataset(path: Path, name: str) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return name in f and "ids" in f
    except OSError:
        return False


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
