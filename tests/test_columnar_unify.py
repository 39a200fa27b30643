"""The columnar unify against naive references.

- ``RecordTable`` and its manifest writer against ``json``'s own encoder on each record's dict, on
  random records full of what JSON escapes;
- ``sample_indices`` and ``split_assignment`` against the per-record code they replaced
  (``tests/reference/naive_splits.py``), on random manifests with groups, artists, albums, official
  splits and a previous manifest;
- the synth source's Arrow parser against a plain ``csv`` + ``json`` reading of the same file.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
from pathlib import Path

import pytest

from musiccli.errors import MtxError
from musiccli.manifest import (Record, RecordTable, assign_splits, diff_manifests, read_manifest, sample_records,
                               write_manifest)
from musiccli.sources.synth import COLUMNS, SynthSource

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import naive_splits  # noqa: E402

TRICKY = ["", "plain", 'a "quote"', "back\\slash", "tab\there", "new\nline", "nul\x00x", "\x1f\x7f",
          "café ♫", "🎵 emoji", "], [", '"], ["', "\u2028\u2029", "ends with \\", "日本語"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(TRICKY) for _ in range(rng.randint(0, 3)))


def _record(rng: random.Random, i: int, root: str) -> Record:
    extra: dict = {}
    for key, make in (("style", lambda: _text(rng)), ("bpm", lambda: rng.randint(-5, 300)),
                      ("energy", lambda: rng.choice([0.5, 1e-7, 1e16, 123456.789, -0.0])),
                      ("explicit", lambda: rng.random() < 0.5), ("moods", lambda: [_text(rng) for _ in range(2)]),
                      ("odd", lambda: rng.choice([None, {"a": [1, "b"]}, float("nan"), [1, "x"], 2**70]))):
        if rng.random() < 0.7:
            extra[key] = make()
    path = rng.choice([f"{root}/datasets/x/{i}.flac", f"{root}/datasets//x/./{i}.flac",
                       f"{root}/datasets/x/../y/{i}.flac", f"/elsewhere/{i}.mp3", f"relative/{i}.ogg"])
    return Record(id=f"r{i}{_text(rng)}", audio_path=path, caption=_text(rng) or "c",
                  duration=rng.choice([1.0, 2.5, 0.1 + i, 1e-3]),
                  alt_captions=[_text(rng) for _ in range(rng.randint(0, 2))],
                  dataset=rng.choice([None, "ds", "other"]), artist=rng.choice([None, "A", " a ", _text(rng)]),
                  title=rng.choice([None, _text(rng)]), tags=[_text(rng) for _ in range(rng.randint(0, 3))],
                  license=rng.choice([None, "CC0-1.0"]), split=rng.choice([None, "train", "test"]),
                  group=rng.choice([None, f"g{i % 7}"]), extra=extra)


def _reference(records, manifest: Path) -> str:
    """The manifest as ``json`` writes it, one record's dict per line (paths stored by the manifest's rule)."""
    from musiccli.manifest import _path_writer

    stored = _path_writer(manifest)
    encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    return "[\n" + ",\n".join(encode(r.to_dict(stored(r.audio_path))) for r in records) + "\n]\n"


@pytest.mark.parametrize("seed", range(6))
def test_the_table_writer_writes_the_bytes_json_writes(tmp_path: Path, seed: int):
    rng = random.Random(seed)
    root = str(tmp_path / "state")
    records = [_record(rng, i, root) for i in range(rng.randint(1, 60))]
    (tmp_path / "state" / "manifests").mkdir(parents=True)
    for where in (tmp_path / "state" / "manifests", tmp_path):       # paths rewritten in a state dir, or not
        write_manifest(where / "table.json", RecordTable.from_records(records))
        assert (where / "table.json").read_text(encoding="utf-8") == _reference(records, where / "table.json")
        write_manifest(where / "records.json", records)
        assert (where / "records.json").read_text(encoding="utf-8") == _reference(records, where / "records.json")


def test_a_table_round_trips_its_records_and_keeps_absent_apart_from_null():
    rng = random.Random(7)
    records = [_record(rng, i, "/s") for i in range(40)]
    back = RecordTable.from_records(records).records()
    dump = json.JSONEncoder(ensure_ascii=False, allow_nan=True).encode
    assert [dump(r.to_dict()) for r in back] == [dump(r.to_dict()) for r in records]
    assert "odd" in RecordTable.from_records(records).encoded      # mixed values are kept as JSON text


def test_concat_fills_a_missing_column_and_types_a_conflict_as_text():
    a = RecordTable.from_records([Record("a", "/a", "c", 1.0, extra={"k": 1, "only_a": "x"})])
    b = RecordTable.from_records([Record("b", "/b", "c", 2.0, extra={"k": "one"})])
    both = RecordTable.concat([a, b])
    assert "k" in both.encoded
    assert [r.extra for r in both.records()] == [{"k": 1, "only_a": "x"}, {"k": "one"}]


def test_nothing_concatenates_to_an_empty_table_and_an_empty_manifest(tmp_path: Path):
    empty = RecordTable.concat([])
    assert len(empty) == 0 and empty.records() == []
    write_manifest(tmp_path / "m.json", empty)
    assert (tmp_path / "m.json").read_text() == "[]\n"


def test_the_writer_crosses_its_batch_boundary(tmp_path: Path, monkeypatch):
    import musiccli.manifest as manifest

    monkeypatch.setattr(manifest, "_WRITE_BATCH", 7)
    rng = random.Random(3)
    records = [_record(rng, i, "/s") for i in range(23)]
    write_manifest(tmp_path / "t.json", RecordTable.from_records(records))
    assert (tmp_path / "t.json").read_text(encoding="utf-8") == _reference(records, tmp_path / "t.json")
    assert len(read_manifest(tmp_path / "t.json")) == 23


def test_a_table_with_a_repeated_id_is_refused(tmp_path: Path):
    table = RecordTable.from_records([Record("a", "/a", "c", 1.0), Record("a", "/b", "c", 1.0)])
    with pytest.raises(MtxError, match="duplicate record id 'a'"):
        write_manifest(tmp_path / "m.json", table)
    assert not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------- sampling and splits
def _manifest(rng: random.Random, n: int) -> list[Record]:
    artists = [f"Artist {k}" for k in range(max(1, n // 6))]
    out = []
    for i in range(n):
        extra = {}
        if rng.random() < 0.3:
            extra["album_key"] = f"album {rng.randrange(max(1, n // 10))}"
        if rng.random() < 0.1:
            extra["artist_key"] = f"key {rng.randrange(5)}"
        artist = rng.choice(artists + [None, ""]) if rng.random() < 0.9 else rng.choice(artists).upper()
        out.append(Record(id=f"id{i}", audio_path=f"/m/{i}.flac", caption="c", duration=rng.choice([5.0, 60.0, 400.0]),
                          dataset=rng.choice(["a", "b", "c", None]), artist=artist,
                          group=f"rec {rng.randrange(n)}" if rng.random() < 0.3 else None,
                          split=rng.choice([None, None, "train", "val", "test"]), extra=extra))
    return out


def _copy(records: list[Record]) -> list[Record]:
    return [Record.from_dict(r.to_dict()) for r in records]


@pytest.mark.parametrize("seed", range(8))
def test_sampling_picks_the_rows_the_per_record_code_picked(seed: int):
    rng = random.Random(seed)
    records = _manifest(rng, rng.randint(1, 400))
    for kwargs in ({"max_samples": rng.randint(1, 300), "stratify_by": "dataset"},
                   {"max_samples": rng.randint(1, 300), "stratify_by": "duration"},
                   {"max_samples": rng.randint(1, 300), "stratify_by": "none"},
                   {"samples_per_dataset": rng.randint(1, 50), "max_samples": rng.randint(1, 300)},
                   {}):
        got = [r.id for r in sample_records(records, seed=seed, **kwargs)]
        assert got == [r.id for r in naive_splits.sample_records(records, seed=seed, **kwargs)], kwargs


@pytest.mark.parametrize("seed", range(10))
def test_splits_are_the_splits_the_per_record_code_gave(seed: int):
    rng = random.Random(seed)
    records = _manifest(rng, rng.choice([3, 12, 80, 500]))
    ratios = rng.choice([(0.8, 0.1, 0.1), (0.5, 0.0, 0.5), (1.0, 0.0, 0.0), (0.34, 0.33, 0.33)])
    previous = {r.id: rng.choice(["train", "val", "test"]) for r in records if rng.random() < 0.2} \
        if seed % 3 == 0 else None
    for keep in (False, True):
        ours, theirs = _copy(records), _copy(records)
        got = assign_splits(ours, ratios=ratios, seed=seed, keep_official=keep, previous=previous)
        want = naive_splits.assign_splits(theirs, ratios=ratios, seed=seed, keep_official=keep, previous=previous)
        assert [r.split for r in ours] == [r.split for r in theirs]
        assert got == want


def test_a_long_chain_of_shared_albums_is_one_component():
    # Record k shares an album with k+1 and an artist with k-1: one component however long the chain.
    records = [Record(id=f"r{k}", audio_path=f"/{k}", caption="c", duration=1.0, artist=f"a{k // 2}",
                      extra={"album_key": f"l{(k + 1) // 2}"}) for k in range(301)]
    from musiccli.manifest import recording_components

    assert recording_components(records) == [list(range(301))]
    assign_splits(records, seed=4)
    assert len({r.split for r in records}) == 1


def test_a_table_diff_equals_the_record_diff(tmp_path: Path):
    rng = random.Random(2)
    old = [_record(rng, i, str(tmp_path)) for i in range(30)]
    new = _copy(old[5:]) + [_record(rng, 100 + i, str(tmp_path)) for i in range(4)]
    new[0].audio_path = "/moved/elsewhere.flac"
    new[1].extra["content_hash"] = "other audio"
    assert diff_manifests(old, RecordTable.from_records(new)) == diff_manifests(old, new)


# --------------------------------------------------------------------------- the synth parser
def _plain_csv_records(root: Path) -> list[dict]:
    """metadata.csv read the plain way: csv.DictReader, json.loads, str.split."""
    out = []
    with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            alt = [str(a) for a in json.loads(row["alt_captions"])] if row["alt_captions"] else []
            out.append({"id": row["id"], "audio_path": str(root.resolve() / row["path"]), "caption": row["caption"],
                        "duration": float(row["duration"]), "alt_captions": alt, "artist": row["artist"] or None,
                        "title": row["title"] or None, "tags": [t for t in row["tags"].split(";") if t],
                        "bpm": int(row["bpm"]), "instruments": [t for t in row["instruments"].split(";") if t]})
    return out


@pytest.mark.parametrize("seed", range(4))
def test_the_arrow_csv_parser_reads_what_csv_and_json_read(tmp_path: Path, seed: int):
    rng = random.Random(seed)
    root = tmp_path / "synth"
    root.mkdir()
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for i in range(50):
            alt = rng.choice(["", json.dumps([_text(rng) for _ in range(2)], ensure_ascii=rng.random() < 0.5),
                              json.dumps([1, "x", 2.5]), ' ["spaced"] ', '["a",\n "b"]'])
            w.writerow([f"id{i}", f"audio/{i}.flac", "techno", str(90 + i), "A", "minor",
                        rng.choice(["piano;;drums;", "", "x"]), "calm", "loud", _text(rng), _text(rng),
                        rng.choice(["a;b", ";", "", "lofi;"]), _text(rng) or "c", alt,
                        rng.choice(["5", "5.25", " 7 ", "1e2"]), 24000, ""])
    want = _plain_csv_records(root)
    got = SynthSource().records(root)
    assert [{k: (r.extra[k] if k in ("bpm", "instruments") else getattr(r, k)) for k in want[0]} for r in got] == want
    assert all(math.isfinite(r.duration) for r in got)
