"""The unified manifest: record schema, reading/writing, sampling and splits.

This is the one module that reads and writes manifests. A manifest is a JSON
array of records (see ARCHITECTURE.md); extra fields are preserved.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import re
import stat
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .errors import MtxError
from .state import atomic_write_text

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
REQUIRED = ("id", "audio_path", "caption", "duration")
DURATION_BINS = (("short", 0.0, 30.0), ("medium", 30.0, 180.0), ("long", 180.0, math.inf))


@dataclass
class Record:
    id: str
    audio_path: str
    caption: str
    duration: float
    alt_captions: list[str] = field(default_factory=list)
    dataset: str | None = None
    artist: str | None = None
    title: str | None = None
    tags: list[str] = field(default_factory=list)
    license: str | None = None
    split: str | None = None
    group: str | None = None          # the underlying recording (see group_of); None = the record itself
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, audio_path: str | None = None) -> dict[str, Any]:
        """The record's JSON object (``audio_path`` replaces the path, as a manifest stores it).

        Built field by field (no dataclasses.asdict deepcopy, no generic loop): writing a manifest of
        100k records is mostly this; the output is the same."""
        out: dict[str, Any] = {"id": self.id, "audio_path": self.audio_path if audio_path is None else audio_path,
                               "caption": self.caption, "duration": self.duration}
        if self.alt_captions:
            out["alt_captions"] = list(self.alt_captions)
        if self.dataset is not None:
            out["dataset"] = self.dataset
        if self.artist is not None:
            out["artist"] = self.artist
        if self.title is not None:
            out["title"] = self.title
        if self.tags:
            out["tags"] = list(self.tags)
        if self.license is not None:
            out["license"] = self.license
        if self.split is not None:
            out["split"] = self.split
        if self.group is not None:
            out["group"] = self.group
        if self.extra:
            out.update(self.extra)
            if "audio_path" in self.extra and audio_path is not None:
                out["audio_path"] = audio_path
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> "Record":
        get = d.get
        ident, path, caption, duration = get("id"), get("audio_path"), get("caption"), get("duration")
        alt, tags, split, group = get("alt_captions"), get("tags"), get("split"), get("group")
        # A record as mtx writes it passes these type checks and is built at once (reading a library's
        # manifest is mostly this); anything else goes through the checks that say what is wrong.
        if (type(ident) is str and ident and type(path) is str and path and type(caption) is str and caption
                and (type(duration) is float or type(duration) is int) and 0 < duration < math.inf
                and (not alt or (type(alt) is list and all(type(v) is str for v in alt)))
                and (not tags or (type(tags) is list and all(type(v) is str for v in tags)))
                and (split is None or split in SPLITS) and (group is None or type(group) is str)):
            known = _KNOWN_FIELDS
            return cls(id=ident, audio_path=path, caption=caption, duration=float(duration),
                       alt_captions=list(alt) if alt else [], dataset=get("dataset"), artist=get("artist"),
                       title=get("title"), tags=list(tags) if tags else [], license=get("license"), split=split,
                       group=group or None, extra={k: v for k, v in d.items() if k not in known})
        return cls._checked(d, where)

    @classmethod
    def _checked(cls, d: dict[str, Any], where: str) -> "Record":
        get = d.get
        missing = [k for k in REQUIRED if get(k) in (None, "")]
        if missing:
            ident = d.get("id", "?")
            raise MtxError(f"{where}: record {ident!r} lacks required field(s): {', '.join(missing)}",
                           hint="every record needs id, audio_path, caption and duration")
        known = _KNOWN_FIELDS
        ident = d["id"]
        if not isinstance(ident, (str, int)) or isinstance(ident, bool):
            raise MtxError(f"{where}: record id {ident!r} is not a string", hint="ids are strings")
        try:
            if isinstance(d["duration"], bool):
                raise TypeError
            duration = float(d["duration"])
        except (TypeError, ValueError):
            raise MtxError(f"{where}: record {ident!r} has a non-numeric duration {d['duration']!r}",
                           hint="duration is in seconds") from None
        if not math.isfinite(duration) or duration <= 0:
            raise MtxError(f"{where}: record {ident!r} has duration {d['duration']!r}",
                           hint="duration is a positive number of seconds")
        for name in ("audio_path", "caption"):
            if not isinstance(d[name], str):
                raise MtxError(f"{where}: record {ident!r} has a non-string {name} ({type(d[name]).__name__})",
                               hint=f"{name} is a string")
        lists = []
        for name in ("alt_captions", "tags"):
            value = get(name)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise MtxError(f"{where}: record {ident!r} has {name} that is not a list of strings",
                               hint=f"{name} is a list of strings")
            lists.append([str(v) for v in value] if value else [])
        split = get("split")
        if split is not None and split not in SPLITS:
            raise MtxError(f"{where}: record {d['id']!r} has split {split!r}", hint="use train, val or test")
        group = get("group")
        return cls(
            id=str(ident), audio_path=str(d["audio_path"]), caption=str(d["caption"]), duration=duration,
            alt_captions=lists[0], dataset=get("dataset"), artist=get("artist"), title=get("title"),
            tags=lists[1], license=get("license"), split=split,
            group=str(group) if group not in (None, "") else None,
            extra={k: v for k, v in d.items() if k not in known},
        )

    @property
    def captions(self) -> list[str]:
        return [self.caption, *self.alt_captions]


_KNOWN_FIELDS = frozenset(Record.__dataclass_fields__) - {"extra"}   # the rest of a record's dict is extra


def write_manifest(path: Path, records: Sequence[Record]) -> None:
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise MtxError(f"duplicate record id {dup!r}", hint="ids must be unique across sources")
    # One record per line: still a plain JSON array, diff-friendly, and encoded by the C encoder
    # (``indent=`` forces json's pure-Python path, several times slower on 100k records).
    encode = _line_encoder()
    path = Path(path)
    stored = _path_writer(path)
    with paused_gc():
        lines = [encode(r.to_dict(stored(r.audio_path))) for r in records]
    body = ",\n".join(lines)
    del lines
    atomic_write_text(path, f"[\n{body}\n]\n" if records else "[]\n")


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building or writing many records. Records are trees of
    plain values (no cycles: reference counting frees them); with the collector on, its passes over the
    growing heap cost as much as parsing 100k rows. Nests; restores the state it found."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _line_encoder():
    """One record -> one line of JSON, as ``json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
    .encode`` writes it. ``encode`` builds a new C encoder for every call; on a manifest of 100k records
    that setup cost more than the encoding, so the C encoder is built once here (without circular
    checks: a record is a tree of plain values)."""
    from json import encoder as _json

    plain = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
    if _json.c_make_encoder is None or _json.c_encode_basestring is None:   # no C accelerator (PyPy)
        return plain.encode
    chunks = _json.c_make_encoder(None, plain.default, _json.c_encode_basestring, None, ": ", ", ", False, False,
                                  True)

    def encode(value: Any) -> str:
        if isinstance(value, str):     # the encoder's own shortcut for a top-level string
            return plain.encode(value)
        return "".join(chunks(value, 0))

    return encode


def _path_writer(manifest: Path):
    """How ``audio_path`` is written into ``manifest``: relative to the manifest's folder when both live in
    the same state dir (``<state>/manifests/x.json`` -> ``../datasets/...``), so a moved or restored
    state dir keeps working; absolute otherwise (your own music folder stays where it is). String
    operations only: a ``resolve()`` per record dominated writing large manifests."""
    folder = manifest.parent.resolve()
    if folder.name != "manifests":
        return lambda audio_path: audio_path
    prefix = str(folder.parent).rstrip(os.sep) + os.sep

    def stored(audio_path: str) -> str:
        if not audio_path.startswith(prefix):
            return audio_path   # relative (kept as written) or outside the state dir
        normal = os.path.normpath(audio_path)
        if not normal.startswith(prefix):
            return audio_path
        return ".." + os.sep + normal[len(prefix):]

    return stored


def _stored_path(audio_path: str, manifest: Path) -> str:
    return _path_writer(manifest)(audio_path)


def _resolved_path(audio_path: str, manifest: Path) -> str:
    """A relative ``audio_path`` is relative to the manifest's folder (written so, or by hand)."""
    return _path_reader(manifest)(audio_path)


