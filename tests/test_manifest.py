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
def test_splits_are_80_10_10_and_artist_disjoint_across_datasets():
    a = make_records("a", 1000, artists=150)
    b = make_records("b", 600, artists=90)
    # The same artists appear in both datasets: they must stay in one split everywhere.
    for r in b[:200]:
        r.artist = a[int(r.id.split("-")[1])].artist.upper()
    records = a + b
    assign_splits(records, seed=0)
    for ds, group in (("a", a), ("b", b)):
        counts = split_counts(group)
        n = len(group)
        assert abs(counts["train"] / n - 0.8) < 0.03, (ds, counts)
        assert abs(counts["val"] / n - 0.1) < 0.03, (ds, counts)
        assert abs(counts["test"] / n - 0.1) < 0.03, (ds, counts)
    splits_of = defaultdict(set)
    for r in records:
        splits_of[" ".join(r.artist.lower().split())].add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())


def test_splits_are_reproducible():
    one, two = make_records("a", 300, artists=40), make_records("a", 300, artists=40)
    assign_splits(one, seed=5)
    assign_splits(list(reversed(two)), seed=5)
    assert [r.split for r in one] == [r.split for r in two]


def test_records_without_artist_are_split_individually():
    records = make_records("a", 1000)
    assign_splits(records, seed=0)
    counts = split_counts(records)
    assert counts == {"train": 800, "val": 100, "test": 100}


def test_keep_official_splits_pins_artists():
    records = make_records("a", 200, artists=20)
    records[0].split = "test"          # artist a-artist-0 is officially in test
    records[1].split = "val"
    assign_splits(records, seed=0, keep_official=True)
    assert records[0].split == "test" and records[1].split == "val"
    assert {r.split for r in records if r.artist == records[0].artist} == {"test"}
    assert {r.split for r in records if r.artist == records[1].artist} == {"val"}
    # Without keep_official the official labels are ignored and reassigned.
    fresh = make_records("a", 200, artists=20)
    fresh[0].split = "test"
    assign_splits(fresh, seed=0, keep_official=False)
    assert split_counts(fresh)["train"] > 100


# --------------------------------------------------------------------------- read / write
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
