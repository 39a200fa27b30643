#!/usr/bin/env python
"""Does training on a library's own tags help? Measured on a REAL-audio library's held-out artists.

The library is the one ``benchmarks/real_audio/build_library.py`` builds (scores rendered through a
General MIDI soundfont, tagged FLAC/MP3/Ogg files). Everything runs through the ``mtx`` CLI, one
process per step, in one state dir:

1. ``mtx sync LIBRARY --audio-encoder musicnn`` (scan, unify with artist splits, MusiCNN embeddings);
2. MusiCNN's own taggrams: ``mtx embed --tags`` (MSD model, beside the store) and, in a second state
   dir over the same manifest, ``mtx embed --model MTT_musicnn --tags`` (MagnaTagATune model);
3. the adapted model: ``mtx train --library`` (MiniLM text tower on the library's tags, ``--text-rep
   blend``, splits that keep artists and albums whole);
4. ``mtx eval`` of the adapted run and of the synth-trained demo run (``mtx demo``, the same encoder)
   on the library's test split (the reports are kept in the JSON);
5. ``mtx search "<tag> music" -k N --json`` with each run: every track's score for each tag.

On the held-out artists (the val and test splits: mtx splits by artist, so none of their tracks is
trained on; the adapted run is scored at its last checkpoint, so val chooses nothing either) every
system scores each tag with >= 5 positives:
macro tag ROC-AUC, mean per-tag average precision, and P@10 of the "<tag> music" query among the
test tracks. Systems: the adapted run; MusiCNN's own tags used as a zero-shot classifier (only tags
with a sensible MusiCNN label, :data:`MUSICNN_MAP`; the other systems are also shown on that subset);
the synth-trained demo run; chance (ROC-AUC 0.5, AP and P@10 = the tag's prevalence).

    python benchmarks/real_audio/build_library.py ...         # see benchmarks/real_audio/README.md
    PYTHONPATH=. python benchmarks/library_adaptation.py --library /work/realaudio/library \\
        --state-dir /work/realaudio/state --demo-run demo --out /work/realaudio/library_adaptation.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIN_POSITIVES = 5
K = 10

# Our tag -> MusiCNN labels whose mean probability scores it ("MTT:" MagnaTagATune model, "MSD:" Million
# Song Dataset model). Only words MusiCNN has for the same thing; eras (baroque, renaissance...), forms
# (chorale, reel...) and instruments it has no label for (organ, accordion, recorder...) stay unmapped.
MUSICNN_MAP: dict[str, tuple[str, ...]] = {
    "classical": ("MTT:classical", "MTT:classic"),
    "strings": ("MTT:strings",),
    "violin": ("MTT:violin",),
    "fiddle": ("MTT:violin",),
    "cello": ("MTT:cello",),
    "piano": ("MTT:piano",),
    "harpsichord": ("MTT:harpsichord",),
    "harp": ("MTT:harp",),
    "flute": ("MTT:flute",),
    "choir": ("MTT:choir", "MTT:choral"),
    "voice": ("MTT:vocal", "MTT:voice", "MTT:singing"),
    "opera": ("MTT:opera",),
    "slow": ("MTT:slow",),
    "fast": ("MTT:fast",),
    "calm": ("MTT:soft", "MTT:quiet"),
    "dance": ("MTT:dance",),
    "folk": ("MSD:folk",),
    "guitar": ("MTT:guitar", "MSD:guitar"),
}


# --------------------------------------------------------------------------- the CLI
def mtx(state: Path, *args: str, log: list[dict[str, Any]], parse_json: bool = True,
        timeout: float = 3600) -> Any:
    """Run ``mtx --state-dir STATE ARGS`` from this checkout in its own process; its JSON on stdout."""
    cmd = [sys.executable, "-m", "musiccli", "--state-dir", str(state), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - t0
    log.append({"cmd": ["mtx", *args], "rc": proc.returncode, "seconds": round(seconds, 1)})
    print(f"  mtx {' '.join(args)}  ({seconds:.0f} s, rc {proc.returncode})", file=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"mtx {' '.join(args)} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    if not parse_json:
        return proc.stdout
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"stdout": proc.stdout[-5000:]}


def find_key(obj: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a parsed JSON document (eval's ``lift`` section)."""
    if isinstance(obj, dict):
        if key in obj and obj[key] is not None:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- reading outputs
def read_tag_probs(store: Path) -> dict[str, dict[str, float]]:
    """{track id: {tag name: probability}} from a store's ``tag_probs`` or its ``.tags.h5`` side file."""
    import h5py

    for path in (store, store.with_name(f"{store.stem}.tags.h5")):
        if not path.exists():
            continue
        with h5py.File(path, "r") as f:
            if "tag_probs" not in f:
                continue
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["tag_probs"].attrs["tag_names"]]
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["ids"][:]]
            probs = f["tag_probs"][:]
            return {i: dict(zip(names, map(float, row))) for i, row in zip(ids, probs)}
    raise SystemExit(f"no tag_probs in {store} or beside it")


