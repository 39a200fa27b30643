"""Your own music folder: scan audio files, read their tags, and make the library searchable.

Nothing is downloaded. ``mtx download folder --path ~/Music`` records the folder and
scans it; the dataset root then holds only::

    folder.json       {"path": "/home/me/Music"}: where the music lives (files stay in place)
    index.jsonl       one line per scanned file: relative path, tags, duration (append-only,
                      so an interrupted scan resumes where it stopped)
    ledger.jsonl      one entry per file: ok, or failed + why (not readable as audio)

Tags are read with mutagen's "easy" interface (ID3, Vorbis comments, MP4 atoms alike);
a missing title falls back to the file name, a missing artist to the folder only where the library is
laid out ``Artist/Album/01 Title.mp3`` (:func:`folder_artists`; ``artist_source`` says which rule).
Captions are synthesised from genre and mood tags, or fall back to "<title> by <artist>".
Rerun ``mtx download folder`` after changing the library: it rescans and records what was added,
changed, moved and removed (``scan.json``); see :func:`rescan`. ``mtx sync PATH`` does that and
updates the manifest, the embeddings and the search index in one go.

Playlists in the folder (``.m3u``/``.m3u8``) are captions shared by their tracks: each scan reads them
(:func:`read_playlists`) into ``playlists.json``, and every member track gets the playlist's name in
``extra["playlists"]`` and as an alternative caption. A changed playlist changes those tracks'
metadata only: their content hash stays, so nothing is embedded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audio import AUDIO_EXTENSIONS
from ..errors import MtxError
from ..manifest import CONTENT_HASH, Record, file_content_hash
from ..progress import Progress
from ..state import TMP_PREFIX, append_jsonl, atomic_write_json, read_json
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import REMOVED, Ledger, LedgerEntry, end_torn_line, read_jsonl

log = logging.getLogger(__name__)

CONFIG_NAME = "folder.json"
INDEX_NAME = "index.jsonl"
PLAYLISTS_NAME = "playlists.json"
PLAYLIST_EXTENSIONS = (".m3u", ".m3u8")
_SPLIT_TAGS = re.compile(r"\s*[;,]\s*")
_TRACK_PREFIX = re.compile(r"^\s*(?:\d{1,3}[\s._-]+|\d{1,2}-\d{1,3}[\s._-]+)")

INFO = SourceInfo(
    name="folder",
    description="Your own music folder: files stay in place; tags (mutagen) become captions for search",
    license="(your files)",
    homepage="",
    phase=None,
    downloadable=False,
    options=("path",),
)


def file_id(rel: str) -> str:
    """A stable id from the path relative to the music folder (moving the folder keeps the ids)."""
    return "folder-" + hashlib.sha1(rel.encode("utf-8")).hexdigest()[:16]


def scan(music_dir: Path, warnings: list[str] | None = None) -> list[str]:
    """Relative posix paths of the audio files under ``music_dir``, sorted; hidden files skipped.

    Symlinked folders and files are followed, safely: a folder already visited (by device and
    inode, so ``loop -> .`` or two links to one album) is not entered again, and a file reached
    through several paths is listed once. Real paths win over links (links are followed after
    the real tree), so the listing does not depend on link names. Sub-folders that cannot be
    read are logged as warnings (and appended to ``warnings``), never skipped silently.
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    links: list[tuple[Path, str]] = []  # followed after everything reachable without links
    out: list[str] = []

    def warn(msg: str) -> None:
        log.warning("folder: %s", msg)
        if warnings is not None:
            warnings.append(msg)

    def add_file(path: Path, rel: str) -> None:
        try:
            st = path.stat()  # follows symlinks; a dangling link is reported, not listed
        except OSError as e:
            warn(f"cannot read {rel}: {e.strerror or e}")
            return
        if (st.st_dev, st.st_ino) not in seen_files:
            seen_files.add((st.st_dev, st.st_ino))
            out.append(rel)

    def walk(folder: Path, rel: str) -> None:
        try:
            st = folder.stat()
        except OSError as e:
            warn(f"cannot read {rel or '.'}: {e.strerror or e}")
            return
        if (st.st_dev, st.st_ino) in seen_dirs:
            log.debug("folder: %s is a folder already scanned (symlink loop or duplicate link)", rel)
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            warn(f"cannot read folder {rel or '.'}: {e.strerror or e}; its files are left out")
            return
        for entry in entries:
            if entry.name.startswith((".", TMP_PREFIX)):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                links.append((Path(entry.path), child))
            elif entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), child)
            elif entry.name.lower().endswith(AUDIO_EXTENSIONS):
                add_file(Path(entry.path), child)

    walk(Path(music_dir), "")
    while links:
        path, rel = links.pop(0)
        if path.is_dir():
            walk(path, rel)
        elif path.name.lower().endswith(AUDIO_EXTENSIONS):
            add_file(path, rel)
    return sorted(out)


