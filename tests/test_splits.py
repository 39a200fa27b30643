"""Leak-free splits on real-layout fixtures: Jamendo tracks shared by MTG-Jamendo and Song Describer."""

from __future__ import annotations

import pytest

import jamendo_fixtures as jf
from musiccli.sources import mtg_jamendo as mj
from musiccli.sources import song_describer as sdm
from musiccli.unify import UnifyConfig, build_manifest


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("jamendo")
    fx = jf.build(root / "www", n_shared=40, n_mtg_only=160)
    jf.download_both(fx, root / "mtg", root / "sd")
    return fx, {"mtg-jamendo": mj.MtgJamendoSource().records(root / "mtg"),
                "song-describer": sdm.SongDescriberSource().records(root / "sd")}


def _manifest(parsed, **cfg):
    _, by_source = parsed
    # build_manifest prefixes ids in place: give it fresh copies every time.
    from musiccli.manifest import Record

    fresh = {k: [Record.from_dict(r.to_dict()) for r in v] for k, v in by_source.items()}
    chosen, _ = build_manifest(fresh, UnifyConfig(**cfg))
    return chosen.records()


@pytest.mark.parametrize("keep_official", [False, True])
def test_shared_jamendo_tracks_never_cross_splits(parsed, keep_official: bool) -> None:
    fx, by_source = parsed
    assert len(by_source["song-describer"]) == len(fx.shared)
    records = _manifest(parsed, keep_official_splits=keep_official)
    assert jf.leaked_test_tracks(records) == 0
    by_track: dict[int, set[str]] = {}
    for r in records:
        by_track.setdefault(jf.jamendo_track(r), set()).add(r.split)
    assert all(len(s) == 1 for s in by_track.values())
    if keep_official:
        # Song Describer is all test: its shared tracks (and their artists' other tracks) are test too.
        assert {s for t in fx.shared for s in by_track[t]} == {"test"}


def test_keep_official_moves_conflicting_tracks_to_test_and_counts_them(parsed) -> None:
    from musiccli.manifest import assign_splits

    _, by_source = parsed
    mtg = {jf.jamendo_track(r): r for r in by_source["mtg-jamendo"]}
    sd = by_source["song-describer"]
    # Both sources spell the artist differently, but carry the same Jamendo artist key.
    assert all(mtg[jf.jamendo_track(r)].artist != r.artist for r in sd)
    assert all(mtg[jf.jamendo_track(r)].extra["artist_key"] == r.extra["artist_key"] for r in sd)
    from musiccli.manifest import Record

    again = [Record.from_dict(r.to_dict()) for r in by_source["mtg-jamendo"] + by_source["song-describer"]]
    official = {r.id: r.split for r in again}
    summary = assign_splits(again, keep_official=True)
    moved = sum(1 for r in again if official[r.id] and official[r.id] != r.split)
    assert moved > 0 and summary.overridden == moved
    assert all(r.split == "test" for r in again if r.dataset == "song-describer")


def test_subsample_test_split_is_a_subset_of_the_full_one(parsed) -> None:
    full = _manifest(parsed)
    full_test = {r.id for r in full if r.split == "test"}
    for n in (30, 60):
        sub = _manifest(parsed, max_samples=n, stratify_by="none")
        assert len(sub) == n
        assert {r.id for r in sub if r.split == "test"} <= full_test
