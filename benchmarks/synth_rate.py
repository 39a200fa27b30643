"""Benchmark: synth generation rate (render + 16-bit FLAC write + sha256 + ledger), 1 vs N workers.

Runs the real download path (``run_download`` of the synth source) into fresh
temporary state dirs, so it measures exactly what `mtx download synth` does,
and prints clips/s for one worker and for N workers, and their ratio.

    python benchmarks/synth_rate.py                       # 48 clips of 5 s at 24 kHz, 1 vs min(4, CPUs)
    python benchmarks/synth_rate.py --n 400 --duration 10 --workers 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musiccli.download import DownloadRequest, run_download  # noqa: E402
from musiccli.progress import NullProgress  # noqa: E402
from musiccli.sources.base import DownloadConfig  # noqa: E402
from musiccli.state import StateDir  # noqa: E402


def rate(n: int, duration: float, sample_rate: int, workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DownloadConfig(source="synth", n=n, duration=duration, sample_rate=sample_rate, workers=workers)
        t0 = time.perf_counter()
        result = run_download(StateDir.resolve(tmp), DownloadRequest(cfg), NullProgress())
        seconds = time.perf_counter() - t0
        if result.ok != n:
            raise SystemExit(f"only {result.ok} of {n} clips were generated: {result.failures[:3]}")
    return seconds, n / seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="clips per run (default 48)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per clip (default 5)")
    ap.add_argument("--sample-rate", type=int, default=24000)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                    help="parallel workers to compare with 1 (default min(4, CPUs))")
    args = ap.parse_args(argv)
    # Warm-up: imports (torch via audio.py, the generator) happen once, outside the timings.
    rate(2, 0.5, args.sample_rate, 1)
    s1, r1 = rate(args.n, args.duration, args.sample_rate, 1)
    sn, rn = rate(args.n, args.duration, args.sample_rate, args.workers)
    audio_s = args.n * args.duration
    print(f"{args.n} clips x {args.duration:g} s at {args.sample_rate} Hz (CPUs: {os.cpu_count()})")
    print(f"1 worker  : {s1:7.2f} s  {r1:7.2f} clips/s  ({audio_s / s1:6.1f}x real time)")
    print(f"{args.workers} workers : {sn:7.2f} s  {rn:7.2f} clips/s  ({audio_s / sn:6.1f}x real time)")
    print(f"speed-up {args.workers} vs 1 worker: {rn / r1:.2f}x")


if __name__ == "__main__":
    main()
