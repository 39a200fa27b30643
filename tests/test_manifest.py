"""Unit tests for the unified manifest: sampling, splits, and reading/writing."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from musiccli.errors import MtxError
from musiccli.manifest import (Record, allocate_quota, assign_splits, duration_bin, read_manifest, sample_records,
                               split_counts, write_manifest)


def make_records(dataset: str, n: int, artists: int | None = None, duration: float = 10.0,
                 durations: list[float] | None = None) -> list[Record]:
    out = []
    for i in range(n):
        out.append(Record(id=f"{dataset}-{i:05d}", audio_path=f"/data/{dataset}/{i}.flac",
                          caption=f"caption {i}", dataset=dataset,
                          duration=durations[i % len(durations)] if durations else duration,
                          artist=f"{dataset}-artist-{i % artists}" if artists else None))
    return out


# --------------------------------------------------------------------------- sampling
def test_quota_redistributes_what_small_groups_cannot_use():
    assert allocate_quota({"a": 1000, "b": 1000, "c": 20}, 300) == {"a": 140, "b": 140, "c": 20}
    assert allocate_quota({"a": 5, "b": 3}, 100) == {"a": 5, "b": 3}
    q = allocate_quota({"a": 7, "b": 7, "c": 7}, 10)
    assert sum(q.values()) == 10 and max(q.values()) - min(q.values()) <= 1


def test_stratify_by_dataset_balances_and_redistributes():
    records = make_records("big", 500) + make_records("mid", 200) + make_records("tiny", 30)
    chosen = sample_records(records, max_samples=300, stratify_by="dataset", seed=1)
    counts = Counter(r.dataset for r in chosen)
    assert counts == {"big": 135, "mid": 135, "tiny": 30}
    assert len({r.id for r in chosen}) == 300


def test_samples_per_dataset_caps_each_dataset():
    records = make_records("a", 50) + make_records("b", 8)
    chosen = sample_records(records, samples_per_dataset=10, seed=0)
    assert Counter(r.dataset for r in chosen) == {"a": 10, "b": 8}


def test_stratify_by_duration_balances_bins():
    durations = [10.0] * 8 + [60.0] + [300.0]   # mostly short clips, few medium and long ones
    records = make_records("a", 400, durations=durations)
    chosen = sample_records(records, max_samples=90, stratify_by="duration", seed=3)
    counts = Counter(duration_bin(r.duration) for r in chosen)
    assert counts == {"short": 30, "medium": 30, "long": 30}


def test_sampling_is_deterministic_and_order_independent():
    records = make_records("a", 300) + make_records("b", 300)
    one = [r.id for r in sample_records(records, max_samples=100, seed=7)]
    two = [r.id for r in sample_records(list(reversed(records)), max_samples=100, seed=7)]
    other = [r.id for r in sample_records(records, max_samples=100, seed=8)]
    assert one == two
    assert set(one) != set(other)


def test_stratify_none_and_unknown_mode():
    records = make_records("a", 50)
    assert len(sample_records(records, max_samples=20, stratify_by="none")) == 20
    with pytest.raises(MtxError, match="stratify"):
        sample_records(records, max_samples=20, stratify_by="genre")


# --------------------------------------------------------------------------- splits
def _tolerance(components: int, ratio: float) -> float:
    # Whole components are bucketed by hash: the split fraction is binomial over components (4 sigma).
    return 4 * (ratio * (1 - ratio) / components) ** 0.5


def test_splits_follow_the_ratios_and_are_artist_disjoint_across_datasets():
    a = make_records("a", 1000, artists=500)
    b = make_records("b", 600, artists=300)
    # The same artists appear in both datasets, spelled differently: they must stay in one split everywhere.
    for r in b[:200]:
        r.artist = "  " + a[int(r.id.split("-")[1])].artist.upper()
    records = a + b
    summary = assign_splits(records, seed=0)
    assert summary.components == 500 + 300   # b's own 300 artists all keep other records
    for ds, group in (("a", a), ("b", b)):
        counts = split_counts(group)
        n = len(group)
        for split, ratio in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            assert abs(counts[split] / n - ratio) < _tolerance(300, ratio), (ds, counts)
    splits_of = defaultdict(set)
    for r in records:
        splits_of[" ".join(r.artist.lower().split())].add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())


def test_splits_are_reproducible_and_seeded():
    one, two = make_records("a", 300, artists=40), make_records("a", 300, artists=40)
    assign_splits(one, seed=5)
    assign_splits(list(reversed(two)), seed=5)
    assert [r.split for r in one] == [r.split for r in two]
    other = make_records("a", 300, artists=40)
    assign_splits(other, seed=6)
    assert [r.split for r in one] != [r.split for r in other]


def test_records_without_artist_or_group_are_split_individually():
    records = make_records("a", 2000)
    summary = assign_splits(records, seed=0)
    assert summary.components == 2000
    counts = split_counts(records)
    assert abs(counts["test"] / 2000 - 0.1) < _tolerance(2000, 0.1), counts


def test_group_links_recordings_across_sources_and_artist_spellings():
    # The same Jamendo track in two sources, with unrelated artist spellings; the artists' other
    # tracks come along through the artist edges (a connected component of group + artist).
    recs = []
    for i in range(200):
        recs.append(Record(id=f"mtg-{i}", audio_path="/x", caption="c", duration=1.0, dataset="mtg-jamendo",
                           artist=f"Artist Name {i // 2}", group=f"jamendo:{i}"))
        if i % 2 == 0:
            recs.append(Record(id=f"sd-{i}", audio_path="/x", caption="c", duration=1.0, dataset="song-describer",
                               artist=f"artist_{i // 2:06d}", group=f"jamendo:{i}"))
    assign_splits(recs, seed=0)
    split_of = {r.id: r.split for r in recs}
    for i in range(0, 200, 2):
        assert split_of[f"sd-{i}"] == split_of[f"mtg-{i}"] == split_of[f"mtg-{i + 1}"]
    assert len(set(split_of.values())) == 3


def test_augmented_copies_stay_with_their_original():
    from musiccli.manifest import youtube_group
    from musiccli.sources.musicbench import source_ytid

    recs = []
    for i in range(300):
        yt = f"{i:05d}abc_-x"   # 11 characters, with YouTube's '_' and '-'
        recs.append(Record(id=f"musiccaps:{yt}", audio_path="/x", caption="c", duration=10.0, dataset="musiccaps",
                           group=youtube_group(yt)))
        for loc in (f"data/{yt}.wav", f"data_aug2/{yt}_1.wav", f"data_aug2/{yt}_2.wav"):
            recs.append(Record(id=f"mb:{loc}", audio_path="/x", caption="c", duration=10.0, dataset="musicbench",
                               group=youtube_group(source_ytid(loc))))
    assign_splits(recs, seed=1)
    by_group = defaultdict(set)
    for r in recs:
        by_group[r.group].add(r.split)
    assert len(by_group) == 300 and all(len(s) == 1 for s in by_group.values())


def test_a_subsample_keeps_every_records_split():
    full = []
    for i in range(3000):
        # Pairs of records of one recording (e.g. the same track in two sources), 400 artists.
        full.append(Record(id=f"r{i}", audio_path="/x", caption="c", duration=10.0, dataset="a" if i % 2 else "b",
                           artist=f"artist {(i // 2) % 400}" if i % 2 else f"ARTIST  {(i // 2) % 400}",
                           group=f"rec:{i // 2}"))
    assign_splits(full, seed=3)
    split_of = {r.id: r.split for r in full}
    for n, seed in ((600, 3), (1000, 3)):
        sub = sample_records([Record.from_dict(r.to_dict()) for r in full], max_samples=n, seed=seed)
        assign_splits(sub, seed=3)
        assert all(r.split == split_of[r.id] for r in sub)
        test_ids = {r.id for r in sub if r.split == "test"}
        assert test_ids and test_ids <= {i for i, s in split_of.items() if s == "test"}


def test_keep_official_splits_pins_components_and_resolves_conflicts():
    records = make_records("a", 200, artists=20)
    records[0].split = "test"          # artist a-artist-0 is officially in test
    records[1].split = "val"
    summary = assign_splits(records, seed=0, keep_official=True)
    assert records[0].split == "test" and records[1].split == "val"
    assert {r.split for r in records if r.artist == records[0].artist} == {"test"}
    assert {r.split for r in records if r.artist == records[1].artist} == {"val"}
    assert summary.overridden == 0
    # Official splits that disagree inside a component: the most held-out one wins, and it is counted.
    conflict = make_records("a", 40, artists=4)
    conflict[0].split, conflict[4].split, conflict[8].split = "train", "test", "val"   # all artist 0
    conflict[1].split, conflict[5].split = "train", "val"                              # artist 1
    summary = assign_splits(conflict, seed=0, keep_official=True)
    assert {r.split for r in conflict if r.artist == conflict[0].artist} == {"test"}
    assert {r.split for r in conflict if r.artist == conflict[1].artist} == {"val"}
    assert (summary.official_conflicts, summary.overridden) == (2, 3)
    # Without keep_official the official labels are ignored and reassigned.
    fresh = make_records("a", 200, artists=200)
    fresh[0].split = "test"
    assign_splits(fresh, seed=0, keep_official=False)
    assert split_counts(fresh)["train"] > 100


@pytest.mark.parametrize("seed", range(6))
def test_tiny_manifests_still_get_every_split(seed):
    records = make_records("a", 40, artists=4)
    summary = assign_splits(records, seed=seed)
    assert all(split_counts(records)[s] > 0 for s in ("train", "val", "test"))
    assert summary.components == 4
    big = make_records("a", 3000, artists=600)
    assert assign_splits(big, seed=seed).filled == 0   # nothing moves once there are enough components


def test_group_roundtrips_and_defaults_to_the_record(tmp_path):
    from musiccli.manifest import group_of, jamendo_group

    assert jamendo_group(3346) == jamendo_group("track_0003346") == jamendo_group("3346.mp3") == "jamendo:3346"
    r = Record(id="x", audio_path="/a", caption="c", duration=1.0, group="jamendo:1")
    write_manifest(tmp_path / "m.json", [r, Record(id="y", audio_path="/b", caption="c", duration=1.0)])
    back = read_manifest(tmp_path / "m.json")
    assert [group_of(b) for b in back] == ["jamendo:1", "id:y"]
    assert "group" not in back[0].extra


def test_roundtrip_keeps_optional_and_extra_fields(tmp_path):
    records = [
        Record(id="x1", audio_path="/a/x1.flac", caption="A calm piece", duration=12.5,
               alt_captions=["calm piano"], dataset="d", artist="Ann", title="T", tags=["calm", "piano"],
               license="CC0-1.0", split="train", extra={"bpm": 90, "instruments": ["piano"]}),
        Record(id="x2", audio_path="/a/x2.flac", caption="Loud metal", duration=3.0),
    ]
    path = tmp_path / "m.json"
    write_manifest(path, records)
    back = read_manifest(path)
    assert back == records
    raw = json.loads(path.read_text())
    assert raw[0]["bpm"] == 90 and "extra" not in raw[0]
    assert "alt_captions" not in raw[1]  # empty optional fields are left out


def test_missing_required_fields_raise(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"id": "a", "audio_path": "/x.flac", "duration": 1.0}]))
    with pytest.raises(MtxError, match="caption"):
        read_manifest(path)
    path.write_text(json.dumps([{"id": "a", "audio_path": "/x.flac", "caption": "c", "duration": "long"}]))
    with pytest.raises(MtxError, match="duration"):
        read_manifest(path)


def test_duplicates_and_bad_files_raise(tmp_path):
    rec = Record(id="a", audio_path="/x.flac", caption="c", duration=1.0)
    with pytest.raises(MtxError, match="duplicate"):
        write_manifest(tmp_path / "m.json", [rec, rec])
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(MtxError, match="not valid JSON"):
        read_manifest(tmp_path / "broken.json")
    with pytest.raises(MtxError, match="not found"):
        read_manifest(tmp_path / "nope.json")
    (tmp_path / "split.json").write_text(json.dumps([{**rec.to_dict(), "split": "dev"}]))
    with pytest.raises(MtxError, match="split"):
        read_manifest(tmp_path / "split.json")
    (tmp_path / "strings.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(MtxError, match="not a manifest"):
        read_manifest(tmp_path / "strings.json")


@pytest.mark.parametrize("d", [
    {"id": "a", "audio_path": "/x", "caption": "c", "duration": 3.0},
    {"id": "a", "audio_path": "/x", "caption": "c", "duration": 3, "alt_captions": ["x"], "tags": ["t"],
     "split": "train", "group": "g", "style": "s", "album": None},
    {"id": 5, "audio_path": "/x", "caption": "c", "duration": "3.5"},
    {"id": "a", "audio_path": "/x", "caption": "c", "duration": 3.0, "group": ""},
    {"id": "a", "audio_path": "/x", "caption": "c", "duration": 3.0, "group": 7},
    {"id": "a", "audio_path": "/x", "caption": "c", "duration": 3.0, "alt_captions": [], "tags": None},
    {"id": "a", "audio_path": "/x", "caption": "c", "duration": True},
    {"id": "a", "audio_path": "/x", "caption": "c", "duration": float("nan")},
    {"id": "a", "audio_path": "/x", "caption": "c", "duration": 3.0, "tags": [1]},
    {"id": "a", "audio_path": "/x", "caption": "c", "duration": 3.0, "split": "dev"},
    {"id": "", "audio_path": "/x", "caption": "c", "duration": 3.0},
    {"id": "a", "audio_path": "/x", "caption": "", "duration": -1},
])
def test_record_fast_path_equals_the_checked_path(d: dict) -> None:
    # from_dict builds a well-typed record at once; the field-by-field checks must agree on every input.
    def outcome(build):
        try:
            return build()
        except MtxError as e:
            return e.message

    assert outcome(lambda: Record.from_dict(d)) == outcome(lambda: Record._checked(d, "manifest"))