def _path_reader(manifest: Path):
    """``audio_path`` as written in ``manifest`` -> the path it names: ``~`` expanded, a relative path
    joined to the manifest's folder and normalised, an absolute one as ``str(Path(...))`` spells it.
    The folder is resolved once, not per record (a ``resolve()`` per record dominated reading
    large manifests), and a path already in its normal spelling is returned as is."""
    folder = str(manifest.parent.resolve())

    def resolved(audio_path: str) -> str:
        if audio_path.startswith("~"):
            p = Path(audio_path).expanduser()
            return str(p) if p.is_absolute() else os.path.normpath(os.path.join(folder, p))
        if not audio_path.startswith("/"):
            return os.path.normpath(os.path.join(folder, audio_path))
        if "//" in audio_path or "/./" in audio_path or audio_path.endswith(("/", "/.")):
            return str(Path(audio_path))     # pathlib's own spelling of an unusual absolute path
        return audio_path

    return resolved


class RealPaths:
    """``str(Path(p).resolve())`` for many paths of one batch of work: each folder is resolved once, and a
    file costs one ``lstat`` (a symlinked file, or an odd last part, is resolved in full). A resolve per
    file of a 20,000-track library (an ``lstat`` per path component each) dominated a sync that had
    nothing to do. Make a new one per batch: links changed after a folder was resolved are not seen."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: Path | str) -> str:
        return self.with_stat(path)[0]

    def with_stat(self, path: Path | str) -> tuple[str, os.stat_result | None]:
        """The resolved path and ``os.stat`` of it (None: not there), from the one ``lstat`` of a plain file."""
        p = os.fspath(path)
        folder, name = os.path.split(p)
        try:
            st = None if name in ("", ".", "..") else os.lstat(p)
        except OSError:
            return os.path.join(self._folder(folder), name), None   # not there: realpath keeps the name too
        if st is None or stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(p)
            try:
                return real, os.stat(real)
            except OSError:
                return real, None
        return os.path.join(self._folder(folder), name), st

    def _folder(self, folder: str) -> str:
        real = self._folders.get(folder)
        if real is None:
            # The same rule one level up, so a library of many small album folders resolves each
            # artist folder once too.
            parent, name = os.path.split(folder)
            if name in ("", ".", "..") or not parent:
                real = os.path.realpath(folder or os.curdir)
            else:
                try:
                    link = stat.S_ISLNK(os.lstat(folder).st_mode)
                except OSError:
                    link = False
                real = os.path.realpath(folder) if link else os.path.join(self._folder(parent), name)
            self._folders[folder] = real
        return real


def state_relative(path: Path | str, root: Path, real: RealPaths | None = None) -> str:
    """A path as a record inside the state dir stores it: relative to the state dir when inside it
    (a moved state dir keeps working), absolute otherwise (your own music stays where it is).
    ``real``: a :class:`RealPaths` shared by the calls of one loop (each folder resolved once)."""
    real = real or RealPaths()
    try:
        resolved, base = real(path), real(root)
    except (ValueError, OSError):
        return str(path)
    if resolved == base:
        return "."
    prefix = base if base.endswith(os.sep) else base + os.sep
    return resolved[len(prefix):].replace(os.sep, "/") if resolved.startswith(prefix) else str(path)


def from_state_dir(path: str, root: Path) -> str:
    """The inverse of :func:`state_relative`: an absolute, normalised path."""
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(str(root), path))


def read_manifest(path: Path) -> list[Record]:
    path = Path(path)
    if not path.exists():
        raise MtxError(f"manifest not found: {path}", hint="run `mtx unify` or pass an existing --manifest")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MtxError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})",
                       hint="regenerate it with `mtx unify --force`") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise MtxError(f"{path} is not a manifest (expected a JSON array of record objects)",
                       hint="regenerate it with `mtx unify --force`")
    if not data:
        raise MtxError(f"manifest {path} is empty", hint="regenerate it with `mtx unify --force`")
    with paused_gc():
        records = [Record.from_dict(d, where=path.name) for d in data]
        resolved = _path_reader(path)
        for r in records:
            r.audio_path = resolved(r.audio_path)
    ids = set()
    for r in records:
        if r.id in ids:
            raise MtxError(f"{path.name}: duplicate record id {r.id!r}", hint="ids must be unique")
        ids.add(r.id)
    return records


def manifest_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- audio identity
# The field a source sets to its file's content hash (``file_content_hash``). Unify, embed and sync
# agree through ``content_hash`` below: an embedding row is keyed by (record id, content hash).
CONTENT_HASH = "content_hash"


def file_content_hash(path: Path | str, chunk: int = 1 << 20) -> str:
    """The content hash of an audio file: the first 32 hex digits of the SHA-256 of its bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:32]


