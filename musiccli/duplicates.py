"""`mtx duplicates`: the same recording stored more than once in a library.

Two kinds of evidence, both read from what earlier stages already wrote (nothing is decoded here):

- **byte-identical copies**: the same size and the same SHA-256;
- **the same audio, encoded again** (a FLAC and an MP3 of one rip, another rip or master): the
  cosine similarity of the tracks' stored embeddings, standardised by the library's mean and std per
  dimension, is at least the encoder's threshold, and the
  durations agree (re-encodes keep the length; a different song of the same length is rare, and a
  song of another length is never a duplicate).

Thresholds are per encoder and measured, not guessed (``benchmarks/duplicate_thresholds.py``: the
similarity of re-encodes against the most similar *different* track by the same artist). An encoder
that was not measured needs ``--threshold``.

Pairs are found block-wise (memory O(block x N)), then grouped by complete linkage inside each
connected component, so a chain a~b~c of near neighbours never joins a and c unless they are alike
too: one group never holds two different songs just because a third sits between them.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MtxError
from .manifest import Record, read_manifest, resolve_manifest
from .progress import NullProgress, Progress
from .state import StateDir
from .store import EmbeddingStore, rows_for_bytes

log = logging.getLogger(__name__)

# encoder -> (threshold, where it comes from), on standardised vectors (see comparable_vectors).
# Measured with benchmarks/duplicate_thresholds.py on 2026-12-03: 40 synth songs of 20 s, each re-encoded
# to MP3 128k, Opus 96k, AAC 128k and 22.05 kHz FLAC. dsp: lowest re-encode 0.9340 (AAC), highest
# different song by the same artist 0.9323, so the midpoint 0.9331. musicnn is not listed: on that corpus
# its re-encodes (lowest 0.655, Opus/AAC) overlap different songs by the same artist (up to 0.969), so no
# threshold separates them and `--threshold` must be given. Raw (unstandardised) cosines overlapped for
# both encoders (re-encodes down to 0.93, other songs up to 0.997).
# Checked on real audio on 2026-12-04 (--originals: 66 excerpts of 20-30 s by 6 composers and folk
# collections, from benchmarks/real_audio/build_library.py): dsp's re-encodes >= 0.945 (Opus), other
# pieces with an agreeing duration (the pairs `mtx duplicates` compares) <= 0.847, so 0.9331 holds; and
# `mtx duplicates -e dsp` grouped 263 of the 264 re-encodes with their original, in 66 groups, none mixed.
# musicnn overlaps there too: raw re-encodes >= 0.969, two different chorales up to 0.9965.
THRESHOLDS: dict[str, tuple[float, str]] = {
    "dsp": (0.9331, "measured: re-encodes >= 0.9340, other songs by the artist <= 0.9323"),
}

DURATION_TOLERANCE = 2.0      # seconds, or
DURATION_RELATIVE = 0.02      # 2 % of the longer track, whichever is larger


@dataclass
class DuplicatesConfig:
    manifest: str | None = None
    encoder: str | None = None
    threshold: float | None = None
    duration_tolerance: float = DURATION_TOLERANCE
    identical_only: bool = False
    block: int | None = None


@dataclass
class DuplicateItem:
    id: str
    path: str
    artist: str | None
    title: str | None
    album: str | None
    format: str
    bitrate: int | None      # kbit/s, from the file's header
    duration: float
    size: int | None

    @classmethod
    def of(cls, r: Record) -> "DuplicateItem":
        p = Path(r.audio_path)
        try:
            size = p.stat().st_size
        except OSError:
            size = None
        return cls(id=r.id, path=r.audio_path, artist=r.artist, title=r.title,
                   album=r.extra.get("album") if isinstance(r.extra.get("album"), str) else None,
                   format=p.suffix.lstrip(".").lower() or "?", bitrate=_bitrate(p), duration=r.duration, size=size)


@dataclass
class DuplicateGroup:
    items: list[DuplicateItem]
    similarity: float        # the lowest pairwise similarity inside the group
    kind: str                # "identical" (same bytes) or "audio" (same recording, other bytes)


@dataclass
class DuplicatesResult:
    manifest: str
    encoder: str | None
    threshold: float | None
    threshold_source: str
    tracks: int
    without_embeddings: int
    groups: list[DuplicateGroup] = field(default_factory=list)

    @property
    def duplicate_files(self) -> int:
        """Files that could go: every item of every group but one."""
        return sum(len(g.items) - 1 for g in self.groups)


def _bitrate(path: Path) -> int | None:
    try:
        import mutagen

        f = mutagen.File(path)
    except Exception:  # unreadable headers only lose the bitrate column
        return None
    rate = getattr(getattr(f, "info", None), "bitrate", None)
    return int(round(rate / 1000)) if rate else None


def _sha256(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def identical_groups(records: list[Record]) -> list[list[int]]:
    """Indices of byte-identical files: grouped by size first, hashed only where sizes collide."""
    by_size: dict[int, list[int]] = defaultdict(list)
    for k, r in enumerate(records):
        try:
            by_size[Path(r.audio_path).stat().st_size].append(k)
        except OSError:
            continue
    groups = []
    for same in by_size.values():
        if len(same) < 2:
            continue
        by_hash: dict[str, list[int]] = defaultdict(list)
        for k in same:
            digest = _sha256(records[k].audio_path)
            if digest is not None:
                by_hash[digest].append(k)
        groups += [g for g in by_hash.values() if len(g) > 1]
    return groups


def durations_agree(a: float, b: float, tolerance: float = DURATION_TOLERANCE) -> bool:
    return abs(a - b) <= max(tolerance, DURATION_RELATIVE * max(a, b))


def comparable_vectors(store: EmbeddingStore, ids: list[str], standardise: bool) -> np.ndarray:
    """Unit rows for ``ids``; ``standardise`` first subtracts the library's mean and divides by its std
    per dimension, so the similarity measures how two tracks differ from the library's average sound
    rather than how much every track shares (raw cosines of non-negative features all sit near 1)."""
    x = store.get(ids).astype(np.float32)
    if standardise:
        mean, std = store.mean_std()
        x = (x - mean) / np.maximum(std, 1e-6)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similar_pairs(vectors: np.ndarray, durations: np.ndarray, threshold: float, tolerance: float,
                  block: int | None = None, progress: Progress | None = None) -> dict[tuple[int, int], float]:
    """{(i, j): cosine} for i < j with cosine >= threshold and agreeing durations; O(block x N) memory."""
    progress = progress or NullProgress()
    n = len(vectors)
    x = vectors.astype(np.float32, copy=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    block = block or rows_for_bytes(4 * max(1, n), 64 << 20)
    pairs: dict[tuple[int, int], float] = {}
    with progress.task("Comparing tracks", total=n, unit="tracks") as task:
        for start in range(0, n, block):
            progress.check_interrupt()
            sims = x[start:start + block] @ x.T
            rows, cols = np.nonzero(sims >= threshold)
            for r, c in zip(rows.tolist(), cols.tolist()):
                i = start + r
                if c > i and durations_agree(float(durations[i]), float(durations[c]), tolerance):
                    pairs[(i, c)] = float(sims[r, c])
            task.advance(min(block, n - start))
    return pairs


def complete_linkage(members: list[int], sim: dict[tuple[int, int], float]) -> list[list[int]]:
    """Split one connected component into groups whose every pair is an edge (greedy, deterministic)."""
    def alike(a: int, b: int) -> bool:
        return (min(a, b), max(a, b)) in sim

    degree = {m: sum(alike(m, o) for o in members if o != m) for m in members}
    groups: list[list[int]] = []
    for m in sorted(members, key=lambda k: (-degree[k], k)):
        for g in groups:
            if all(alike(m, o) for o in g):
                g.append(m)
                break
        else:
            groups.append([m])
    return [sorted(g) for g in groups if len(g) > 1]


def _components(n: int, edges: dict[tuple[int, int], float]) -> list[list[int]]:
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in edges:
        parent[find(i)] = find(j)
    comp: dict[int, list[int]] = defaultdict(list)
    for k in {k for e in edges for k in e}:
        comp[find(k)].append(k)
    return [sorted(c) for c in comp.values() if len(c) > 1]


def _pick_encoder(state: StateDir, manifest: str, encoder: str | None) -> str | None:
    if encoder:
        if not state.embeddings_path(encoder, manifest).exists():
            raise MtxError(f"no {encoder} embeddings for manifest {manifest!r}",
                           hint=f"run `mtx embed --audio-encoder {encoder} --manifest {manifest}` first")
        return encoder
    found = state.list_encoders_with_embeddings(manifest)
    measured = [e for e in found if e in THRESHOLDS]
    return (measured or found or [None])[0]


def _threshold(encoder: str, cfg: DuplicatesConfig) -> tuple[float, str]:
    if cfg.threshold is not None:
        if not -1.0 <= cfg.threshold <= 1.0:
            raise MtxError(f"--threshold must be a cosine similarity in [-1, 1] (got {cfg.threshold})",
                           hint="re-encodes of one track score near 1; try 0.99")
        return cfg.threshold, "--threshold"
    if encoder not in THRESHOLDS:
        known = ", ".join(sorted(THRESHOLDS)) or "none"
        raise MtxError(f"no measured duplicate threshold for encoder {encoder!r} (measured: {known})",
                       hint="pass --threshold, or measure one with benchmarks/duplicate_thresholds.py")
    value, source = THRESHOLDS[encoder]
    return value, source


def run_duplicates(state: StateDir, cfg: DuplicatesConfig, progress: Progress | None = None) -> DuplicatesResult:
    """Group the library's tracks that hold the same recording (see the module docstring)."""
    progress = progress or NullProgress()
    if cfg.duration_tolerance < 0:
        raise MtxError(f"--duration-tolerance must be >= 0 seconds (got {cfg.duration_tolerance})")
    mname, mpath = resolve_manifest(state, cfg.manifest)
    records = read_manifest(mpath)
    encoder = None if cfg.identical_only else _pick_encoder(state, mname, cfg.encoder)
    edges: dict[tuple[int, int], float] = {}
    with progress.task("Hashing files of equal size", total=None, unit="files"):
        for g in identical_groups(records):
            for a in g:
                for b in g:
                    if a < b:
                        edges[(a, b)] = 1.0
    identical = set(edges)
    threshold, source, missing = None, "byte-identical files only", 0
    if encoder is not None:
        threshold, source = _threshold(encoder, cfg)
        with EmbeddingStore(state.embeddings_path(encoder, mname)) as store:
            present = [k for k, r in enumerate(records) if store.has(r.id)]
            missing = len(records) - len(present)
            vectors = comparable_vectors(store, [records[k].id for k in present], standardise=True)
        durations = np.array([records[k].duration for k in present], dtype=np.float64)
        for (i, j), s in similar_pairs(vectors, durations, threshold, cfg.duration_tolerance, cfg.block,
                                       progress).items():
            key = (present[i], present[j])
            edges[key] = max(s, edges.get(key, -1.0))
        if missing:
            log.info("%d track(s) have no %s embedding and were compared by bytes only", missing, encoder)
    groups = []
    for comp in _components(len(records), edges):
        for g in complete_linkage(comp, edges):
            pair_sims = [edges[(a, b)] for a in g for b in g if a < b]
            kind = "identical" if all((a, b) in identical for a in g for b in g if a < b) else "audio"
            groups.append(DuplicateGroup(items=[DuplicateItem.of(records[k]) for k in g],
                                         similarity=round(min(pair_sims), 6), kind=kind))
    groups.sort(key=lambda g: (-g.similarity, g.items[0].id))
    log.info("%d duplicate group(s) among %d tracks", len(groups), len(records))
    return DuplicatesResult(manifest=mname, encoder=encoder, threshold=threshold, threshold_source=source,
                            tracks=len(records), without_embeddings=missing, groups=groups)


def m3u_hits(result: DuplicatesResult) -> list[dict[str, Any]]:
    """Every item of every group, group by group, as playlist entries."""
    return [{"audio_path": it.path, "duration": it.duration, "artist": it.artist, "title": it.title}
            for g in result.groups for it in g.items]
