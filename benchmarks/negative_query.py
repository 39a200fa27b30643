"""`--not` against negation written inside the query, on a demo state dir.

For each (query, unwanted sound) pair it prints the share of the top 10 whose instruments include the
unwanted sound, for three ways of asking: the query alone, "<query> without <sound>", and the query
with ``--not <sound>``. Lower is better. Ground truth is the synth records' own instrument lists.

    mtx demo --state-dir /tmp/demo-state
    python benchmarks/negative_query.py --state-dir /tmp/demo-state
"""

from __future__ import annotations

import argparse
from pathlib import Path

PAIRS = [
    ("calm relaxing music", "drums"), ("upbeat dance music", "kick drum"), ("music", "guitar"),
    ("energetic track", "distorted electric guitar"), ("happy song", "piano"), ("slow sad music", "synth"),
    ("instrumental music", "bass"), ("music for a party", "drums"), ("chill background music", "cymbal"),
    ("a song with a groove", "synth bass"),
]


def share_with(hits, instruments, sound: str) -> float:
    words = sound.lower().split()
    def has(i: str) -> bool:
        return any(all(w.rstrip("s") in x for w in words) for x in instruments.get(i, []))
    return sum(has(h["id"]) for h in hits) / max(1, len(hits))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--weight", type=float, default=0.5)
    args = ap.parse_args()
    from musiccli.manifest import read_manifest, resolve_manifest
    from musiccli.search import SearchConfig, search
    from musiccli.state import StateDir

    state = StateDir.resolve(args.state_dir)
    _, mpath = resolve_manifest(state, None)
    instruments = {r.id: [x.lower() for x in r.extra.get("instruments") or []] for r in read_manifest(mpath)}
    rows = []
    for query, sound in PAIRS:
        alone = search(state, SearchConfig(query=query, k=10)).hits
        inside = search(state, SearchConfig(query=f"{query} without {sound}", k=10)).hits
        neg = search(state, SearchConfig(query=query, k=10, negative=sound, not_weight=args.weight)).hits
        rows.append((query, sound, *(share_with(h, instruments, sound) for h in (alone, inside, neg))))
    print(f"{'query':30} {'unwanted':28} {'alone':>6} {'without':>8} {'--not':>6}")
    for q, s, a, b, c in rows:
        print(f"{q:30} {s:28} {a:6.2f} {b:8.2f} {c:6.2f}")
    mean = [sum(r[k] for r in rows) / len(rows) for k in (2, 3, 4)]
    print(f"{'mean':59} {mean[0]:6.2f} {mean[1]:8.2f} {mean[2]:6.2f}")


if __name__ == "__main__":
    main()
