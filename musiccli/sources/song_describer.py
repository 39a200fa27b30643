"""The Song Describer Dataset (Zenodo record 10072001): an evaluation set of captioned 2-minute excerpts.

Native layout under the dataset root (as published)::

    song_describer.csv          caption_id,track_id,caption,is_valid_subset,familiarity,
                                artist_id,album_id,path,duration   (one row per caption)
    audio/NN/<track_id>.2min.mp3   NN = track_id % 100, extracted from audio.zip
    audio.zip                   removed after a verified extraction unless --keep-archives
    ledger.jsonl                one entry per track: ok + sha256 of the extracted file

Zenodo publishes no checksums, so the ledger records the sha256 of each extracted
file and ``verify`` checks against that. The CSV's ``duration`` is the length of the
original track, not of the excerpt; records read the excerpt's length from its header.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from pathlib import Path

from ..errors import MtxError
from ..manifest import Record, jamendo_artist, jamendo_group
from ..progress import Progress
from ..state import file_sha256
from ._archive import iter_members, safe_extract
from ._http import base_url, fetch, join_url
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import Ledger

log = logging.getLogger(__name__)

CSV_NAME = "song_describer.csv"
ZIP_NAME = "audio.zip"
ENV_URL = "MTX_SONG_DESCRIBER_URL"
DEFAULT_BASE = "https://zenodo.org/record/10072001/files"
COLUMNS = ("caption_id", "track_id", "caption", "is_valid_subset", "familiarity", "artist_id", "album_id",
           "path", "duration")
EXTRACT_BATCH = 64  # members per extraction call: the unit between interrupt checks

INFO = SourceInfo(
    name="song-describer",
    description="Song Describer Dataset: 1,106 captions of 706 CC-licensed 2-minute excerpts (evaluation only)",
    license="CC-BY-SA-4.0",
    citation=("Manco, I., Weck, B., Doh, S., Won, M., Zhang, Y., Bogdanov, D., Wu, Y., Chen, K., Tovstogan, P., "
              "Benetos, E., Quinton, E., Fazekas, G., Nam, J. (2023). The Song Describer Dataset: a Corpus of "
              "Audio Captions for Music-and-Language Evaluation. NeurIPS ML for Audio Workshop."),
    homepage="https://zenodo.org/records/10072001",
    phase=None,
    options=("keep_archives",),
    urls={"csv": join_url(DEFAULT_BASE, CSV_NAME), "audio": join_url(DEFAULT_BASE, ZIP_NAME)},
    checksums={},  # none published; the ledger keeps the sha256 of what was extracted
)

_MEMBER_RE = re.compile(r"(?:^|/)(\d+)(?:\.2min)?\.mp3$")


def audio_relpath(track_id: int) -> str:
    return f"audio/{track_id % 100:02d}/{track_id}.2min.mp3"


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def read_captions(path: Path) -> dict[int, list[dict[str, str]]]:
    """CSV rows grouped by track id, each group ordered by caption_id."""
    if not path.exists():
        raise MtxError(f"{path} not found", hint="run `mtx download song-describer`")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("caption_id", "track_id", "caption") if c not in (reader.fieldnames or [])]
        if missing:
            raise MtxError(f"{path.name} lacks column(s) {', '.join(missing)}",
                           hint="the file is not the Song Describer CSV; download it again with --force")
        groups: dict[int, list[dict[str, str]]] = defaultdict(list)
        for row in reader:
            tid = _int(row.get("track_id"))
            if tid is None or not (row.get("caption") or "").strip():
                continue
            groups[tid].append(row)
    for rows in groups.values():
        rows.sort(key=lambda r: (_int(r.get("caption_id")) is None, _int(r.get("caption_id")) or 0))
    return dict(sorted(groups.items()))


@register
class SongDescriberSource(Source):
    info = INFO

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        root.mkdir(parents=True, exist_ok=True)
        base = base_url(DEFAULT_BASE, cfg.mirror, ENV_URL)
        with progress.task("song_describer.csv", unit="B") as task:
            fetch(join_url(base, CSV_NAME), root / CSV_NAME, task=task)
        tracks = list(read_captions(root / CSV_NAME))
        if cfg.max_items is not None:
            tracks = tracks[: max(0, cfg.max_items)]
        todo = [t for t in tracks if not (ledger.is_ok(self._id(t)) and (root / self._rel(ledger, t)).is_file())]
        log.info("song-describer: %d tracks selected, %d to extract", len(tracks), len(todo))
        if not todo:
            self._drop_archive(root, cfg)
            return
        zip_path = root / ZIP_NAME
        with progress.task("audio.zip", unit="B") as task:
            fetch(join_url(base, ZIP_NAME), zip_path, task=task)
        progress.check_interrupt()
        by_id: dict[int, str] = {}
        for name in iter_members(zip_path):
            m = _MEMBER_RE.search(name)
            if m:
                by_id.setdefault(int(m.group(1)), name)
        with progress.task("Extracting song-describer audio", total=len(todo), unit="tracks") as task:
            for i in range(0, len(todo), EXTRACT_BATCH):
                batch = todo[i:i + EXTRACT_BATCH]
                wanted = {by_id[t] for t in batch if t in by_id}
                # zipfile checks each member's CRC while reading it, so an extracted file is a verified one.
                safe_extract(zip_path, root, members=wanted.__contains__)
                for t in batch:
                    self._record(root, ledger, t, by_id.get(t))
                task.advance(len(batch))
                progress.check_interrupt()
        if all(ledger.is_ok(self._id(t)) for t in tracks):
            self._drop_archive(root, cfg)

    @staticmethod
    def _id(track_id: int) -> str:
        return f"song-describer-{track_id}"

    @staticmethod
    def _rel(ledger: Ledger, track_id: int) -> str:
        e = ledger.entries.get(f"song-describer-{track_id}")
        return e.path if e is not None and e.path else audio_relpath(track_id)

    def _record(self, root: Path, ledger: Ledger, track_id: int, member: str | None) -> None:
        if member is None:
            ledger.failed(self._id(track_id), f"{audio_relpath(track_id)} is not in {ZIP_NAME}")
            return
        path = root / member
        if not path.is_file() or path.stat().st_size == 0:
            ledger.failed(self._id(track_id), f"extraction of {member} produced no file")
            return
        ledger.ok(self._id(track_id), path=member, checksum=file_sha256(path), nbytes=path.stat().st_size)

    @staticmethod
    def _drop_archive(root: Path, cfg: DownloadConfig) -> None:
        zip_path = root / ZIP_NAME
        if zip_path.exists() and not cfg.keep_archives:
            log.info("song-describer: all selected tracks extracted and verified; removing %s", ZIP_NAME)
            zip_path.unlink()

    # ------------------------------------------------------------------ parsing
    def _present(self, root: Path) -> dict[int, Path]:
        """Tracks the ledger marks ok whose file is on disk (or, without a ledger, files that exist)."""
        ledger = Ledger(root)
        out = {}
        for tid in read_captions(root / CSV_NAME):
            entry = ledger.entries.get(self._id(tid))
            if entry is not None and entry.status != "ok":
                continue
            path = root / (entry.path if entry is not None and entry.path else audio_relpath(tid))
            if path.is_file():
                out[tid] = path
        return out

    def records(self, root: Path) -> list[Record]:
        from ..audio import AudioError, audio_info

        root = Path(root).resolve()
        groups = read_captions(root / CSV_NAME)
        out = []
        for tid, path in self._present(root).items():
            rows = groups[tid]
            try:
                duration = audio_info(path).duration
            except AudioError as e:
                log.warning("song-describer: skipping track %d: %s", tid, e.message)
                continue
            first = rows[0]
            artist_id = _int(first.get("artist_id"))
            album_id = _int(first.get("album_id"))
            out.append(Record(
                id=self._id(tid), audio_path=str(path), caption=first["caption"].strip(), duration=duration,
                alt_captions=[r["caption"].strip() for r in rows[1:]], dataset=INFO.name,
                # MTG-Jamendo's spelling of the same Jamendo ids, so artists match across the two sources.
                artist=f"artist_{artist_id:06d}" if artist_id is not None else None,
                license=INFO.license, split="test", group=jamendo_group(tid),
                extra={"track_id": tid, "album_id": album_id, "artist_key": jamendo_artist(artist_id),
                       "jamendo_path": first.get("path") or None,
                       "caption_ids": [_int(r.get("caption_id")) for r in rows],
                       "is_valid_subset": [_flag(r.get("is_valid_subset")) for r in rows],
                       "original_duration": _float(first.get("duration"))},
            ))
        return out

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        root = Path(root)
        ledger = Ledger(root)
        out = []
        for e in ledger.entries.values():
            if e.status == "ok" and e.path:
                out.append(ExpectedFile(id=e.id, path=root / e.path,
                                        checksum=("sha256", e.checksum) if e.checksum else None))
        return out


def _flag(value: str | None) -> bool | None:
    v = (value or "").strip().lower()
    if v in ("true", "1", "1.0", "yes"):
        return True
    if v in ("false", "0", "0.0", "no"):
        return False
    return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


__all__ = ["SongDescriberSource", "INFO", "audio_relpath", "read_captions"]
