"""Measure the duplicate threshold of each encoder that runs here: re-encodes against different tracks.

For every encoder it prints the cosine similarity of a track to its own re-encodes (FLAC -> MP3 128k,
Opus 96k, AAC 128k, and a 22.05 kHz resample) and to the most similar *different* track by the same
artist, then the threshold ``mtx duplicates`` should use: the midpoint of the gap between the lowest
re-encode similarity and the highest different-track similarity (or a refusal when they overlap).

Everything goes through the user's path, in separate processes: `mtx download synth` renders the
originals (or ``--originals`` names real ones), the script re-encodes them with FFmpeg (PyAV), then
`mtx download folder`, `mtx unify` and `mtx embed` build the stores that `mtx duplicates` reads.

    python benchmarks/duplicate_thresholds.py --n 60 --encoders dsp musicnn
    python benchmarks/duplicate_thresholds.py --originals /work/realaudio/dup-originals --encoders dsp musicnn

``--originals`` takes a library built by ``benchmarks/real_audio/build_library.py``: real compositions
rendered with a real soundfont, where different pieces by one composer share the instruments, the key
and the style, which makes them harder to tell apart than the procedural synth tracks. Its
``library.json`` says which files are by which artist.

The numbers in ``musiccli/duplicates.py`` (THRESHOLDS) come from this script; rerun it when an
encoder's version changes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CODECS = {  # name -> (container suffix, codec, bitrate, sample rate or None for the source rate)
    "mp3-128k": (".mp3", "libmp3lame", 128_000, None),
    "opus-96k": (".opus", "libopus", 96_000, 48_000),
    "aac-128k": (".m4a", "aac", 128_000, None),
    "flac-22k": (".flac", "flac", None, 22_050),
}


def mtx(state: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "musiccli", "--state-dir", str(state), "-q", *args]
    subprocess.run(cmd, check=True)


def reencode(src: Path, dst: Path, codec: str, bitrate: int | None, rate: int | None) -> None:
    """Decode ``src`` and encode it again with FFmpeg's encoder through PyAV (what a ripper would do)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        in_stream = inp.streams.audio[0]
        stream = out.add_stream(codec, rate=rate or in_stream.rate)
        if bitrate:
            stream.bit_rate = bitrate
        resampler = av.AudioResampler(format=stream.format.name if stream.format else "fltp",
                                      layout="mono", rate=stream.rate)
        for frame in inp.decode(in_stream):
            frame.pts = None
            for f in resampler.resample(frame):
                for packet in stream.encode(f):
                    out.mux(packet)
        for f in resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def build_library(work: Path, n: int, duration: float) -> dict[str, dict[str, str]]:
    """Render ``n`` synth originals and their re-encodes; returns relative path -> {track, artist, codec}."""
    state = work / "gen"
    mtx(state, "download", "synth", "--n", str(n), "--duration", str(duration), "--sample-rate", "44100")
    root = state / "datasets" / "synth"
    lib = work / "library"
    lib.mkdir()
    truth: dict[str, dict[str, str]] = {}
    with open(root / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        src = root / row["path"]
        base = f"{row['id']}"
        original = lib / f"{base}.flac"
        reencode(src, original, "flac", None, None)
        truth[original.name] = {"track": row["id"], "artist": row["artist"], "codec": "original"}
        for name, (suffix, codec, bitrate, rate) in CODECS.items():
            dst = lib / f"{base}.{name}{suffix}"
            reencode(original, dst, codec, bitrate, rate)
            truth[dst.name] = {"track": row["id"], "artist": row["artist"], "codec": name}
    return truth


def build_from_originals(work: Path, originals: Path, limit: int | None) -> dict[str, dict[str, str]]:
    """Re-encode the excerpts of a real-audio library (``build_library.py``'s ``library.json``)."""
    excerpts = json.loads((originals / "library.json").read_text())[:limit]
    lib = work / "library"
    lib.mkdir()
    truth: dict[str, dict[str, str]] = {}
    for k, x in enumerate(excerpts):
        src = originals / x["path"]
        track, artist = x["path"], x["tags"]["artist"]
        original = lib / f"{k:04d}.flac"
        reencode(src, original, "flac", None, None)
        truth[original.name] = {"track": track, "artist": artist, "codec": "original"}
        for name, (suffix, codec, bitrate, rate) in CODECS.items():
            dst = lib / f"{k:04d}.{name}{suffix}"
            reencode(original, dst, codec, bitrate, rate)
            truth[dst.name] = {"track": track, "artist": artist, "codec": name}
    return truth


def measure(state: Path, encoder: str, truth: dict[str, dict[str, str]], standardise: bool) -> dict:
    from musiccli.duplicates import comparable_vectors, durations_agree
    from musiccli.manifest import read_manifest
    from musiccli.store import EmbeddingStore

    manifests = sorted((state / "manifests").glob("*.json"))
    records = read_manifest(manifests[0])
    by_id = {r.id: truth[Path(r.audio_path).name] for r in records}
    seconds = {r.id: r.duration for r in records}
    with EmbeddingStore(state / "embeddings" / encoder / f"{manifests[0].stem}.h5") as store:
        ids = [i for i in store.ids if i in by_id]
        x = comparable_vectors(store, ids, standardise).astype(np.float64)
    sims = x @ x.T
    info = [by_id[i] for i in ids]
    originals = [k for k, t in enumerate(info) if t["codec"] == "original"]
    pos: dict[str, list[float]] = {c: [] for c in CODECS}
    neg_same_artist: list[float] = []
    neg_any: list[float] = []
    neg_same_length: list[float] = []     # different tracks whose durations agree: the pairs the tool compares
    for k in originals:
        t = info[k]
        for j, u in enumerate(info):
            if u["track"] == t["track"] and u["codec"] != "original":
                pos[u["codec"]].append(float(sims[k, j]))
            elif u["track"] != t["track"]:
                (neg_same_artist if u["artist"] == t["artist"] else neg_any).append(float(sims[k, j]))
                if durations_agree(seconds[ids[k]], seconds[ids[j]]):
                    neg_same_length.append(float(sims[k, j]))
    lo_pos = min(min(v) for v in pos.values())
    hi_neg = max(neg_same_artist + neg_any)
    hi_gated = max(neg_same_length) if neg_same_length else None
    return {
        "encoder": encoder, "standardised": standardise, "tracks": len(originals),
        "reencode_min": {c: round(min(v), 5) for c, v in pos.items()},
        "reencode_median": {c: round(float(np.median(v)), 5) for c, v in pos.items()},
        "different_same_artist_max": round(max(neg_same_artist), 5) if neg_same_artist else None,
        "different_same_artist_p99": round(float(np.quantile(neg_same_artist, 0.99)), 5) if neg_same_artist else None,
        "different_any_max": round(max(neg_any), 5) if neg_any else None,
        "gap": round(lo_pos - hi_neg, 5),
        "threshold": round((lo_pos + hi_neg) / 2, 4) if lo_pos > hi_neg else None,
        # What `mtx duplicates` decides on: a pair is compared only when the durations agree.
        "different_same_duration_pairs": len(neg_same_length),
        "different_same_duration_max": round(hi_gated, 5) if hi_gated is not None else None,
        "gap_with_duration": round(lo_pos - hi_gated, 5) if hi_gated is not None else None,
        "threshold_with_duration": round((lo_pos + hi_gated) / 2, 4)
        if hi_gated is not None and lo_pos > hi_gated else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="original tracks (default: 60 synth, every real one)")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--originals", type=Path, help="a real-audio library from benchmarks/real_audio/build_library.py "
                    "(default: render synth originals); --n then caps how many of its excerpts are used")
    ap.add_argument("--encoders", nargs="+", default=["dsp", "musicnn"])
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", type=Path, help="build in this folder and keep it; an existing one is reused")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="mtx-dup-") as tmp:
        work = args.keep or Path(tmp)
        if (work / "truth.json").exists():
            truth = json.loads((work / "truth.json").read_text())
        else:
            work.mkdir(parents=True, exist_ok=True)
            truth = (build_from_originals(work, args.originals, args.n) if args.originals
                     else build_library(work, args.n or 60, args.duration))
            (work / "truth.json").write_text(json.dumps(truth))
        state = work / "state"
        mtx(state, "download", "folder", "--path", str(work / "library"))
        mtx(state, "unify", "--datasets", "folder")
        results = []
        for enc in args.encoders:
            mtx(state, "embed", "--audio-encoder", enc)
            results += [measure(state, enc, truth, standardise) for standardise in (False, True)]
    for r in results:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