def _first(tags: Any, key: str) -> str | None:
    try:
        values = tags.get(key) if tags is not None else None
    except (KeyError, ValueError):
        return None
    if isinstance(values, (list, tuple)):
        values = next((str(v).strip() for v in values if str(v).strip()), None)
    return str(values).strip() or None if values is not None else None


def _all(tags: Any, key: str) -> list[str]:
    try:
        values = tags.get(key) if tags is not None else None
    except (KeyError, ValueError):
        return []
    if values is None:
        return []
    out: list[str] = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        for part in _SPLIT_TAGS.split(str(v)):
            if part.strip() and part.strip().lower() not in {o.lower() for o in out}:
                out.append(part.strip())
    return out


def read_file_info(path: Path, rel: str) -> dict[str, Any]:
    """Tags and duration of one file, with file/folder-name fallbacks; raises MtxError if it is not audio."""
    import mutagen

    from ..audio import AudioError, audio_info, container_tags

    tags, duration = None, None
    try:
        f = mutagen.File(path, easy=True)
    except (mutagen.MutagenError, OSError, ValueError) as e:
        log.debug("folder: mutagen cannot read %s: %s", rel, e)
        f = None
    if f is not None:
        tags = f.tags
        length = getattr(getattr(f, "info", None), "length", None)
        duration = float(length) if length and length > 0 else None
    if not any(_first(tags, k) for k in ("artist", "title", "album", "genre")):
        # mutagen reads no RIFF INFO chunk (tagged WAVs) and no Matroska/WebM tags: ask FFmpeg.
        tags = container_tags(path) or tags
    if duration is None:
        try:
            duration = audio_info(path).duration
        except AudioError as e:
            raise MtxError(f"{rel}: {e.message}", hint="not readable as audio") from None
    parts = rel.split("/")
    date = _first(tags, "date") or _first(tags, "year") or ""
    year = re.match(r"\d{4}", date)
    title = _first(tags, "title") or _TRACK_PREFIX.sub("", Path(parts[-1]).stem).strip() or Path(parts[-1]).stem
    tagged = any(_first(tags, k) for k in ("artist", "title", "album", "genre"))
    return {
        "rel": rel, "id": file_id(rel), "duration": duration, "title": title,
        # Only the tags' artist: a folder name becomes one later, library-wide (see folder_artists).
        "tag_artist": _first(tags, "artist") or _first(tags, "albumartist"),
        "album": _first(tags, "album") or (parts[-2] if len(parts) >= 2 else None),
        "tag_album": _first(tags, "album"),
        "genres": _all(tags, "genre"), "moods": _all(tags, "mood"),
        "year": int(year.group(0)) if year else None, "tagged": tagged,
    }


def album_key(info: dict[str, Any]) -> str | None:
    """The album a file belongs to, for splits (``manifest.album_of``): its folder and its album tag, so a
    compilation's tracks stay together and two artists' "Greatest Hits" stay apart. Files without an
    album tag have none (a folder of loose downloads is not an album)."""
    album = info.get("tag_album")
    if not album:
        return None
    folder = info["rel"].rpartition("/")[0]
    return f"{folder}|{' '.join(str(album).lower().split())}"