def content_hash(r: Record) -> str:
    """The identity of the audio a record's embedding is computed from.

    The source's ``content_hash`` field when it has one (the folder source hashes every new or
    changed file). Otherwise the file's size and modification time, which is cheap and changes
    whenever the file is rewritten (a conservative key: a touched file is embedded again), and
    ``"missing"`` for a file that is not there. Captions, tags and splits are not part of it, so a
    manifest that changes only those reuses every embedding.
    """
    value = r.extra.get(CONTENT_HASH)
    if value:
        return str(value)
    try:
        st = os.stat(r.audio_path)
    except OSError:
        return "missing"
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


@dataclass
class ManifestChanges:
    """How one manifest differs from the one it replaces, by record id and content hash."""

    added: int = 0
    changed: int = 0      # same id, other audio
    moved: int = 0        # same id and audio, another path
    removed: int = 0
    unchanged: int = 0    # same audio at the same path (captions or tags may differ)

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def diff_manifests(old: Sequence[Record], new: Sequence[Record]) -> ManifestChanges:
    before = {r.id: r for r in old}
    out = ManifestChanges()
    for r in new:
        was = before.pop(r.id, None)
        if was is None:
            out.added += 1
        elif content_hash(was) != content_hash(r):
            out.changed += 1
        elif os.path.normpath(was.audio_path) != os.path.normpath(r.audio_path):
            out.moved += 1
        else:
            out.unchanged += 1
    out.removed = len(before)
    return out


