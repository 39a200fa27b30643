"""Search latency: `musiccli.search.rank_top_k` against a bare numpy matmul + argpartition.

Random unit vectors stand in for an index (10k and 100k tracks x 512 dims); the query
vector is precomputed, so text encoding is excluded and only the ranking is timed.
Both paths run in the same process on the same matrix. Reports the median over
repetitions after warm-up. Targets at 100k: <= 50 ms and <= 1.2x the bare baseline.

    python benchmarks/search_latency.py [--reps 50] [--dim 512] [--k 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from musiccli.search import rank_top_k


def bare(vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ q
    return np.argpartition(scores, len(scores) - k)[len(scores) - k:]


def median_ms(fn, reps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"cpus available: {len(os.sched_getaffinity(0))}, numpy {np.__version__}")
    for n in args.sizes:
        m = rng.standard_normal((n, args.dim), dtype=np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        q = m[123] + 0.01 * rng.standard_normal(args.dim, dtype=np.float32)
        q /= np.linalg.norm(q)
        rows, _ = rank_top_k(m, q, args.k)
        if rows[0] != 123 or set(rows.tolist()) != set(bare(m, q, args.k).tolist()):
            raise SystemExit("rank_top_k disagrees with the bare baseline")
        # Interleave the two measurements so drift (thermal, other load) hits both alike.
        ours, base = [], []
        for _ in range(3):
            ours.append(median_ms(lambda: rank_top_k(m, q, args.k), args.reps // 3 or 1))
            base.append(median_ms(lambda: bare(m, q, args.k), args.reps // 3 or 1))
        t_ours, t_base = statistics.median(ours), statistics.median(base)
        ok = "OK" if t_ours <= 50 and t_ours <= 1.2 * t_base else "MISS"
        print(f"{n:>7} x {args.dim}: search {t_ours:7.2f} ms | bare matmul+argpartition {t_base:7.2f} ms | "
              f"ratio {t_ours / t_base:.2f}x" + (f" | target <= 50 ms and <= 1.2x: {ok}" if n >= 100_000 else ""))


if __name__ == "__main__":
    main()
