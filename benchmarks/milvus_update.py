"""Benchmark: a Milvus collection brought up to date in place against one built from scratch.

Starts the Milvus 2.3.5 standalone server the tests use (``tests/servers/milvus.py``, installed by
``.ci/install_servers.sh`` under ``$MTX_TEST_SERVERS``), builds a collection of N random unit
vectors through the backend's ``build``, changes 1 % of the library (0.5 % new tracks, 0.25 %
changed, 0.25 % removed) and applies it with ``update``; then builds the final library from
scratch into a second collection. Prints both wall times, the rows each wrote, and whether the
two collections answer the same top 10 for a handful of queries.

    MTX_TEST_SERVERS=~/.cache/mtx-test-servers python benchmarks/milvus_update.py --n 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_dir(d: Path, ids: list[str], vectors: np.ndarray) -> None:
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "vectors.npy", vectors)
    (d / "ids.json").write_text(json.dumps(ids))
    (d / "items.json").write_text(json.dumps({i: {"title": i, "artist": "a"} for i in ids}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()

    from servers.milvus import milvus_server

    from musiccli.index_backends import milvus
    from musiccli.progress import NullProgress

    rng = np.random.default_rng(0)
    ids = [f"t{i:07d}" for i in range(args.n)]
    vectors = unit(rng, args.n, args.dim)
    k_new, k_changed, k_removed = args.n // 200, args.n // 400, args.n // 400
    removed = set(rng.choice(args.n, k_removed, replace=False).tolist())
    kept = [i for i in range(args.n) if i not in removed]
    changed = set(rng.choice(kept, k_changed, replace=False).tolist())
    new_ids = [ids[i] for i in kept] + [f"n{i:07d}" for i in range(k_new)]
    new_vectors = np.concatenate([vectors[kept], unit(rng, k_new, args.dim)])
    source = np.array([i if i not in changed else -1 for i in kept] + [-1] * k_new, dtype=np.int64)
    for k, i in enumerate(kept):
        if i in changed:
            new_vectors[k] = unit(rng, 1, args.dim)[0]

    with tempfile.TemporaryDirectory() as tmp, milvus_server(Path(tmp) / "milvus") as uri:
        tmp = Path(tmp)
        old, nxt, fresh = tmp / "old", tmp / "next", tmp / "fresh"
        write_dir(old, ids, vectors)
        write_dir(nxt, new_ids, new_vectors)
        write_dir(fresh, new_ids, new_vectors)
        opts = {"uri": uri, "index_name": "bench"}
        t = time.perf_counter()
        meta = {"backend_meta": milvus.build(old, np.load(old / "vectors.npy", mmap_mode="r"), opts, NullProgress(),
                                             lambda **_: None, {}, ids, {})}
        first = time.perf_counter() - t
        t = time.perf_counter()
        bm = milvus.update(nxt, old, np.load(nxt / "vectors.npy", mmap_mode="r"), source, meta, opts, NullProgress())
        incremental = time.perf_counter() - t
        t = time.perf_counter()
        milvus.build(fresh, np.load(fresh / "vectors.npy", mmap_mode="r"), {"uri": uri, "index_name": "fresh"},
                     NullProgress(), lambda **_: None, {}, new_ids, {})
        scratch = time.perf_counter() - t
        q = unit(rng, 8, args.dim)
        a = milvus.open(nxt, {"name": "bench", "backend_meta": bm, "backend_options": {"uri": uri}},
                        np.load(nxt / "vectors.npy", mmap_mode="r"))
        b = milvus.open(fresh, {"name": "fresh", "backend_meta": {**bm, "collection": milvus.collection_name("fresh")},
                                "backend_options": {"uri": uri}}, np.load(fresh / "vectors.npy", mmap_mode="r"))
        same = all(a.search(x, 10)[0].tolist() == b.search(x, 10)[0].tolist() for x in q)
    print(f"{args.n} tracks x {args.dim}: first build {first:.1f} s")
    print(f"1 % changed ({k_new} new, {k_changed} changed, {k_removed} removed):")
    print(f"  in-place update {incremental:.2f} s: {bm['upserted_rows']} upserted, {bm['deleted_rows']} deleted")
    print(f"  from scratch    {scratch:.2f} s: {len(new_ids)} rows written  ({scratch / incremental:.1f}x)")
    print(f"  same top 10 for {len(q)} queries: {same}")


if __name__ == "__main__":
    main()