@dataclass
class TestSet:
    ids: list[str]
    labels: dict[str, np.ndarray]          # tag -> [n] 0/1 over ``ids``
    artists: list[str]
    split_counts: dict[str, int] = field(default_factory=dict)
    split_artists: dict[str, int] = field(default_factory=dict)


def test_set(manifest: Path, splits: tuple[str, ...] = ("val", "test")) -> TestSet:
    records = json.loads(manifest.read_text())
    counts: dict[str, int] = {}
    artists: dict[str, set[str]] = {}
    for r in records:
        s = r.get("split") or "none"
        counts[s] = counts.get(s, 0) + 1
        artists.setdefault(s, set()).add(r.get("artist") or "")
    test = [r for r in records if r.get("split") in splits]
    ids = [r["id"] for r in test]
    tags = sorted({t for r in test for t in r.get("tags") or []})
    labels = {t: np.array([t in (r.get("tags") or []) for r in test], dtype=np.int8) for t in tags}
    labels = {t: y for t, y in labels.items() if MIN_POSITIVES <= y.sum() < len(y)}
    held_out = sorted({a for s in splits for a in artists.get(s, set())})
    return TestSet(ids, labels, held_out, counts, {s: len(a) for s, a in artists.items()})


# --------------------------------------------------------------------------- metrics
def tag_scores(y: np.ndarray, scores: np.ndarray, k: int = K) -> dict[str, float]:
    """ROC-AUC, average precision and P@k of one tag's scores over the test tracks."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    order = np.argsort(-scores, kind="stable")[:k]
    return {"roc_auc": float(roc_auc_score(y, scores)), "ap": float(average_precision_score(y, scores)),
            "p@10": float(y[order].mean())}


def chance(y: np.ndarray) -> dict[str, float]:
    prevalence = float(y.mean())
    return {"roc_auc": 0.5, "ap": prevalence, "p@10": prevalence}


def macro(per_tag: dict[str, dict[str, float]], tags: list[str]) -> dict[str, float]:
    rows = [per_tag[t] for t in tags if t in per_tag]
    return {m: float(np.mean([r[m] for r in rows])) if rows else float("nan") for m in ("roc_auc", "ap", "p@10")} | \
        {"n_tags": len(rows)}


def search_scores(state: Path, run: str, manifest: str, tags: list[str], ids: list[str], n_tracks: int,
                  log: list[dict[str, Any]], checkpoint: str = "best") -> dict[str, np.ndarray]:
    """Each tag's "<tag> music" query scored against every test track through ``mtx search --run``."""
    pos = {i: j for j, i in enumerate(ids)}
    out = {}
    for tag in tags:
        result = mtx(state, "search", f"{tag} music", "--run", run, "--manifest", manifest, "--top-k",
                     str(n_tracks), "--checkpoint", checkpoint, "--json", log=log)
        scores = np.full(len(ids), -np.inf)
        for hit in result["hits"]:
            if hit["id"] in pos:
                scores[pos[hit["id"]]] = float(hit["score"])
        if np.isinf(scores).any():
            raise SystemExit(f"search with {run} returned no score for {int(np.isinf(scores).sum())} test tracks")
        out[tag] = scores
    return out


def musicnn_scores(probs: dict[str, dict[str, dict[str, float]]], tags: list[str], ids: list[str]
                   ) -> dict[str, np.ndarray]:
    """Each mapped tag's score: the mean probability of its MusiCNN labels (``probs[model][id][label]``)."""
    out = {}
    for tag in tags:
        labels = MUSICNN_MAP.get(tag)
        if not labels:
            continue
        cols = []
        for label in labels:
            model, name = label.split(":", 1)
            cols.append(np.array([probs[model][i][name] for i in ids], dtype=np.float64))
        out[tag] = np.mean(cols, axis=0)
    return out


