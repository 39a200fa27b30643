"""Count Jamendo tracks that leak across splits on the MTG-Jamendo + Song Describer fixture.

Builds the real-layout mirrors of ``tests/jamendo_fixtures.py``, downloads them over 127.0.0.1
with the real downloaders, unifies them in memory (``unify.build_manifest``) with and without
``--keep-official-splits`` and at two sample sizes, and prints:

- leaked: Jamendo tracks that are test in one record and train in another;
- unstable: of the 600-record-style subsample's test tracks, how many are train in the full manifest.

Only fields every version of the manifest has are used, so the same script measures older code:
``PYTHONPATH=<checkout> python benchmarks/split_leaks.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import jamendo_fixtures as jf  # noqa: E402
from musiccli.manifest import Record  # noqa: E402
from musiccli.sources import mtg_jamendo as mj  # noqa: E402
from musiccli.sources import song_describer as sdm  # noqa: E402
from musiccli.unify import UnifyConfig, build_manifest  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fx = jf.build(root / "www", n_shared=100, n_mtg_only=400)
        jf.download_both(fx, root / "mtg", root / "sd")
        by_source = {"mtg-jamendo": mj.MtgJamendoSource().records(root / "mtg"),
                     "song-describer": sdm.SongDescriberSource().records(root / "sd")}

        def manifest(**cfg):
            fresh = {k: [Record.from_dict(r.to_dict()) for r in v] for k, v in by_source.items()}
            return build_manifest(fresh, UnifyConfig(**cfg))[0].records()

        n = sum(len(v) for v in by_source.values())
        print(f"{n} records: {len(fx.shared)} Jamendo tracks in both sources, {len(fx.mtg_only)} in MTG only")
        for keep in (False, True):
            recs = manifest(keep_official_splits=keep)
            print(f"keep_official_splits={keep}: leaked test tracks {jf.leaked_test_tracks(recs)} of "
                  f"{sum(1 for r in recs if r.split == 'test')} test records")
        full = {r.id: r.split for r in manifest()}
        sub = manifest(max_samples=int(0.6 * n), stratify_by="none")
        sub_test = [r.id for r in sub if r.split == "test"]
        unstable = sum(1 for i in sub_test if full[i] == "train")
        print(f"subsample of {len(sub)}: {unstable} of its {len(sub_test)} test records are train in the full manifest")


if __name__ == "__main__":
    main()