def library_digest(keys: Iterable[tuple[str, str]]) -> str:
    """One hash of an ordered list of (record id, content hash): what an embedding store was built for."""
    h = hashlib.sha256()
    for id_, digest in keys:
        h.update(f"{id_}\t{digest}\n".encode())
    return h.hexdigest()[:16]


def looks_like_path(value: str) -> bool:
    """A value the user meant as a path: it has a folder separator, a .json suffix, or starts with ~ or ."""
    return (os.sep in value or "/" in value or value.endswith(".json") or value.startswith(("~", "."))
            or (os.altsep is not None and os.altsep in value))


def resolve_manifest(state, name_or_path: str | None) -> tuple[str, Path]:
    """A manifest name in the state dir (looked up first), a path, or None for the newest.

    A bare word is always a name: ``--manifest lib`` is ``manifests/lib.json`` even if a folder
    ``./lib`` exists. Only a value that looks like a path is read as one.
    """
    if name_or_path is None:
        name = state.newest_manifest()
        return name, state.manifest_path(name)
    if not looks_like_path(name_or_path):
        path = state.manifest_path(name_or_path)
        if not path.exists():
            from .errors import unknown_choice

            raise unknown_choice("manifest", name_or_path, state.list_manifests() or ["(none: run `mtx unify`)"])
        return name_or_path, path
    p = Path(name_or_path).expanduser()
    if not p.is_file():
        from .errors import MtxError

        what = "is a directory, not a manifest file" if p.is_dir() else "does not exist"
        raise MtxError(f"manifest {name_or_path} {what}",
                       hint="pass a manifest name from `mtx unify --name` or the path of a manifest .json file")
    return p.stem, p.resolve()


# --------------------------------------------------------------------------- sampling
def _stable_keys(seed: int, strings: Iterable[str]) -> list[int]:
    """The seeded 64-bit key of each string: the big-endian BLAKE2b-64 digest of ``"{seed}:{string}"``.
    Sampling orders records by the key of their id, splits bucket components by the keys of their
    artists, so neither depends on input order. One loop: the hash dominates sampling 100k records."""
    prefix, blake2b, from_bytes = f"{seed}:", hashlib.blake2b, int.from_bytes
    return [from_bytes(blake2b((prefix + s).encode(), digest_size=8).digest(), "big") for s in strings]


def duration_bin(duration: float) -> str:
    for name, lo, hi in DURATION_BINS:
        if lo <= duration < hi:
            return name
    return DURATION_BINS[-1][0]


