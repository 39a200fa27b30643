"""The per-record sampling and splitting that ``manifest.sample_indices`` and ``manifest.split_assignment``
replaced, kept verbatim (from commit 1a2641a) as the naive reference the columnar code is tested against.

One Python object per record, one loop per step: slow on 100k records, and obviously what the
definitions in ``manifest`` say. ``tests/test_columnar_unify.py`` checks that both give the same rows and
the same splits on random manifests.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from musiccli.errors import MtxError
# _fill_empty_splits, _ranges, allocate_quota and duration_bin were not changed: both sides share them.
from musiccli.manifest import (_HELD_OUT_ORDER, SPLITS, Record, SplitSummary, _fill_empty_splits, _ranges, album_of,
                               allocate_quota, artist_of, duration_bin, group_of)

log = logging.getLogger(__name__)


def _stable_keys(seed: int, strings: Iterable[str]) -> list[int]:
    """The seeded 64-bit key of each string: the big-endian BLAKE2b-64 digest of ``"{seed}:{string}"``.
    Sampling orders records by the key of their id, splits bucket components by the keys of their
    artists, so neither depends on input order. One loop: the hash dominates sampling 100k records."""
    prefix, blake2b, from_bytes = f"{seed}:", hashlib.blake2b, int.from_bytes
    return [from_bytes(blake2b((prefix + s).encode(), digest_size=8).digest(), "big") for s in strings]


def sample_records(records: Sequence[Record], max_samples: int | None = None, stratify_by: str = "dataset",
                   samples_per_dataset: int | None = None, seed: int = 0) -> list[Record]:
    """Pick a subset; the result is ordered by the seeded key of each id (``_stable_keys``).

    ``samples_per_dataset`` keeps the first that many of each dataset in shuffle order; ``max_samples``
    then takes an even share of each stratum (``allocate_quota``), again the first in shuffle order.
    Worked on record indices in one global shuffle order, so every step is a pass over a list."""
    if stratify_by not in ("dataset", "duration", "none"):
        raise MtxError(f"unknown --stratify-by {stratify_by!r}", hint="choose dataset, duration or none")
    keys = _stable_keys(seed, [r.id for r in records])
    pool = sorted(range(len(records)), key=keys.__getitem__)
    if samples_per_dataset:
        taken: dict[str, int] = defaultdict(int)
        kept = []
        for i in pool:
            ds = records[i].dataset or "unknown"
            if taken[ds] < samples_per_dataset:
                taken[ds] += 1
                kept.append(i)
        pool = kept
    if max_samples is not None and max_samples < len(pool):
        if stratify_by == "none":
            pool = pool[:max_samples]
        else:
            stratum = [records[i].dataset or "unknown" for i in pool] if stratify_by == "dataset" else \
                [duration_bin(records[i].duration) for i in pool]
            sizes: dict[str, int] = defaultdict(int)
            for g in stratum:
                sizes[g] += 1
            left = allocate_quota(dict(sizes), max_samples)
            kept = []
            for i, g in zip(pool, stratum):
                if left[g]:
                    left[g] -= 1
                    kept.append(i)
            pool = kept
    return [records[i] for i in pool]


def _components(records: Sequence[Record], artists: Sequence[str | None]) -> list[list[int]]:
    # Union-find over integer nodes: one per record's group, artist and album key.
    node: dict[str, int] = {}
    parent: list[int] = []

    def code(key: str) -> int:
        c = node.get(key)
        if c is None:
            c = node[key] = len(parent)
            parent.append(c)
        return c

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:          # path compression
            parent[x], x = root, parent[x]
        return root

    groups = []
    for r, artist in zip(records, artists):
        g = code("g:" + group_of(r))
        groups.append(g)
        album = album_of(r)
        for other in (artist and "a:" + artist, album and "l:" + album):
            if other:
                ra, rb = find(g), find(code(other))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        root = find(g)
        if root in members:
            members[root].append(i)
        else:
            members[root] = [i]
    return sorted(members.values())


def component_key(records: Sequence[Record], seed: int, artists: Sequence[str | None] | None = None,
                  memo: dict[str, int] | None = None) -> int:
    """The seeded hash a component is bucketed by.

    The minimum hash over the component's artists (over its groups when it has no artist): it depends
    only on which artists/recordings the component holds, not on how many records of them were
    sampled or which manifest they are in, so a record keeps its split under sampling. (A sample that
    drops the only record bridging two artists splits the component; each part then keeps the bucket
    of the artist with the smaller hash, so the part holding that artist is unchanged.)
    ``artists``: each record's ``artist_of`` when known; ``memo``: node -> hash, shared by the
    components of one manifest.
    """
    named = {a for a in (artists if artists is not None else map(artist_of, records)) if a}
    nodes = [f"a:{a}" for a in named] if named else [f"g:{group_of(r)}" for r in records]
    memo = {} if memo is None else memo
    new = [n for n in nodes if n not in memo]
    if new:
        memo.update(zip(new, _stable_keys(seed, new)))
    return min(memo[n] for n in nodes)


def bucket(key: int, ratios: tuple[float, float, float]) -> str:
    u = key / 2.0**64
    for name, (lo, hi) in _ranges(ratios).items():
        if lo <= u < hi:
            return name
    return next(name for name, ratio in zip(reversed(SPLITS), reversed(ratios)) if ratio > 0)


def assign_splits(records: Sequence[Record], ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                  keep_official: bool = False, previous: dict[str, str] | None = None) -> SplitSummary:
    """The per-record ``manifest.assign_splits``, which documents what it does."""
    if abs(sum(ratios) - 1.0) > 1e-6 or any(x < 0 for x in ratios):
        raise MtxError(f"split ratios {ratios} must be non-negative and sum to 1")
    summary = SplitSummary()
    artists = [artist_of(r) for r in records]
    components = _components(records, artists)
    memo: dict[str, int] = {}
    keys: list[int] = []
    hashed: list[str | None] = []       # the bucketed split; None for components pinned by official splits
    pinned: list[str | None] = []
    for members in components:
        rs = [records[i] for i in members]
        official = {r.split for r in rs if r.split} if keep_official else set()
        kept = {previous[r.id] for r in rs if r.id in previous} if previous else set()
        keys.append(component_key(rs, seed, [artists[i] for i in members], memo))
        if kept:
            pinned.append(min(kept, key=_HELD_OUT_ORDER.__getitem__))
            hashed.append(None)
        elif official:
            split = min(official, key=_HELD_OUT_ORDER.__getitem__)
            if len(official) > 1:
                summary.official_conflicts += 1
                summary.overridden += sum(1 for r in rs if r.split and r.split != split)
            pinned.append(split)
            hashed.append(None)
        else:
            pinned.append(None)
            hashed.append(bucket(keys[-1], ratios))
    summary.components = len(components)
    if not previous and (not keep_official or all(p is None for p in pinned)):
        summary.filled = _fill_empty_splits(keys, hashed, ratios)
    for members, p, h in zip(components, pinned, hashed):
        for i in members:
            records[i].split = p or h
    if summary.overridden:
        log.debug("%d record(s) in %d recording/artist component(s) had conflicting official splits and "
                    "were moved to their component's most held-out split", summary.overridden,
                    summary.official_conflicts)
    return summary


