"""FMA, the Free Music Archive dataset (mdeff/fma): 30 s clips (or full tracks) with rich tag metadata.

Native layout under the dataset root (as published)::

    fma_metadata/tracks.csv, genres.csv     from fma_metadata.zip (sha1-verified)
    fma_<size>/NNN/NNNNNN.mp3               from fma_<size>.zip (sha1-verified, bzip2 members)
    fma_<size>/checksums                    sha1sum lines for every mp3 in the archive
    ledger.jsonl                            one entry per track: ok + its sha1, or failed + reason

Archives are removed after a verified extraction unless ``--keep-archives``.
FMA has no captions: they are synthesised from the genre and tag metadata with
:mod:`musiccli.captions`. A handful of fma_small/large clips are known to be short
or empty (``KNOWN_BAD``); they are kept as downloaded and ``verify`` flags them by
duration, since their sha1 matches the published checksums.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MtxError
from ..manifest import Record
from ..progress import Progress
from ._archive import iter_members, safe_extract
from ._http import base_url, fetch, file_digest, join_url
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import Ledger

log = logging.getLogger(__name__)

ENV_URL = "MTX_FMA_URL"
DEFAULT_BASE = "https://os.unil.cloud.switch.ch/fma"
SIZES = ("small", "medium", "large", "full")
CLIP_SECONDS = 30.0
CLIP_TOLERANCE = 1.5
EXTRACT_BATCH = 200
KNOWN_BAD = frozenset({98565, 98567, 98569, 99134, 108925, 133297})
SPLIT_NAMES = {"training": "train", "train": "train", "validation": "val", "val": "val", "test": "test"}
# set.subset holds the smallest subset a track belongs to; the subsets nest small < medium < large.
SUBSET_LEVEL = {"small": 0, "medium": 1, "large": 2}

INFO = SourceInfo(
    name="fma",
    description="Free Music Archive: 106,574 CC-licensed tracks with genre and tag metadata "
                "(small 8k / medium 25k / large 106k 30 s clips, or full tracks)",
    license="CC-BY-4.0 (metadata); audio under each artist's licence",
    citation=("Defferrard, M., Benzi, K., Vandergheynst, P., Bresson, X. (2017). FMA: A Dataset for Music "
              "Analysis. ISMIR."),
    homepage="https://github.com/mdeff/fma",
    phase=1,
    options=("size", "keep_archives"),
    urls={f"{name}.zip": join_url(DEFAULT_BASE, f"{name}.zip")
          for name in ("fma_metadata", "fma_small", "fma_medium", "fma_large", "fma_full")},
    checksums={
        "fma_metadata.zip": "f0df49ffe5f2a6008d7dc83c6915b31835dfe733",
        "fma_small.zip": "ade154f733639d52e35e32f5593efe5be76c6d70",
        "fma_medium.zip": "c67b69ea232021025fca9231fc1c7c1a063ab50b",
        "fma_large.zip": "497109f4dd721066b5ce5e5f250ec604dc78939e",
        "fma_full.zip": "0f0ace23fbe9ba30ecb7e95f763e435ea802b8ab",
    },
)

_TRACK_RE = re.compile(r"(?:^|/)(\d{3})/(\d{6})\.mp3$")


def track_relpath(size: str, track_id: int) -> str:
    tid = f"{track_id:06d}"
    return f"fma_{size}/{tid[:3]}/{tid}.mp3"


def _check_size(size: str) -> str:
    if size not in SIZES:
        raise MtxError(f"unknown FMA size {size!r}", hint=f"choose one of: {', '.join(SIZES)}")
    return size


def _literal_list(value: Any) -> list:
    """``"[21, 4]"`` -> [21, 4]; anything malformed or missing -> []."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return []
    return list(parsed) if isinstance(parsed, (list, tuple)) else []


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    s = str(value).strip()
    return s or None


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


@dataclass(frozen=True)
class Track:
    id: int
    title: str | None
    artist: str | None
    album: str | None
    duration: float | None
    genre_top: str | None
    genres: tuple[int, ...]
    genres_all: tuple[int, ...]
    tags: tuple[str, ...]
    license: str | None
    split: str | None
    subset: str | None