# --------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    state, name, log = args.state_dir, args.name, []
    started = time.perf_counter()
    state.mkdir(parents=True, exist_ok=True)
    sync = mtx(state, "sync", str(args.library), "--audio-encoder", "musicnn", "--name", name, "--json", log=log)
    manifest = state / "manifests" / f"{name}.json"
    store = state / "embeddings" / "musicnn" / f"{name}.h5"
    # MusiCNN's own taggrams: MSD beside the library's store; MTT in a second state dir (one store per encoder).
    mtx(state, "embed", "--audio-encoder", "musicnn", "--manifest", name, "--tags", "--json", log=log)
    mtt_state = state.parent / f"{state.name}-mtt"
    mtx(mtt_state, "embed", "--audio-encoder", "musicnn", "--model", "MTT_musicnn", "--manifest", str(manifest),
        "--tags", "--json", log=log)
    probs = {"MSD": read_tag_probs(store), "MTT": read_tag_probs(mtt_state / "embeddings" / "musicnn" / f"{name}.h5")}

    train_args = ["train", "--library", "--manifest", name, "--audio-encoder", "musicnn", "--run", args.run,
                  "--seed", str(args.seed), *(["--force"] if args.force else []), "--json"]
    train = mtx(state, *train_args, log=log)
    # The adapted run is scored at its last checkpoint: "best" is chosen on the val split, which is held out
    # here, so no held-out track chooses anything. The demo run's best was chosen on its own synth val split.
    checkpoints = {args.run: "latest", args.demo_run: "best"}
    evals = {r: mtx(state, "eval", "--run", r, "--manifest", name, "--checkpoint", ck, "--no-plots", "--json", log=log)
             for r, ck in checkpoints.items()}

    # Two held-out sets, both of artists never trained on: the test split (what `mtx eval` proves the lift
    # on) and val + test (twice the artists, so more tags reach 5 positives).
    sets = {"test": test_set(manifest, ("test",)), "val+test": test_set(manifest, ("val", "test"))}
    held = sets["val+test"]
    tags = sorted(set(sets["test"].labels) | set(held.labels))
    n_tracks = sum(held.split_counts.values())
    scores: dict[str, dict[str, np.ndarray]] = {}
    for label, run_name in (("adapted", args.run), ("demo (synth-trained)", args.demo_run)):
        scores[label] = search_scores(state, run_name, name, tags, held.ids, n_tracks, log, checkpoints[run_name])
    scores["MusiCNN tags (zero-shot)"] = musicnn_scores(probs, tags, held.ids)
    results = {}
    for set_name, ts in sets.items():
        rows = np.array([held.ids.index(i) for i in ts.ids], dtype=np.int64)
        per: dict[str, dict[str, dict[str, float]]] = {
            system: {t: tag_scores(ts.labels[t], sc[t][rows]) for t in ts.labels if t in sc}
            for system, sc in scores.items()}
        per["chance"] = {t: chance(ts.labels[t]) for t in ts.labels}
        set_tags = sorted(ts.labels)
        mapped = sorted(t for t in set_tags if t in MUSICNN_MAP)
        results[set_name] = {
            "tracks": len(ts.ids), "artists": ts.artists, "tags": set_tags, "mapped_tags": mapped,
            "positives": {t: int(ts.labels[t].sum()) for t in set_tags},
            "summary": {"all": {s: macro(v, set_tags) for s, v in per.items() if s != "MusiCNN tags (zero-shot)"},
                        "mapped": {s: macro(v, mapped) for s, v in per.items()}},
            "per_tag": per}
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU threads, {platform.python_version()}",
        "library": str(args.library), "state_dir": str(state), "manifest": name,
        "sizes": {"tracks": n_tracks, "splits": held.split_counts, "artists_per_split": held.split_artists},
        "train": {"args": train_args, "result": train},
        "musicnn_map": {t: list(MUSICNN_MAP[t]) for t in tags if t in MUSICNN_MAP},
        "checkpoints": checkpoints, "held_out": results,
        "eval_lift": {r: find_key(rep, "lift") for r, rep in evals.items()},
        "eval_reports": evals, "sync": sync, "steps": log,
        "seconds": round(time.perf_counter() - started, 1),
    }


def render_table(result: dict[str, Any]) -> str:
    lines = []
    for set_name, r in result["held_out"].items():
        lines += [f"held-out {set_name}: {r['tracks']} tracks by {len(r['artists'])} artists never trained on; "
                  f"tags with >= {MIN_POSITIVES} positives", "",
                  "| system | tags | tag ROC-AUC | mean AP | P@10 (\"<tag> music\") |", "| --- | --- | --- | --- | --- |"]
        for group, title in (("all", "all"), ("mapped", "MusiCNN-mapped")):
            for system, m in r["summary"][group].items():
                lines.append(f"| {system} | {title} ({m['n_tags']}) | {m['roc_auc']:.3f} | {m['ap']:.3f} | "
                             f"{m['p@10']:.3f} |")
        lines.append("")
    for run_name, lift in (result.get("eval_lift") or {}).items():
        if isinstance(lift, dict) and lift.get("metrics"):
            m = lift["metrics"]
            parts = [f"{k} {v['model']:.3f} vs {v['baseline']:.3f}" for k, v in m.items()
                     if v.get("model") is not None and v.get("baseline") is not None]
            lines.append(f"mtx eval lift of {run_name} over the {lift.get('baseline')} baseline (test split): "
                         + ", ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", type=Path, required=True, help="the folder build_library.py wrote")
    parser.add_argument("--state-dir", type=Path, required=True, help="mtx state dir (holds the demo run)")
    parser.add_argument("--demo-run", default="demo", help="the synth-trained run of `mtx demo` (musicnn)")
    parser.add_argument("--name", default="reallib", help="manifest name of the library")
    parser.add_argument("--run", default="reallib-adapted", help="name of the adapted run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="retrain the adapted run")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: STATE/library_adaptation.json)")
    args = parser.parse_args(argv)
    result = run(args)
    out = args.out or args.state_dir / "library_adaptation.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, out)
    print(render_table(result))
    print(f"\nper-tag figures and the mtx eval reports: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
