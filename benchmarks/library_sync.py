"""Benchmark: `mtx sync` on a changing library, second sync against a from-scratch one.

Generates N short tagged audio files (default 20,000 WAVs of 0.5 s, 8 kHz, in Artist/Album folders),
syncs them from scratch, then changes the library (1 % added, 0.5 % replaced by other audio,
0.5 % removed) and syncs again. Both syncs run in this process through ``musiccli.sync.run_sync``
(scan -> verify -> unify -> embed; neither encoder here has a text tower, so no index), and the
second must equal the first's work on the changed files only.

The encoder sets what the from-scratch sync costs, so the ratio is given for two:
``--audio-encoder dsp`` (a few DSP statistics per file: the sync is all file I/O and bookkeeping,
the worst case for the ratio) and ``--audio-encoder musicnn`` (AudioMuse-AI's own analysis network,
weights bundled, the cheapest real neural encoder a self-hoster runs; CLAP, the sync default, is a
larger network, so its ratio would be higher still; its weights are not fetched here).

Prints the wall time of each sync and of each stage, the ratio (from-scratch / incremental),
the tracks the encoder ran on, and the peak RSS of the process.

    python benchmarks/library_sync.py                          # 20,000 files, dsp
    python benchmarks/library_sync.py --audio-encoder musicnn  # about 20 min on 2 CPU cores
    python benchmarks/library_sync.py --n 2000 --workers 0
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musiccli.state import StateDir  # noqa: E402
from musiccli.sync import SyncConfig, run_sync  # noqa: E402

SR = 8000


def _tone(i: int, seconds: float) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.2 * np.sin(2 * np.pi * (100 + (i * 37) % 3000) * t)).astype(np.float32)


def write_file(root: Path, i: int, seconds: float, variant: int = 0) -> Path:
    path = root / f"Artist {i % 500:03d}" / f"Album {i % 7}" / f"{i:06d} Track {i}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _tone(i + 100_000 * variant, seconds), SR)
    return path


def peak_rss_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="files in the library (default 20000)")
    ap.add_argument("--seconds", type=float, default=0.5, help="length of each file")
    ap.add_argument("--workers", type=int, default=None, help="embed decoding workers (default: the stage's)")
    ap.add_argument("--audio-encoder", default="dsp", help="the encoder both syncs run (default dsp)")
    ap.add_argument("--no-verify", action="store_true", help="leave verify out of both syncs")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        music, state = Path(tmp) / "Music", StateDir.resolve(Path(tmp) / "state")
        t0 = time.perf_counter()
        for i in range(args.n):
            write_file(music, i, args.seconds)
        print(f"generated {args.n:,} files in {time.perf_counter() - t0:.1f} s")
        cfg = SyncConfig(path=music, audio_encoder=args.audio_encoder, device="cpu", num_workers=args.workers,
                         chunk_tracks=256, verify=not args.no_verify)

        t0 = time.perf_counter()
        first = run_sync(state, cfg)
        scratch_s = time.perf_counter() - t0
        rss_first = peak_rss_mb()

        n_add, n_change, n_remove = int(0.01 * args.n), int(0.005 * args.n), int(0.005 * args.n)
        picked = rng.choice(args.n, size=n_change + n_remove, replace=False)
        for i in picked[:n_change]:
            write_file(music, int(i), args.seconds, variant=1)
        for i in picked[n_change:]:
            write_file(music, int(i), args.seconds).unlink()
        for i in range(args.n, args.n + n_add):
            write_file(music, i, args.seconds, variant=2)   # audio no removed file had (that would be a move)

        t0 = time.perf_counter()
        second = run_sync(state, cfg)
        incremental_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        third = run_sync(state, cfg)
        nothing_s = time.perf_counter() - t0

    print(f"from-scratch sync : {scratch_s:8.1f} s  {first.counts()}  stages {first.stages}")
    print(f"incremental sync  : {incremental_s:8.1f} s  {second.counts()}  stages {second.stages}")
    print(f"unchanged sync    : {nothing_s:8.1f} s  embedded {third.embedded}  stages {third.stages}")
    print(f"encoder: {args.audio_encoder}; the incremental sync less the changed tracks' share of the first: "
          f"{incremental_s - scratch_s * second.embedded / max(first.embedded, 1):.1f} s")
    print(f"ratio (from-scratch / incremental): {scratch_s / incremental_s:.1f}x "
          f"(changes: {n_add} added, {n_change} changed, {n_remove} removed)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB (after the first sync: {rss_first:.0f} MB); "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