def _col(df, group: str, name: str):  # noqa: ANN001
    return df[(group, name)] if (group, name) in df.columns else None


def read_tracks(path: Path) -> list[Track]:
    """Parse tracks.csv (two header levels plus a ``track_id`` line) into Track rows, ordered by id."""
    import pandas as pd

    if not path.exists():
        raise MtxError(f"{path} not found", hint="run `mtx download fma`")
    try:
        df = pd.read_csv(path, index_col=0, header=[0, 1], low_memory=False)
    except (ValueError, pd.errors.ParserError) as e:
        raise MtxError(f"cannot parse {path.name}: {e}", hint="download fma_metadata.zip again (--force)") from None
    if ("track", "title") not in df.columns and ("set", "split") not in df.columns:
        raise MtxError(f"{path.name} lacks the track/set column groups",
                       hint="this is not FMA's tracks.csv; download fma_metadata.zip again (--force)")
    cols = {key: _col(df, *key) for key in [
        ("track", "title"), ("artist", "name"), ("album", "title"), ("track", "duration"),
        ("track", "genre_top"), ("track", "genres"), ("track", "genres_all"), ("track", "tags"),
        ("track", "license"), ("set", "split"), ("set", "subset")]}

    def get(key, i):  # noqa: ANN001, ANN202
        c = cols[key]
        return None if c is None else c.iloc[i]

    out = []
    for i, tid in enumerate(df.index):
        try:
            track_id = int(tid)
        except (TypeError, ValueError):
            continue  # a stray line (e.g. the track_id header read as data by an odd CSV)
        out.append(Track(
            id=track_id, title=_text(get(("track", "title"), i)), artist=_text(get(("artist", "name"), i)),
            album=_text(get(("album", "title"), i)), duration=_float(get(("track", "duration"), i)),
            genre_top=_text(get(("track", "genre_top"), i)),
            genres=tuple(int(g) for g in _literal_list(get(("track", "genres"), i)) if isinstance(g, int)),
            genres_all=tuple(int(g) for g in _literal_list(get(("track", "genres_all"), i)) if isinstance(g, int)),
            tags=tuple(str(t) for t in _literal_list(get(("track", "tags"), i))),
            license=_text(get(("track", "license"), i)), split=_text(get(("set", "split"), i)),
            subset=_text(get(("set", "subset"), i)),
        ))
    out.sort(key=lambda t: t.id)
    return out


def read_genres(path: Path) -> dict[int, str]:
    import pandas as pd

    if not path.exists():
        return {}
    df = pd.read_csv(path)
    if "genre_id" not in df.columns or "title" not in df.columns:
        return {}
    return {int(g): str(t) for g, t in zip(df["genre_id"], df["title"]) if _text(t)}


