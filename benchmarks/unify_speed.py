"""Benchmark: unify throughput on synthetic metadata (parse -> sample -> split -> write).

Writes N rows of synth-format metadata split over 4 datasets (no audio; the audio
existence check is excluded), then times the real code path:
``SynthSource.table`` (parse) -> ``unify.build_manifest`` (prefix, filter, stratified
sample, artist-aware split) -> ``manifest.write_manifest``.

The baseline, measured in the same run on the same files, is a naive pandas pipeline
doing the same kind of work (read_csv, groupby sample, per-artist split, to_json), so
the ratio says how our pure-Python path compares with the obvious dataframe version.

    python benchmarks/unify_speed.py                 # 100,000 records
    python benchmarks/unify_speed.py --n 1000000 --max-samples 200000
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musiccli.manifest import write_manifest  # noqa: E402
from musiccli.sources.synth import COLUMNS, SynthSource  # noqa: E402
from musiccli.unify import UnifyConfig, build_manifest  # noqa: E402

DATASETS = ("alpha", "beta", "gamma", "delta")
SHARES = (0.55, 0.25, 0.15, 0.05)   # unequal sizes, so the stratified quota has to redistribute


def write_metadata(base: Path, n: int) -> dict[str, Path]:
    roots = {}
    start = 0
    for ds, share in zip(DATASETS, SHARES):
        count = int(n * share) if ds != DATASETS[-1] else n - start
        root = base / ds
        root.mkdir(parents=True)
        with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(COLUMNS)
            for i in range(start, start + count):
                cid = f"synth-{i:07d}"
                w.writerow([cid, f"audio/{i % 100:02d}/{cid}.flac", "techno", 120 + i % 40, "A", "minor",
                            "synthesizer;drums", "energetic", "loud", f"{ds} artist {i % (count // 4 + 1)}",
                            f"Title {i}", "techno;dance", f"An energetic techno track number {i}",
                            json.dumps([f"alt caption {i}", f"another one {i}"]), 5.0 + (i % 400),
                            24000, "0" * 64])
        roots[ds] = root
        start += count
    return roots


def ours(roots: dict[str, Path], out: Path, cfg: UnifyConfig) -> tuple[float, int, dict[str, float]]:
    t0 = time.perf_counter()
    src = SynthSource()
    by_source = {}
    for ds, root in roots.items():
        table = src.table(root)
        by_source[ds] = table.set("dataset", [ds] * len(table))
    t1 = time.perf_counter()
    chosen, _ = build_manifest(by_source, cfg, check_audio=False)
    t2 = time.perf_counter()
    write_manifest(out, chosen)
    t3 = time.perf_counter()
    return t3 - t0, len(chosen), {"parse": t1 - t0, "sample+split": t2 - t1, "write": t3 - t2}


def baseline(roots: dict[str, Path], out: Path, cfg: UnifyConfig) -> tuple[float, int]:
    import numpy as np
    import pandas as pd

    t0 = time.perf_counter()
    frames = []
    for ds, root in roots.items():
        df = pd.read_csv(root / "metadata.csv")
        df["dataset"] = ds
        df["audio_path"] = str(root) + "/" + df["path"]
        df["alt_captions"] = df["alt_captions"].map(json.loads)
        df["tags"] = df["tags"].str.split(";")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    per = cfg.max_samples // len(roots) if cfg.max_samples else None
    if per:
        df = pd.concat([g.sample(n=min(len(g), per), random_state=cfg.seed) for _, g in df.groupby("dataset")])
    rng = np.random.default_rng(cfg.seed)
    artists = np.array(sorted(df["artist"].unique()), dtype=object)
    rng.shuffle(artists)
    cut = np.cumsum([0.8, 0.1]) * len(artists)
    split_of = {a: ("train" if i < cut[0] else "val" if i < cut[1] else "test") for i, a in enumerate(artists)}
    df["split"] = df["artist"].map(split_of)
    cols = ["id", "audio_path", "caption", "duration", "alt_captions", "dataset", "artist", "title", "tags", "split"]
    df[cols].to_json(out, orient="records", indent=1, force_ascii=False)
    return time.perf_counter() - t0, len(df)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="records in total (default 100000)")
    ap.add_argument("--max-samples", type=int, default=None, help="sample size (default: n // 2)")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = ap.parse_args(argv)
    cfg = UnifyConfig(max_samples=args.max_samples or args.n // 2, stratify_by="dataset", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        roots = write_metadata(base / "data", args.n)
        ours_s, _, phases = min((ours(roots, base / "ours.json", cfg) for _ in range(args.repeats)),
                                key=lambda x: x[0])
        base_s = min(baseline(roots, base / "base.json", cfg)[0] for _ in range(args.repeats))
        kept = len(json.loads((base / "ours.json").read_text()))
    print(f"records: {args.n:,} parsed, {kept:,} sampled (stratified by dataset over {len(DATASETS)} datasets)")
    print(f"mtx unify path   : {ours_s:7.3f} s  {args.n / ours_s:12,.0f} records/s  "
          f"({', '.join(f'{k} {v:.3f} s' for k, v in phases.items())})")
    print(f"pandas baseline  : {base_s:7.3f} s  {args.n / base_s:12,.0f} records/s")
    print(f"ratio (baseline / mtx): {base_s / ours_s:.2f}x  (>1 means mtx is faster)")


if __name__ == "__main__":
    main()
