"""Tiny MTG-Jamendo and Song Describer mirrors that share Jamendo tracks, in each source's real layout.

Used by the split-leak tests and ``benchmarks/split_leaks.py``. The two sources spell the same
artist differently, as the real ones do: MTG-Jamendo's ``raw.meta.tsv`` gives artist names, Song
Describer only an artist id. MTG-Jamendo's official splits put most shared tracks in train, while
Song Describer is all test: the situation in which artist-only grouping leaked test tracks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sine_audio import mp3

TAGS = (["genre---rock", "instrument---guitar"], ["mood/theme---calm", "instrument---piano"],
        ["genre---electronic", "mood/theme---energetic"], ["genre---jazz", "instrument---saxophone"])


@dataclass(frozen=True)
class JamendoFixture:
    mtg_www: Path
    sd_www: Path
    shared: list[int]          # track ids in both sources
    mtg_only: list[int]


def tsv(rows: list[list[str]]) -> bytes:
    """An MTG-Jamendo tag TSV (CRLF line ends, as published)."""
    header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
    return ("\r\n".join([header, *("\t".join(r) for r in rows)]) + "\r\n").encode()


META_HEADER = "TRACK_ID\tARTIST_ID\tALBUM_ID\tTRACK_NAME\tARTIST_NAME\tALBUM_NAME\tRELEASEDATE\tURL"


def write_mtg_mirror(www: Path, rows: dict[int, list[str]], meta: list[str], splits: dict[str, list[int]],
                     audio: dict[int, bytes], corrupt_track: int | None = None, member_prefix: str = "") -> None:
    """An MTG-Jamendo mirror in the published layout under ``www``.

    ``rows``: tag-TSV rows by track id (a listed id without ``audio`` has no tar member); ``meta``:
    ``raw.meta.tsv`` lines after the header; ``splits``: split-0 track ids by split name. The audio goes
    into one ``raw_30s_audio-low-NN.tar`` per ``id % 100``, with the sha256 lists of tars and tracks.
    ``corrupt_track`` gets a wrong listed checksum; ``member_prefix`` goes in front of tar member names.
    """
    data = www / "data"
    (data / "download").mkdir(parents=True, exist_ok=True)
    (data / "splits" / "split-0").mkdir(parents=True, exist_ok=True)
    (data / "raw_30s_cleantags_50artists.tsv").write_bytes(tsv(list(rows.values())))
    (data / "raw.meta.tsv").write_bytes(("\r\n".join([META_HEADER, *meta]) + "\r\n").encode())
    for name, ids in splits.items():
        (data / "splits/split-0" / f"autotagging-{name}.tsv").write_bytes(tsv([rows[t] for t in ids]))
    out = www / "raw_30s" / "audio-low"
    out.mkdir(parents=True, exist_ok=True)
    tars: dict[str, list[int]] = {}
    for tid in audio:
        tars.setdefault(f"raw_30s_audio-low-{tid % 100:02d}.tar", []).append(tid)
    track_lines, tar_lines = [], []
    for name, members in sorted(tars.items()):
        with tarfile.open(out / name, "w") as tf:
            for tid in members:
                member = f"{tid % 100:02d}/{tid}.low.mp3"
                info = tarfile.TarInfo(member_prefix + member)
                info.size = len(audio[tid])
                tf.addfile(info, io.BytesIO(audio[tid]))
                sha = "0" * 64 if tid == corrupt_track else hashlib.sha256(audio[tid]).hexdigest()
                track_lines.append(f"{sha} {member}")
        tar_lines.append(f"{hashlib.sha256((out / name).read_bytes()).hexdigest()} {name}")
    (data / "download/raw_30s_audio-low_sha256_tars.txt").write_text("\n".join(tar_lines) + "\n")
    (data / "download/raw_30s_audio-low_sha256_tracks.txt").write_text("\n".join(track_lines) + "\n")


def build(root: Path, n_shared: int = 40, n_mtg_only: int = 40, tracks_per_artist: int = 2) -> JamendoFixture:
    """``n_shared + n_mtg_only`` MTG-Jamendo tracks (``tracks_per_artist`` per artist); Song Describer
    captions the first ``n_shared`` of them."""
    ids = [1000 + 37 * i for i in range(n_shared + n_mtg_only)]
    shared, mtg_only = ids[:n_shared], ids[n_shared:]
    artist = {tid: i // tracks_per_artist for i, tid in enumerate(ids)}
    audio = {tid: mp3(0.4, 200.0 + 5 * i) for i, tid in enumerate(ids)}

    mtg = root / "mtg-www"
    rows = {tid: [f"track_{tid:07d}", f"artist_{artist[tid]:06d}", f"album_{artist[tid]:06d}",
                  f"{tid % 100:02d}/{tid}.mp3", "0.4", *TAGS[i % len(TAGS)]] for i, tid in enumerate(ids)}
    meta = [f"track_{tid:07d}\tartist_{artist[tid]:06d}\talbum_{artist[tid]:06d}\tSong {tid}\t"
            f"The Band {artist[tid]}\tAlbum {artist[tid]}\t2010-01-01\t" for tid in ids]
    # Official MTG-Jamendo split, by artist: 8 of every 10 artists train, then one val, one test.
    official = {tid: ("train", "train", "train", "train", "train", "train", "train", "train", "validation",
                      "test")[artist[tid] % 10] for tid in ids}
    splits = {name: [t for t in ids if official[t] == name] for name in ("train", "validation", "test")}
    write_mtg_mirror(mtg, rows, meta, splits, audio)

    sd = root / "sd-www"
    sd.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["caption_id", "track_id", "caption", "is_valid_subset", "familiarity", "artist_id", "album_id",
                "path", "duration"])
    for i, tid in enumerate(shared):
        w.writerow([i, tid, f"A described song number {tid}.", True, 0, artist[tid], artist[tid],
                    f"{tid % 100:02d}/{tid}.mp3", 0.4])
    (sd / "song_describer.csv").write_text(buf.getvalue(), encoding="utf-8")
    with zipfile.ZipFile(sd / "audio.zip", "w") as zf:
        for tid in shared:
            zf.writestr(f"audio/{tid % 100:02d}/{tid}.2min.mp3", audio[tid])
    return JamendoFixture(mtg, sd, shared, mtg_only)


def download_both(fx: JamendoFixture, mtg_root: Path, sd_root: Path) -> None:
    """Fetch both mirrors over HTTP on 127.0.0.1 with the real downloaders."""
    import os

    from httpserver import serve
    from musiccli.progress import NullProgress
    from musiccli.sources import mtg_jamendo as mj
    from musiccli.sources import song_describer as sdm
    from musiccli.sources.base import DownloadConfig
    from musiccli.sources.ledger import Ledger

    with serve(fx.mtg_www) as srv:
        old = os.environ.get(mj.ENV_META_URL)
        os.environ[mj.ENV_META_URL] = srv.url
        try:
            mj.MtgJamendoSource().download(DownloadConfig(source="mtg-jamendo", mirror=srv.url), mtg_root,
                                           Ledger(mtg_root), NullProgress())
        finally:
            if old is None:
                os.environ.pop(mj.ENV_META_URL, None)
            else:
                os.environ[mj.ENV_META_URL] = old
    with serve(fx.sd_www) as srv:
        sdm.SongDescriberSource().download(DownloadConfig(source="song-describer", mirror=srv.url), sd_root,
                                          Ledger(sd_root), NullProgress())


def jamendo_track(record) -> int:
    """The Jamendo track id of an MTG-Jamendo or Song Describer record, from the fields both versions keep."""
    tid = record.extra["track_id"]
    return int(str(tid).replace("track_", ""))


def leaked_test_tracks(records) -> int:
    """Jamendo tracks that are in test in one record and in train in another."""
    by_track: dict[int, set[str]] = {}
    for r in records:
        by_track.setdefault(jamendo_track(r), set()).add(r.split)
    return sum(1 for s in by_track.values() if {"test", "train"} <= s)