# --------------------------------------------------------------------------- artists
# ``artist_source`` of a folder record: which rule named its artist.
ARTIST_TAG, ARTIST_FOLDER, ARTIST_NONE = "tag", "folder", "none"
# Without tags to confirm it, folders are read as Artist/Album/track only when there are at least
# this many artist folders and none holds more than this share of their files: a library laid out
# <source>/<collection>/<piece> has a few big top-level folders, a music collection many small ones.
LAYOUT_MIN_ARTISTS = 5
LAYOUT_MAX_SHARE = 0.25


def _norm_name(name: str | None) -> str:
    return " ".join(str(name).lower().split()) if name else ""


def _tag_artist(info: dict[str, Any]) -> str | None:
    """The artist from the file's tags. Index lines written before ``tag_artist`` existed hold the folder
    fallback in ``artist``: an untagged file's ``artist`` was its folder, never a tag."""
    if "tag_artist" in info:
        return info["tag_artist"] or None
    return info.get("artist") if info.get("tagged") else None


def folder_artists(infos: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    """(artist, artist_source) per index entry: the tag, else the Artist/Album/track folder, else none.

    A file without an artist tag at ``.../A/B/track`` takes ``A`` as its artist only when the folders
    beside ``A`` (its "shelf": the other folders with the same parent) look like artist folders:
    - tags confirm it: at least half of the tagged files on that shelf sit in a folder named like
      their artist tag (case and spaces ignored); or
    - with no tagged file on the shelf, the layout does: at least ``LAYOUT_MIN_ARTISTS`` folders, none
      holding more than ``LAYOUT_MAX_SHARE`` of the shelf's files.
    Otherwise the record has no artist (its split is then decided per recording, which never lumps
    a whole folder into one split), and no caption says "by <folder>".
    """
    tagged: dict[str, list[bool]] = {}             # shelf -> does each tagged file's folder match its artist
    untagged: dict[str, dict[str, int]] = {}       # shelf -> artist folder -> files without an artist tag
    for info in infos:
        parts = info["rel"].split("/")
        if len(parts) < 3:
            continue
        shelf = "/".join(parts[:-3])
        tag = _tag_artist(info)
        if tag:
            tagged.setdefault(shelf, []).append(_norm_name(tag) == _norm_name(parts[-3]))
        else:
            folders = untagged.setdefault(shelf, {})
            folders[parts[-3]] = folders.get(parts[-3], 0) + 1
    layout: dict[str, bool] = {}
    for shelf, folders in untagged.items():
        if shelf in tagged:
            layout[shelf] = 2 * sum(tagged[shelf]) >= len(tagged[shelf])
        else:
            total = sum(folders.values())
            layout[shelf] = len(folders) >= LAYOUT_MIN_ARTISTS and max(folders.values()) <= LAYOUT_MAX_SHARE * total
    out: list[tuple[str | None, str]] = []
    for info in infos:
        tag = _tag_artist(info)
        parts = info["rel"].split("/")
        if tag:
            out.append((tag, ARTIST_TAG))
        elif len(parts) >= 3 and layout.get("/".join(parts[:-3])):
            out.append((parts[-3], ARTIST_FOLDER))
        else:
            out.append((None, ARTIST_NONE))
    return out


def captions_for(info: dict[str, Any]) -> list[str]:
    from ..captions import classify_tags, synthesize_captions

    described = synthesize_captions(classify_tags([*info.get("genres", []), *info.get("moods", [])]),
                                    key=info["id"], n=3)
    by = f"{info['title']} by {info['artist']}" if info.get("artist") else info["title"]
    return [c for c in dict.fromkeys([*described, by]) if c]


SCAN_NAME = "scan.json"


@dataclass
class ScanReport:
    """What a scan found compared with the previous one, in files."""

    added: int = 0
    changed: int = 0       # same path, other audio (content hash differs)
    moved: int = 0         # same audio at another path: keeps its id, so it is not embedded again
    removed: int = 0
    unchanged: int = 0     # same path, size and mtime (or a touched file whose content hash is the same)
    failed: int = 0        # not readable as audio

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def describe(self) -> str:
        return ", ".join(f"{v} {k}" for k, v in self.to_dict().items())


def live_index(root: Path) -> dict[str, dict[str, Any]]:
    """The index's current entry per id (the last line wins; a removed file's tombstone drops it)."""
    out: dict[str, dict[str, Any]] = {}
    for d in read_jsonl(Path(root) / INDEX_NAME):   # decoded in one call (see ledger.read_jsonl)
        if "id" not in d:
            continue
        if d.get("removed"):
            out.pop(d["id"], None)
        elif "rel" in d:
            out[d["id"]] = d
    return out


def _stat(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def rescan(music: Path, root: Path, files: list[str], ledger: Ledger, progress: Progress) -> ScanReport:
    """Compare the folder with the index and record every difference (the index and ledger are append-only).

    A file is identified by its path plus size and mtime. When those change, its content hash says
    whether the audio did: the same hash is an unchanged (touched) file, another one a changed file
    (same id). A new path whose content hash equals that of a file gone from its old path is that
    file moved: it keeps its id, so later stages see the same track and embed nothing. Files gone
    are tombstoned. Each file is committed on its own (index line first, then the ledger), so an
    interrupted scan resumes where it stopped and a finished one finds nothing left to do.
    """
    index = root / INDEX_NAME
    live = live_index(root)
    by_rel = {d["rel"]: d for d in live.values() if ledger.is_ok(d["id"])}
    present = set(files)
    report = ScanReport()
    fresh: list[tuple[str, tuple[int, int] | None]] = []
    # The index as this scan leaves it (id -> path), kept up to date here instead of read back at the end.
    now_rel = {fid: d["rel"] for fid, d in live.items()}

    def scan_one(rel: str, fid: str, digest: str | None) -> bool:
        ok = _scan_one(music, rel, fid, index, ledger, digest)
        if ok:   # its index line now names the file under ``fid`` (a failure writes no index line)
            now_rel[fid] = rel
        return ok

    with progress.task("Scanning", total=len(files), unit="files") as task:
        for rel in files:
            st = _stat(os.path.join(music, rel))   # no Path per file: most files are unchanged
            info = by_rel.get(rel)
            if info is not None and st is not None and [info.get("size"), info.get("mtime_ns")] == list(st):
                report.unchanged += 1
            elif info is not None:
                digest = _hash(music / rel)
                if digest is not None and digest == info.get(CONTENT_HASH):
                    append_jsonl(index, [{**info, "size": st[0], "mtime_ns": st[1]}])   # touched only
                    report.unchanged += 1
                elif info.get(CONTENT_HASH) is None and digest is not None:
                    # indexed before content hashes: record it, nothing known changed
                    append_jsonl(index, [{**info, "size": st[0], "mtime_ns": st[1], CONTENT_HASH: digest}])
                    report.unchanged += 1
                elif scan_one(rel, info["id"], digest):
                    report.changed += 1
                else:
                    report.failed += 1
            else:
                fresh.append((rel, st))
                continue
            task.advance(1)
            progress.check_interrupt()
        gone = {d[CONTENT_HASH]: d for rel, d in sorted(by_rel.items()) if rel not in present and d.get(CONTENT_HASH)}
        taken = {d["id"] for d in live.values()}
        for rel, st in fresh:
            digest = _hash(music / rel)
            moved = gone.pop(digest, None) if digest is not None else None
            if moved is not None:
                ok = scan_one(rel, moved["id"], digest)
                report.moved += ok
            else:
                fid = file_id(rel)
                if fid in taken and live.get(fid, {}).get("rel") != rel:
                    fid = file_id(f"{rel}#{digest}")   # its path's id is held by a file moved away from it
                ok = scan_one(rel, fid, digest)
                report.added += ok
                taken.add(fid)
            report.failed += not ok
            task.advance(1)
            progress.check_interrupt()
    kept = {fid for fid, rel in now_rel.items() if rel in present}
    gone_ids = [(rel, d["id"]) for rel, d in sorted(by_rel.items()) if rel not in present and d["id"] not in kept]
    if gone_ids:
        # All tombstones in one append each (index first, then the ledger, as for one file): a file
        # at a time cost two fsyncs per removed file.
        append_jsonl(index, [{"id": fid, "rel": rel, "removed": True} for rel, fid in gone_ids])
        ledger.record_many([LedgerEntry(id=fid, status=REMOVED) for _, fid in gone_ids])
        report.removed += len(gone_ids)
    wanted = {file_id(rel) for rel in present}
    stale = [e.id for e in ledger.failures() if e.id not in wanted and e.id not in kept]
    if stale:   # a broken file that is gone is no longer a failure of this library
        ledger.record_many([LedgerEntry(id=fid, status=REMOVED) for fid in stale])
    return report


def _hash(path: Path) -> str | None:
    try:
        return file_content_hash(path)
    except OSError:
        return None


def _scan_one(music: Path, rel: str, fid: str, index: Path, ledger: Ledger, digest: str | None) -> bool:
    """Read one file's tags into the index under ``fid``; False (and a ledger failure) if it is not audio."""
    path = music / rel
    try:
        info = read_file_info(path, rel)
    except MtxError as e:
        ledger.failed(fid, e.message[:200])
        return False
    st = _stat(path)
    info.update(id=fid, size=st[0] if st else None, mtime_ns=st[1] if st else None,
                **{CONTENT_HASH: digest or _hash(path)})
    # The index line first (fsynced), then the ledger: an ok entry always has its tags on disk.
    append_jsonl(index, [info])
    ledger.ok(fid, path=rel, nbytes=st[0] if st else None, checksum=info[CONTENT_HASH])
    return True


# --------------------------------------------------------------------------- playlists
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def playlist_name(path: Path) -> str:
    """The caption a playlist gives its tracks: its file name as the user wrote it, minus the
    extension, with ``_`` as spaces and runs of spaces collapsed ("Late_Night  Drive.m3u8" ->
    "Late Night Drive")."""
    return " ".join(path.stem.replace("_", " ").split()) or path.stem


def find_playlists(music: Path) -> list[Path]:
    """The .m3u/.m3u8 files under ``music`` (hidden files and folders skipped, links not followed)."""
    out = []
    for folder, dirs, files in os.walk(music):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(folder) / f for f in sorted(files)
                if not f.startswith((".", TMP_PREFIX)) and f.lower().endswith(PLAYLIST_EXTENSIONS)]
    return out


def _playlist_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:   # .m3u predates UTF-8 (.m3u8 is UTF-8 by definition): Latin-1, as players read it
        text = raw.decode("latin-1")
    return text.splitlines()


def _entry_rel(entry: str, playlist: Path, music: Path) -> str | None:
    """The library-relative path an M3U entry names, or None when it points outside the library."""
    import urllib.parse

    if _URL.match(entry):
        if not entry.lower().startswith("file://"):
            return None   # a stream URL is not a file of this library
        entry = urllib.parse.unquote(urllib.parse.urlparse(entry).path)
    if "\\" in entry and os.sep == "/":   # written on Windows: "Artist\\Album\\01 x.mp3"
        entry = entry.replace("\\", "/")
    path = Path(entry) if os.path.isabs(entry) else playlist.parent / entry
    root = os.path.normpath(music)
    norm = os.path.normpath(path)
    for base, target in ((root, norm), (os.path.realpath(music), os.path.realpath(norm))):
        if target == base or not target.startswith(base.rstrip(os.sep) + os.sep):
            continue
        return Path(os.path.relpath(target, base)).as_posix()
    return None


@dataclass
class PlaylistScan:
    """What the library's playlists say: name -> member track ids, and the entries left out."""

    playlists: dict[str, list[str]]
    outside: int = 0          # entries pointing outside the music folder (or a stream URL)
    missing: int = 0          # entries naming no audio file of the library
    unreadable: int = 0       # playlist files that could not be read

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def members(self) -> dict[str, list[str]]:
        """track id -> the names of the playlists it is in (sorted)."""
        out: dict[str, set[str]] = {}
        for name, ids in self.playlists.items():
            for i in ids:
                out.setdefault(i, set()).add(name)
        return {i: sorted(v) for i, v in out.items()}


def read_playlists(music: Path, by_rel: dict[str, str], paths: list[Path] | None = None) -> PlaylistScan:
    """Read every playlist under ``music``; ``by_rel`` maps a library-relative path to its track id.

    Entries are relative (to the playlist's folder) or absolute paths, or ``file://`` URLs;
    ``#EXTM3U``, ``#EXTINF`` and other ``#`` lines are comments. Entries outside the folder and
    entries naming no file of the library are left out and counted (and logged as one warning).
    Two playlist files with the same cleaned name are one playlist.
    """
    scan_ = PlaylistScan(playlists={})
    for path in find_playlists(music) if paths is None else paths:
        try:
            lines = _playlist_lines(path)
        except OSError as e:
            log.warning("folder: cannot read playlist %s: %s", path.name, e.strerror or e)
            scan_.unreadable += 1
            continue
        ids = scan_.playlists.setdefault(playlist_name(path), [])
        for line in lines:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            rel = _entry_rel(entry, path, music)
            if rel is None:
                scan_.outside += 1
            elif rel not in by_rel:
                scan_.missing += 1
            elif by_rel[rel] not in ids:
                ids.append(by_rel[rel])
    if scan_.outside or scan_.missing:
        log.warning("folder: %d playlist entr%s left out (%d outside the music folder, %d not a file of the library)",
                    scan_.outside + scan_.missing, "y" if scan_.outside + scan_.missing == 1 else "ies",
                    scan_.outside, scan_.missing)
    return scan_


def record_playlists(music: Path, root: Path) -> dict[str, int]:
    """Read the playlists into ``playlists.json`` (rewritten only when they changed, so an unchanged
    library keeps its identity); returns the scan's playlist counts for ``scan.json`` (none when the
    library has no playlist): ``playlists`` and ``playlist_changes`` (tracks whose playlists changed)."""
    path = Path(root) / PLAYLISTS_NAME
    old = read_json(path) if path.is_file() else None
    paths = find_playlists(music)
    if not paths and old is None:   # the common case costs one walk of the folder, nothing more
        return {}
    by_rel = {d["rel"]: i for i, d in live_index(root).items()}
    found = read_playlists(music, by_rel, paths)
    before = PlaylistScan(playlists=(old or {}).get("playlists", {})).members()
    after = found.members()
    changed = sum(1 for i in set(before) | set(after) if before.get(i) != after.get(i))
    if old != found.to_dict():
        atomic_write_json(path, found.to_dict())
    return {"playlists": len(found.playlists), "playlist_changes": changed}


def playlist_members(root: Path) -> dict[str, list[str]]:
    """track id -> its playlists' names, as the last scan read them."""
    path = Path(root) / PLAYLISTS_NAME
    return PlaylistScan(playlists=read_json(path).get("playlists", {})).members() if path.is_file() else {}


@register
class FolderSource(Source):
    info = INFO

    def identity(self, cfg: DownloadConfig) -> dict[str, Any]:
        return {"max_items": cfg.max_items, "path": str(Path(cfg.path).expanduser().resolve()) if cfg.path else None}

    @staticmethod
    def music_dir(root: Path) -> Path | None:
        cfg = Path(root) / CONFIG_NAME
        if not cfg.exists():
            return None
        data = read_json(cfg)
        return Path(data["path"]) if isinstance(data, dict) and data.get("path") else None

    def check(self, cfg: DownloadConfig) -> None:
        if cfg.path is None:
            return  # the folder recorded by an earlier scan is used (download says so if there is none)
        music = Path(cfg.path).expanduser()
        if not music.exists():
            raise MtxError(f"--path {cfg.path}: no such folder", hint="pass the folder that holds your music")
        if not music.is_dir():
            raise MtxError(f"--path {cfg.path} is not a directory",
                           hint="pass the folder that holds your music with --path")
        if not os.access(music, os.R_OK | os.X_OK):
            raise MtxError(f"--path {cfg.path}: permission denied", hint="check the folder's permissions")

    rescans = True   # `mtx download folder` rescans a finished library and records what changed

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        # As given (absolute, symlinks kept): paths in manifests and M3U files must match a player's
        # music folder, which may be a symlink (MPD matches playlist entries by that path).
        music = Path(os.path.abspath(Path(cfg.path).expanduser())) if cfg.path else self.music_dir(root)
        if music is None:
            raise MtxError("no music folder given", hint="run `mtx download folder --path ~/Music`")
        if not music.is_dir():
            raise MtxError(f"{music} is not a directory", hint="pass the folder that holds your music with --path")
        root.mkdir(parents=True, exist_ok=True)
        previous = self.music_dir(root)
        if previous is not None and previous != music and previous.resolve() != music.resolve():
            raise MtxError(f"this dataset already indexes {previous}",
                           hint="rerun with --force to index the new folder instead")
        atomic_write_json(root / CONFIG_NAME, {"path": str(music)})
        files = scan(music)
        if cfg.max_items is not None:
            files = files[: max(0, cfg.max_items)]
        end_torn_line(root / INDEX_NAME)
        report = rescan(music, root, files, ledger, progress)
        atomic_write_json(root / SCAN_NAME, {**report.to_dict(), **record_playlists(music, root)})
        log.info("folder: %d audio file(s) in %s: %s", len(files), music, report.describe())

    def changes(self, root: Path) -> dict[str, Any] | None:
        """What the last scan found (added, changed, moved, removed, unchanged, failed)."""
        path = Path(root) / SCAN_NAME
        return read_json(path) if path.is_file() else None

    @staticmethod
    def _index(root: Path) -> dict[str, dict[str, Any]]:
        return live_index(root)

    def _present(self, root: Path) -> list[tuple[dict[str, Any], str]]:
        """(index entry, absolute path) of each file the ledger has as scanned, by relative path.
        Paths are strings: a Path per file of a 20,000-track library showed in every sync."""
        music = self.music_dir(root)
        if music is None:
            return []
        if not music.is_dir():
            raise MtxError(f"the indexed music folder {music} is gone",
                           hint="reconnect the drive, or rerun `mtx download folder --path ... --force`")
        ok = Ledger(root).is_ok
        base = str(music).rstrip(os.sep) + os.sep
        entries = sorted(self._index(root).items(), key=lambda kv: kv[1]["rel"])
        return [(info, base + info["rel"]) for fid, info in entries if ok(fid)]

    def records(self, root: Path) -> list[Record]:
        out = []
        present = [(info, path) for info, path in self._present(Path(root)) if os.path.isfile(path)]
        artists = folder_artists([info for info, _ in present])
        playlists = playlist_members(Path(root))
        for (info, path), (artist, artist_source) in zip(present, artists):
            info = {**info, "artist": artist, "artist_source": artist_source}
            # A playlist is a caption its tracks share, as the user wrote it ("Late Night Drive").
            captions = list(dict.fromkeys([*captions_for(info), *playlists.get(info["id"], [])]))
            out.append(Record(
                id=info["id"], audio_path=path, caption=captions[0], duration=float(info["duration"]),
                alt_captions=captions[1:], dataset=INFO.name, artist=info.get("artist"), title=info.get("title"),
                tags=[*info.get("genres", []), *info.get("moods", [])], license=None,
                # The recording is the audio: byte-identical copies share it, and a moved file keeps it.
                group=f"audio:{info[CONTENT_HASH]}" if info.get(CONTENT_HASH) else f"file:{info['id']}",
                extra={k: v for k, v in {"album": info.get("album"), "album_key": album_key(info),
                                         "year": info.get("year"),
                                         "relative_path": info["rel"],
                                         CONTENT_HASH: info.get(CONTENT_HASH)}.items() if v is not None},
            ))
            out[-1].extra["artist_source"] = artist_source   # which rule named the artist (folder_artists)
            if info["id"] in playlists:
                out[-1].extra["playlists"] = playlists[info["id"]]
        return out

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        return [ExpectedFile(id=info["id"], path=Path(path), duration=info.get("duration"),
                             duration_tolerance=max(1.0, 0.01 * float(info.get("duration") or 0.0)))
                for info, path in self._present(Path(root))]


__all__ = ["FolderSource", "INFO", "scan", "read_file_info", "captions_for", "file_id", "folder_artists",
           "find_playlists", "playlist_members", "playlist_name", "read_playlists", "record_playlists"]