def allocate_quota(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` evenly over groups, redistributing what small groups cannot use.

    Water-filling: each round gives every unsaturated group an equal share of what is
    left; groups smaller than their share take everything and drop out.
    """
    quota = {g: 0 for g in sizes}
    remaining = min(total, sum(sizes.values()))
    open_groups = sorted(g for g in sizes if sizes[g] > 0)
    while remaining > 0 and open_groups:
        share, extra = divmod(remaining, len(open_groups))
        progressed = False
        for i, g in enumerate(open_groups):
            want = share + (1 if i < extra else 0)
            take = min(want, sizes[g] - quota[g])
            if take:
                progressed = True
            quota[g] += take
            remaining -= take
        open_groups = [g for g in open_groups if quota[g] < sizes[g]]
        if not progressed:
            break
    return quota


def sample_records(
    records: Sequence[Record],
    max_samples: int | None = None,
    stratify_by: str = "dataset",
    samples_per_dataset: int | None = None,
    seed: int = 0,
) -> list[Record]:
    """Pick a subset; the result is ordered by the seeded key of each id (``_stable_keys``).

    ``samples_per_dataset`` keeps the first that many of each dataset in shuffle order; ``max_samples``
    then takes an even share of each stratum (``allocate_quota``), again the first in shuffle order.
    Worked on record indices in one global shuffle order, so every step is a pass over a list."""
    if stratify_by not in ("dataset", "duration", "none"):
        raise MtxError(f"unknown --stratify-by {stratify_by!r}", hint="choose dataset, duration or none")
    keys = _stable_keys(seed, [r.id for r in records])
    pool = sorted(range(len(records)), key=keys.__getitem__)
    if samples_per_dataset:
        taken: dict[str, int] = defaultdict(int)
        kept = []
        for i in pool:
            ds = records[i].dataset or "unknown"
            if taken[ds] < samples_per_dataset:
                taken[ds] += 1
                kept.append(i)
        pool = kept
    if max_samples is not None and max_samples < len(pool):
        if stratify_by == "none":
            pool = pool[:max_samples]
        else:
            stratum = [records[i].dataset or "unknown" for i in pool] if stratify_by == "dataset" else \
                [duration_bin(records[i].duration) for i in pool]
            sizes: dict[str, int] = defaultdict(int)
            for g in stratum:
                sizes[g] += 1
            left = allocate_quota(dict(sizes), max_samples)
            kept = []
            for i, g in zip(pool, stratum):
                if left[g]:
                    left[g] -= 1
                    kept.append(i)
            pool = kept
    return [records[i] for i in pool]


# --------------------------------------------------------------------------- recordings (group keys)
def jamendo_group(track_id: Any) -> str | None:
    """One key for a Jamendo track however a source spells its id (``3346``, ``"track_0003346"``, ``"3346.mp3"``)."""
    digits = re.sub(r"\D", "", str(track_id).rsplit("/", 1)[-1].split(".", 1)[0]) if track_id is not None else ""
    return f"jamendo:{int(digits)}" if digits else None


def jamendo_artist(artist_id: Any) -> str | None:
    """One key for a Jamendo artist: MTG-Jamendo writes ``artist_000517``, Song Describer ``517``."""
    digits = re.sub(r"\D", "", str(artist_id)) if artist_id is not None else ""
    return f"jamendo-artist:{int(digits)}" if digits else None


def youtube_group(ytid: str | None) -> str | None:
    return f"youtube:{ytid.strip()}" if ytid and ytid.strip() else None


def file_group(path: str | Path) -> str:
    return f"file:{Path(path).resolve()}"


def group_of(r: Record) -> str:
    """The recording a record belongs to: its ``group``, or the record itself when a source set none."""
    return r.group or f"id:{r.id}"


def normalised_artist(artist: str | None) -> str | None:
    # Case and whitespace differ between sources for the same artist.
    name = " ".join(artist.lower().split()) if artist else ""
    return name or None


def artist_of(r: Record) -> str | None:
    """The artist identity used for splits: a source's catalogue id (``extra["artist_key"]``, e.g. the
    Jamendo artist id that all three Jamendo sources share) when it has one, else the normalised name.
    One identity per record, so that every source spells one artist the same way and a component's
    key (see ``component_key``) does not depend on which sources were sampled."""
    key = r.extra.get("artist_key")
    return str(key) if key else normalised_artist(r.artist)


def album_of(r: Record) -> str | None:
    """The album identity used for splits: a source's ``extra["album_key"]`` (the folder source: the album
    tag within its folder), or None. An album is never split, even when several artists share it."""
    key = r.extra.get("album_key")
    return str(key) if key else None


# --------------------------------------------------------------------------- splits
@dataclass
class SplitSummary:
    components: int = 0
    official_conflicts: int = 0   # components whose members' official splits disagreed
    overridden: int = 0           # records whose official split was changed to keep their component together
    filled: int = 0               # components moved into an otherwise empty split (tiny manifests only)


# With --keep-official-splits a component whose members carry different official splits goes to the most
# held-out of them: an official test track must never end up in train (that is the leak being prevented).
_HELD_OUT_ORDER = {"test": 0, "val": 1, "train": 2}


def recording_components(records: Sequence[Record]) -> list[list[int]]:
    """Connected components (lists of record indices, ordered by their first index) of the graph linking
    records that share a group key, a normalised artist or an album (``album_of``)."""
    return _components(records, [artist_of(r) for r in records])


def _components(records: Sequence[Record], artists: Sequence[str | None]) -> list[list[int]]:
    # Union-find over integer nodes: one per record's group, artist and album key.
    node: dict[str, int] = {}
    parent: list[int] = []

    def code(key: str) -> int:
        c = node.get(key)
        if c is None:
            c = node[key] = len(parent)
            parent.append(c)
        return c

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:          # path compression
            parent[x], x = root, parent[x]
        return root

    groups = []
    for r, artist in zip(records, artists):
        g = code("g:" + group_of(r))
        groups.append(g)
        album = album_of(r)
        for other in (artist and "a:" + artist, album and "l:" + album):
            if other:
                ra, rb = find(g), find(code(other))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        root = find(g)
        if root in members:
            members[root].append(i)
        else:
            members[root] = [i]
    return sorted(members.values())


def component_key(records: Sequence[Record], seed: int, artists: Sequence[str | None] | None = None,
                  memo: dict[str, int] | None = None) -> int:
    """The seeded hash a component is bucketed by.

    The minimum hash over the component's artists (over its groups when it has no artist): it depends
    only on which artists/recordings the component holds, not on how many records of them were
    sampled or which manifest they are in, so a record keeps its split under sampling. (A sample that
    drops the only record bridging two artists splits the component; each part then keeps the bucket
    of the artist with the smaller hash, so the part holding that artist is unchanged.)
    ``artists``: each record's ``artist_of`` when known; ``memo``: node -> hash, shared by the
    components of one manifest.
    """
    named = {a for a in (artists if artists is not None else map(artist_of, records)) if a}
    nodes = [f"a:{a}" for a in named] if named else [f"g:{group_of(r)}" for r in records]
    memo = {} if memo is None else memo
    new = [n for n in nodes if n not in memo]
    if new:
        memo.update(zip(new, _stable_keys(seed, new)))
    return min(memo[n] for n in nodes)


def _ranges(ratios: tuple[float, float, float]) -> dict[str, tuple[float, float]]:
    out, edge = {}, 0.0
    for name, ratio in zip(SPLITS, ratios):
        out[name] = (edge, edge + ratio)
        edge += ratio
    return out


def bucket(key: int, ratios: tuple[float, float, float]) -> str:
    u = key / 2.0**64
    for name, (lo, hi) in _ranges(ratios).items():
        if lo <= u < hi:
            return name
    return next(name for name, ratio in zip(reversed(SPLITS), reversed(ratios)) if ratio > 0)


def _fill_empty_splits(keys: list[int], splits: list[str | None], ratios: tuple[float, float, float]) -> int:
    """Tiny manifests: give each empty split (with a positive ratio) the component whose hash lies nearest
    its range, taken from a split that keeps at least one component. Returns how many moved.

    Only here does a component's split depend on the rest of the sample; with a few dozen
    components or more no split comes out empty and nothing moves."""
    ranges = _ranges(ratios)
    moved = 0
    for name in ("test", "val", "train"):
        counts = {n: splits.count(n) for n in SPLITS}
        if ratios[SPLITS.index(name)] <= 0 or counts[name] > 0:
            continue
        lo, hi = ranges[name]

        def distance(i: int) -> tuple[float, int]:
            u = keys[i] / 2.0**64
            return (lo - u if u < lo else u - hi, keys[i])

        donors = [i for i, sp in enumerate(splits) if sp is not None and counts[sp] > 1]
        if donors:
            splits[min(donors, key=distance)] = name
            moved += 1
    return moved


def assign_splits(
    records: Sequence[Record],
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    keep_official: bool = False,
    previous: dict[str, str] | None = None,
) -> SplitSummary:
    """Assign train/val/test in place: a split is a property of the recording, never of the sample.

    Records that share a recording (``group``), an artist (``artist_of``) or an album (``album_of``)
    form connected components; each component goes whole into the split its seeded hash falls in
    (``component_key``), so the split sizes follow ``ratios`` in expectation (not exactly: the
    components are indivisible) and a record's split does not depend on what else was sampled, except
    in a manifest so small that a split would be empty (``_fill_empty_splits``). With
    ``keep_official`` a component with official splits keeps them; when its members disagree it goes to the most held-out one
    (test, then val), and the records moved are counted.

    ``previous`` (record id -> split, from the manifest this one replaces) keeps a changed library's
    splits still: a component holding records that had a split keeps it (the most held-out one if
    a new record joined components that had different splits), so an update never moves a track
    between train and test; only new components are bucketed.
    """
    if abs(sum(ratios) - 1.0) > 1e-6 or any(x < 0 for x in ratios):
        raise MtxError(f"split ratios {ratios} must be non-negative and sum to 1")
    summary = SplitSummary()
    artists = [artist_of(r) for r in records]
    components = _components(records, artists)
    memo: dict[str, int] = {}
    keys: list[int] = []
    hashed: list[str | None] = []       # the bucketed split; None for components pinned by official splits
    pinned: list[str | None] = []
    for members in components:
        rs = [records[i] for i in members]
        official = {r.split for r in rs if r.split} if keep_official else set()
        kept = {previous[r.id] for r in rs if r.id in previous} if previous else set()
        keys.append(component_key(rs, seed, [artists[i] for i in members], memo))
        if kept:
            pinned.append(min(kept, key=_HELD_OUT_ORDER.__getitem__))
            hashed.append(None)
        elif official:
            split = min(official, key=_HELD_OUT_ORDER.__getitem__)
            if len(official) > 1:
                summary.official_conflicts += 1
                summary.overridden += sum(1 for r in rs if r.split and r.split != split)
            pinned.append(split)
            hashed.append(None)
        else:
            pinned.append(None)
            hashed.append(bucket(keys[-1], ratios))
    summary.components = len(components)
    if not previous and (not keep_official or all(p is None for p in pinned)):
        summary.filled = _fill_empty_splits(keys, hashed, ratios)
    for members, p, h in zip(components, pinned, hashed):
        for i in members:
            records[i].split = p or h
    if summary.overridden:
        log.warning("%d record(s) in %d recording/artist component(s) had conflicting official splits and "
                    "were moved to their component's most held-out split", summary.overridden,
                    summary.official_conflicts)
    return summary


def split_counts(records: Iterable[Record]) -> dict[str, int]:
    counts = dict.fromkeys(SPLITS, 0)
    for r in records:
        if r.split in counts:
            counts[r.split] += 1
    return counts


# One artist holding more than this share of a manifest goes whole into one split (its records form
# one component), so train/val/test cannot come out near their ratios.
ARTIST_SHARE_WARN = 0.25
ARTIST_SHARE_MIN_RECORDS = 20   # below this a manifest is a smoke test; shares mean little


def dominant_artists(records: Sequence[Record], max_share: float = ARTIST_SHARE_WARN,
                     min_records: int = ARTIST_SHARE_MIN_RECORDS) -> list[tuple[str, int]]:
    """(artist as written, records) for each split artist (``artist_of``) holding more than ``max_share``
    of ``records``, largest first; empty for manifests under ``min_records``."""
    if len(records) < min_records:
        return []
    counts: dict[str, int] = defaultdict(int)
    names: dict[str, str] = {}
    for r in records:
        key = artist_of(r)
        if key:
            counts[key] += 1
            names.setdefault(key, r.artist or key)
    return sorted(((names[k], n) for k, n in counts.items() if n > max_share * len(records)),
                  key=lambda x: (-x[1], x[0]))


def split_counts_by(records: Iterable[Record], key) -> dict[str, dict[str, int]]:
    """Split sizes per value of ``key(record)`` (records where it is None are left out)."""
    by: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        k = key(r)
        if k is not None:
            by[k].append(r)
    return {k: split_counts(v) for k, v in sorted(by.items())}
