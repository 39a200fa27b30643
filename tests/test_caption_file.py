"""`mtx unify --captions FILE`: your own captions and labels (CSV / JSONL) merged onto a scanned folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musiccli.caption_file import merge_caption_file, read_caption_file
from musiccli.errors import MtxError
from musiccli.manifest import Record, read_manifest
from musiccli.state import StateDir
from musiccli.zeroshot import label_set


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def library(tmp_path: Path, state_dir: Path):
    """corpus/<source>/<collection>/<piece>.wav (real WAVs, untagged), scanned with `mtx download folder`."""
    from httpserver import mtx_runner

    corpus = tmp_path / "corpus"
    for i, (s, style) in enumerate((("mma", "samba"), ("field", "rain"))):
        d = corpus / s / f"{style}-pack"
        d.mkdir(parents=True)
        for p in range(6):
            sf.write(d / f"{style}_{p}.wav", _tone(0.3, 200 + 50 * p + 1000 * i), 8000)   # each its own audio
    mtx = mtx_runner(state_dir)
    assert mtx("download", "folder", "--path", str(corpus)).exit_code == 0
    return corpus, mtx, StateDir.resolve(state_dir)


def _manifest(state: StateDir, name: str) -> dict[str, Record]:
    return {r.extra["relative_path"]: r for r in read_manifest(state.manifest_path(name))}


IDENTITY = ("id", "audio_path", "duration", "group", "split", "dataset")


def test_csv_captions_labels_and_unknown_paths(library, tmp_path: Path) -> None:
    corpus, mtx, state = library
    assert mtx("unify", "--datasets", "folder", "--name", "plain").exit_code == 0
    caps = tmp_path / "caps.csv"
    caps.write_text(
        "path,caption,alt_captions,style,instruments\n"
        'mma/samba-pack/samba_0.wav,"A fast samba, with surdo",busy drums|carnival groove,samba,surdo|cuica\n'
        f"{corpus}/mma/samba-pack/samba_1.wav,A slow samba,,samba,\n"      # absolute path; no alternatives
        "field/rain-pack/rain_0.wav,,,rain,\n"                              # a label only: captions stay
        "nowhere/missing.wav,Not in the library,,x,\n", encoding="utf-8")
    out = mtx("unify", "--datasets", "folder", "--name", "mine", "--captions", str(caps))
    assert out.exit_code == 0, out.output
    assert "3 of 4 row(s) matched" in out.output and "2 record(s) took their captions from it" in out.output
    assert "1 row(s) name no scanned record" in out.output and "line 5: path nowhere/missing.wav" in out.output

    plain, mine = _manifest(state, "plain"), _manifest(state, "mine")
    assert set(plain) == set(mine)
    for rel in plain:   # captions and labels change; which audio a record is, and its split, do not
        assert [getattr(mine[rel], f) for f in IDENTITY] == [getattr(plain[rel], f) for f in IDENTITY]
        assert mine[rel].extra.get("content_hash") == plain[rel].extra.get("content_hash")
    fast = mine["mma/samba-pack/samba_0.wav"]
    assert fast.caption == "A fast samba, with surdo"
    assert fast.alt_captions == ["busy drums", "carnival groove"]
    assert fast.extra["style"] == "samba" and fast.extra["instruments"] == ["surdo", "cuica"]
    assert fast.extra["caption_source"] == "file"
    slow = mine["mma/samba-pack/samba_1.wav"]
    assert (slow.caption, slow.alt_captions) == ("A slow samba", [])
    rain = mine["field/rain-pack/rain_0.wav"]
    assert rain.captions == plain["field/rain-pack/rain_0.wav"].captions and rain.extra["style"] == "rain"
    untouched = mine["field/rain-pack/rain_1.wav"]
    assert untouched.captions == plain["field/rain-pack/rain_1.wav"].captions and "style" not in untouched.extra

    # `--zero-shot style` and `--zero-shot instruments` read these fields.
    records = list(mine.values())
    styles = label_set(records, "style")
    assert styles.classes == ["rain", "samba"] and len(styles.rows) == 3 and not styles.multi
    assert label_set(records, "instruments").classes == ["cuica", "surdo"]


def test_jsonl_by_id_and_path_with_artist_and_tags(library, tmp_path: Path) -> None:
    corpus, mtx, state = library
    assert mtx("unify", "--datasets", "folder", "--name", "plain").exit_code == 0
    plain = _manifest(state, "plain")
    rid = plain["field/rain-pack/rain_2.wav"].id
    caps = tmp_path / "caps.jsonl"
    caps.write_text("\n".join(json.dumps(d) for d in [
        {"id": rid, "caption": "Rain on a tin roof", "alt_captions": "steady rain", "artist": "Field Recordist",
         "tags": ["ambient", "rain"], "mood": ["calm", "wet"], "bpm": 0},
        {"path": str(corpus / "mma/samba-pack/samba_3.wav"), "caption": "Samba school rehearsal", "license": "CC-BY"},
        {"id": "folder-0000000000000000", "caption": "no such track"},
        {"path": "mma/samba-pack/samba_4.wav", "caption": None, "style": "samba"},   # null: caption kept
    ]) + "\n\n", encoding="utf-8")
    out = mtx("unify", "--datasets", "folder", "--name", "mine", "--captions", str(caps))
    assert out.exit_code == 0, out.output
    assert "3 of 4 row(s) matched" in out.output and "line 3: id folder-0000000000000000" in out.output
    assert "1 from the caption file" in out.output and "11 without an artist" in out.output
    mine = _manifest(state, "mine")
    rain = mine["field/rain-pack/rain_2.wav"]
    assert (rain.caption, rain.alt_captions, rain.artist, rain.tags) == (
        "Rain on a tin roof", ["steady rain"], "Field Recordist", ["ambient", "rain"])
    assert rain.extra["mood"] == ["calm", "wet"] and rain.extra["bpm"] == 0 and rain.extra["artist_source"] == "file"
    samba = mine["mma/samba-pack/samba_3.wav"]
    assert samba.caption == "Samba school rehearsal" and samba.license == "CC-BY"
    kept = mine["mma/samba-pack/samba_4.wav"]
    assert kept.captions == plain["mma/samba-pack/samba_4.wav"].captions and kept.extra["style"] == "samba"
    for rel in plain:
        assert [getattr(mine[rel], f) for f in IDENTITY[:4]] == [getattr(plain[rel], f) for f in IDENTITY[:4]]


def _refused(out, *needles: str) -> None:
    assert out.exit_code == 1, out.output
    assert "Traceback" not in out.output
    for n in needles:
        assert n in out.output, out.output


def test_duplicate_keys_and_bad_files_are_refused_in_one_line(library, tmp_path: Path) -> None:
    corpus, mtx, state = library
    dup = tmp_path / "dup.csv"
    dup.write_text("path,caption\nmma/samba-pack/samba_0.wav,a\nfield/rain-pack/rain_0.wav,b\n"
                   "mma/samba-pack/./samba_0.wav,c\n", encoding="utf-8")
    _refused(mtx("unify", "--datasets", "folder", "--captions", str(dup)),
             "line 4 repeats path", "first on line 2", "give each track one row")
    assert not state.manifest_path("default").exists()   # nothing written
    # The same record named by id on one line and by path on another.
    rid = next(json.loads(x)["id"] for x in (state.dataset_dir("folder") / "index.jsonl").read_text().splitlines()
               if json.loads(x).get("rel") == "mma/samba-pack/samba_0.wav")
    both = tmp_path / "both.jsonl"
    both.write_text(json.dumps({"id": rid, "caption": "a"}) + "\n"
                    + json.dumps({"path": "mma/samba-pack/samba_0.wav", "caption": "b"}) + "\n", encoding="utf-8")
    _refused(mtx("unify", "--datasets", "folder", "--captions", str(both)), "lines 1 and 2 both name record")

    txt = tmp_path / "caps.txt"
    txt.write_text("path,caption\n", encoding="utf-8")
    out = mtx("unify", "--datasets", "folder", "--captions", str(txt))   # the CLI calls it a usage error
    assert out.exit_code == 2 and "not one of tags, llm, or a caption file" in out.output
    with pytest.raises(MtxError, match="unknown format '.txt'"):         # and the core refuses it too
        read_caption_file(txt)
    cases = {
        "nokey.csv": ("file,caption\nx.wav,a\n", "has no id or path column"),
        "ident.csv": ("path,caption,duration\nx.wav,a,3\n", "'duration' cannot be set from a caption file"),
        "bad.jsonl": ('{"path": "x.wav", "caption": "a"}\n{"path": "y.wav", caption\n', "line 2 is not valid JSON"),
        "list.jsonl": ('["x.wav", "a"]\n', "line 1 is a JSON list, not an object"),
        "type.jsonl": ('{"path": "x.wav", "caption": ["a"]}\n', "line 1: caption ['a'] is not a string"),
        "two.jsonl": ('{"path": "x.wav", "id": "a", "caption": "a"}\n', "line 1 gives both id and path"),
        "empty.csv": ("path,caption\n", "has no rows"),
        "latin1.csv": ("path,caption\nx.wav,caf\xe9\n".encode("latin-1"), "is not UTF-8"),
        "cells.csv": ("path,caption\nx.wav,a,b\n", "line 2 has 3 cells for 2 columns"),
    }
    for name, (body, message) in cases.items():
        p = tmp_path / name
        p.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
        _refused(mtx("unify", "--datasets", "folder", "--captions", str(p)), message)
    _refused(mtx("unify", "--datasets", "folder", "--captions", str(tmp_path / "absent.csv")), "does not exist")


def test_csv_quoting_lists_bom_and_tsv(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text('\ufeffid,caption,alt_captions,genre\n'
                 '  a1 ,"Strings, then ""brass""",one | two||,jazz|swing\n'
                 "a2,,,\n"
                 '"a3","two\nlines",,\n', encoding="utf-8")
    cf = read_caption_file(p)
    assert cf.format == "csv" and [r.key for r in cf.rows] == ["a1", "a2", "a3"]
    assert cf.rows[2].values == {"caption": "two\nlines"} and cf.rows[2].line == 5
    assert cf.rows[0].values == {"caption": 'Strings, then "brass"', "alt_captions": ["one", "two"],
                                 "genre": ["jazz", "swing"]}
    assert cf.rows[1].values == {}
    t = tmp_path / "c.tsv"
    t.write_text("path\tcaption\nx.wav\tA, b\n", encoding="utf-8")
    assert read_caption_file(t).rows[0].values == {"caption": "A, b"}
    # The digest follows the content (unify's identity), not the file name.
    q = tmp_path / "d.csv"
    q.write_bytes(p.read_bytes())
    assert read_caption_file(q).digest == cf.digest != read_caption_file(t).digest

    records = [Record(id="a1", audio_path=str(tmp_path / "a.wav"), caption="old", duration=1.0,
                      alt_captions=["older"]),
               Record(id="a2", audio_path=str(tmp_path / "b.wav"), caption="keep", duration=2.0)]
    merged = merge_caption_file(records, cf)
    assert (merged.matched, merged.captions, merged.unknown, merged.without_row) == (2, 1, 1, 0)
    assert records[0].captions == ['Strings, then "brass"', "one", "two"]
    assert records[0].extra["genre"] == ["jazz", "swing"]
    assert records[1].captions == ["keep"] and records[1].duration == 2.0