def parse_checksums(text: str) -> dict[str, str]:
    """sha1sum lines (``<sha1>  000/000002.mp3``) -> {relative path: sha1}."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{40}", parts[0]):
            out[parts[1].lstrip("*").strip()] = parts[0].lower()
    return out


def select_tracks(tracks: list[Track], size: str, subset: str | None, max_items: int | None) -> list[Track]:
    """The tracks an archive of ``size`` holds, narrowed by --subset (a split or a smaller subset) and --max-items."""
    if size in ("small", "medium"):
        level = SUBSET_LEVEL[size]
        tracks = [t for t in tracks if t.subset in SUBSET_LEVEL and SUBSET_LEVEL[t.subset] <= level]
    if subset:
        s = subset.lower()
        if s in SUBSET_LEVEL:
            tracks = [t for t in tracks if t.subset in SUBSET_LEVEL and SUBSET_LEVEL[t.subset] <= SUBSET_LEVEL[s]]
        elif s in SPLIT_NAMES:
            tracks = [t for t in tracks if SPLIT_NAMES.get((t.split or "").lower()) == SPLIT_NAMES[s]]
        else:
            raise MtxError(f"unknown FMA subset {subset!r}",
                           hint="use a split (train, val, test) or a subset (small, medium, large)")
    if max_items is not None:
        tracks = tracks[: max(0, max_items)]
    return tracks


@register
class FmaSource(Source):
    info = INFO

    @staticmethod
    def _id(track_id: int) -> str:
        return f"fma-{track_id}"

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        size = _check_size(cfg.size)
        root.mkdir(parents=True, exist_ok=True)
        base = base_url(DEFAULT_BASE, cfg.mirror, ENV_URL)
        self._metadata(base, root, cfg, progress)
        tracks = select_tracks(read_tracks(root / "fma_metadata" / "tracks.csv"), size, cfg.subset, cfg.max_items)
        todo = [t for t in tracks if not (ledger.is_ok(self._id(t.id)) and (root / track_relpath(size, t.id)).is_file())]
        log.info("fma_%s: %d tracks selected, %d to extract", size, len(tracks), len(todo))
        archive = root / f"fma_{size}.zip"
        if todo:
            name = archive.name
            with progress.task(name, unit="B") as task:
                fetch(join_url(base, name), archive, checksum=self._checksum(name), task=task)
            progress.check_interrupt()
            self._extract(archive, root, size, todo, ledger, progress)
        if all(ledger.is_ok(self._id(t.id)) for t in tracks) and archive.exists() and not cfg.keep_archives:
            log.info("fma: all selected tracks extracted and verified; removing %s", archive.name)
            archive.unlink()

    def _checksum(self, name: str) -> tuple[str, str] | None:
        sha1 = self.info.checksums.get(name)
        return ("sha1", sha1) if sha1 else None

    def _metadata(self, base: str, root: Path, cfg: DownloadConfig, progress: Progress) -> None:
        meta = root / "fma_metadata"
        if (meta / "tracks.csv").is_file() and (meta / "genres.csv").is_file():
            return  # each file is extracted atomically, so present means complete
        archive = root / "fma_metadata.zip"
        with progress.task(archive.name, unit="B") as task:
            fetch(join_url(base, archive.name), archive, checksum=self._checksum(archive.name), task=task)
        wanted = {"tracks.csv", "genres.csv"}
        got = safe_extract(archive, meta, members=lambda n: n.rsplit("/", 1)[-1] in wanted and n.count("/") <= 1,
                           strip_components=1)
        if {p.name for p in got} != wanted:
            raise MtxError(f"{archive.name} lacks tracks.csv or genres.csv",
                           hint="delete it and rerun `mtx download fma --force`")
        if not cfg.keep_archives:
            archive.unlink()

    def _extract(self, archive: Path, root: Path, size: str, todo: list[Track], ledger: Ledger,
                 progress: Progress) -> None:
        prefix = f"fma_{size}"
        members: dict[int, str] = {}
        checksums_member = None
        for name in iter_members(archive):
            m = _TRACK_RE.search(name)
            if m:
                members.setdefault(int(m.group(2)), name)
            elif name.rstrip("/").endswith("/checksums") or name == "checksums":
                checksums_member = name
        sums: dict[str, str] = {}
        if checksums_member is not None:
            path = safe_extract(archive, root, members=lambda n: n == checksums_member)[0]
            sums = parse_checksums(path.read_text(encoding="utf-8", errors="replace"))
        else:
            log.warning("%s has no checksums file; tracks are verified by the archive's CRCs only", archive.name)
        with progress.task(f"Extracting {prefix}", total=len(todo), unit="tracks") as task:
            for i in range(0, len(todo), EXTRACT_BATCH):
                batch = todo[i:i + EXTRACT_BATCH]
                wanted = {members[t.id] for t in batch if t.id in members}
                safe_extract(archive, root, members=wanted.__contains__)
                for t in batch:
                    self._record(root, size, t, members.get(t.id), sums, ledger)
                task.advance(len(batch))
                progress.check_interrupt()

    def _record(self, root: Path, size: str, t: Track, member: str | None, sums: dict[str, str],
                ledger: Ledger) -> None:
        tid = self._id(t.id)
        if member is None:
            ledger.failed(tid, f"{track_relpath(size, t.id)} is not in fma_{size}.zip")
            return
        path = root / member
        if not path.is_file():
            ledger.failed(tid, f"extraction of {member} produced no file")
            return
        sha1 = file_digest(path, "sha1")
        expected = sums.get(member.split("/", 1)[-1])
        if expected is not None and sha1 != expected:
            path.unlink()
            ledger.failed(tid, f"sha1 mismatch ({sha1[:12]}..., checksums file says {expected[:12]}...)")
            return
        if t.id in KNOWN_BAD:
            log.info("fma: track %06d is a known short/empty clip in the published archive", t.id)
        ledger.ok(tid, path=member, checksum=expected or sha1, nbytes=path.stat().st_size)

    # ------------------------------------------------------------------ parsing
    def _downloaded(self, root: Path) -> list[tuple[Track, Path, str | None]]:
        """(track, audio path, sha1) for every track the ledger marks ok and whose file exists."""
        ledger = Ledger(root)
        ok = {e.id: e for e in ledger.entries.values() if e.status == "ok" and e.path}
        if not ok:
            return []
        out = []
        for t in read_tracks(root / "fma_metadata" / "tracks.csv"):
            e = ok.get(self._id(t.id))
            if e is not None:
                out.append((t, root / e.path, e.checksum))
        return out

    @staticmethod
    def _is_full(path: Path) -> bool:
        return any(part == "fma_full" for part in path.parts)

    def _audio_duration(self, t: Track, path: Path) -> float | None:
        if self._is_full(path):
            return t.duration
        # Clips are the middle 30 s of the track, or the whole track when it is shorter.
        return min(CLIP_SECONDS, t.duration) if t.duration else CLIP_SECONDS

    def records(self, root: Path) -> list[Record]:
        from ..captions import classify_tags, synthesize_captions

        root = Path(root).resolve()
        genres = read_genres(root / "fma_metadata" / "genres.csv")
        out, untagged = [], 0
        for t, path, _ in self._downloaded(root):
            if not path.is_file():
                continue
            tags = _dedupe([t.genre_top, *(genres.get(g) for g in t.genres_all), *t.tags])
            # Captions name the track's own genres, not every ancestor in genres_all
            # ("Electronic", not "Electronic and Ambient Electronic" twice over).
            described = _dedupe([t.genre_top, *(genres.get(g) for g in t.genres), *t.tags])
            captions = synthesize_captions(classify_tags(described), key=self._id(t.id), n=3)
            if not captions:
                untagged += 1  # nothing to describe the track with: no honest caption exists
                continue
            duration = self._audio_duration(t, path)
            out.append(Record(
                id=self._id(t.id), audio_path=str(path), caption=captions[0], duration=float(duration or 0.0),
                alt_captions=captions[1:], dataset=INFO.name, artist=t.artist, title=t.title, tags=tags,
                license=t.license, split=SPLIT_NAMES.get((t.split or "").lower()), group=f"fma:{t.id}",
                extra={"track_id": t.id, "album": t.album, "genre_top": t.genre_top,
                       "fma_subset": t.subset, "track_duration": t.duration},
            ))
        if untagged:
            log.info("fma: %d track(s) have no genre or tag to caption and are left out", untagged)
        return out

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        root = Path(root)
        out = []
        for t, path, sha1 in self._downloaded(root):
            full = self._is_full(path)
            out.append(ExpectedFile(
                id=self._id(t.id), path=path, duration=self._audio_duration(t, path),
                duration_tolerance=max(CLIP_TOLERANCE, 0.01 * (t.duration or 0)) if full else CLIP_TOLERANCE,
                checksum=("sha1", sha1) if sha1 else None))
        return out


def _dedupe(items) -> list[str]:  # noqa: ANN001
    seen, out = set(), []
    for item in items:
        s = _text(item)
        if s and s.lower() not in seen:
            seen.add(s.lower())
            out.append(s)
    return out


__all__ = ["FmaSource", "INFO", "KNOWN_BAD", "read_tracks", "read_genres", "parse_checksums", "track_relpath"]
