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
from json.encoder import encode_basestring as _escape   # the C escaper where there is one
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .errors import MtxError
from .state import atomic_path, atomic_write_text

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


# --------------------------------------------------------------------------- records as columns
FIELDS = tuple(f for f in Record.__dataclass_fields__ if f != "extra")   # a record's own fields, in order
_LIST_FIELDS = ("alt_captions", "tags")                                # written only when not empty
_ABSENT: Any = object()


def _arrow():
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa, pc


class RecordTable:
    """Records as Arrow columns: unify parses, filters, samples, splits and writes 100k records in passes
    over columns, and builds a :class:`Record` only where one is needed (the LLM captioner, a caption file).

    The columns are the record fields (:data:`FIELDS`; null where a record has none) and then the extra
    fields, null where a record lacks one. A column Arrow cannot type (mixed values, nested objects, an
    explicit ``None``) holds each value's JSON text instead, and is named in ``encoded``. Every record writes
    its extra fields in the table's column order (``_merged_order`` keeps each record's own order where the
    records agree, as sources' records do)."""

    __slots__ = ("table", "encoded")

    def __init__(self, table, encoded: Iterable[str] = ()) -> None:
        pa, _ = _arrow()
        names = table.column_names
        missing = [f for f in REQUIRED if f not in names]
        if missing:
            raise ValueError(f"a record table needs the column(s) {missing}")
        if names[:len(FIELDS)] != list(FIELDS):      # the record fields first, in order; then the extras
            n = table.num_rows
            columns = {f: table.column(f) if f in names else pa.nulls(n, _field_type(f)) for f in FIELDS}
            columns.update((k, table.column(k)) for k in names if k not in FIELDS)
            table = pa.table(columns)
        self.table = table
        self.encoded = frozenset(encoded)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def extras(self) -> list[str]:
        return [n for n in self.table.column_names if n not in FIELDS]

    def has(self, name: str) -> bool:
        return name in self.table.column_names

    def values(self, name: str) -> list[Any]:
        """A column as Python values (None where a record has none)."""
        if not self.has(name):
            return [None] * len(self)
        values = self.table.column(name).to_pylist()
        if name in self.encoded:
            loads = json.loads
            return [None if v is None else loads(v) for v in values]
        return values

    def ids(self) -> list[str]:
        return self.values("id")

    def unique_ids(self) -> bool:
        _, pc = _arrow()
        if "id" in self.encoded:
            ids = self.ids()
            return len(set(ids)) == len(ids)
        return pc.count_distinct(self.table.column("id")).as_py() == len(self)

    def take(self, rows) -> "RecordTable":
        pa, _ = _arrow()
        return RecordTable(self.table.take(pa.array(rows, pa.int64())), self.encoded)

    def column(self, name: str):
        """A column as one Arrow array (the table's own column: JSON text where ``name`` is encoded)."""
        return self.table.column(name).combine_chunks()

    def set(self, name: str, values) -> "RecordTable":
        """This table with the column ``name`` set to ``values`` (Python values or an Arrow array)."""
        pa, _ = _arrow()
        if not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = pa.array(values, _field_type(name) if name in FIELDS else None)
        t = self.table
        t = t.set_column(t.column_names.index(name), name, values) if name in t.column_names else \
            t.append_column(name, values)
        return RecordTable(t, self.encoded - {name})

    def split_keys(self) -> tuple[list[str], list[str | None], list[str | None]]:
        """Each record's ``group_of``, ``artist_of`` and ``album_of``, as columns."""
        pa, pc = _arrow()
        if "group" in self.encoded or "id" in self.encoded:
            groups = [g or f"id:{i}" for g, i in zip(self.values("group"), self.ids())]
        else:
            group = self.column("group")
            group = pc.if_else(pc.equal(group, ""), pa.scalar(None, pa.string()), group)
            groups = pc.coalesce(group, pc.binary_join_element_wise("id:", self.column("id"), "")).to_pylist()
        artists = _normalised_artists(self.values("artist") if "artist" in self.encoded else self.column("artist"))
        if self.has("artist_key"):
            artists = [str(k) if k else a for k, a in zip(self.values("artist_key"), artists)]
        albums = [str(k) if k else None for k in self.values("album_key")] if self.has("album_key") else \
            [None] * len(self)
        return groups, artists, albums

    def records(self) -> list[Record]:
        fields = [self.values(f) for f in FIELDS]
        names = self.extras
        extras = [self.values(k) for k in names]
        present = [self._present(k) for k in names]
        out = []
        for i, values in enumerate(zip(*fields)):
            r = Record(*values)
            r.duration = float(r.duration)
            r.alt_captions = list(r.alt_captions or ())
            r.tags = list(r.tags or ())
            r.extra = {k: col[i] for k, col, has in zip(names, extras, present) if has[i]}
            out.append(r)
        return out

    def _present(self, name: str) -> list[bool]:
        return self.table.column(name).is_valid().to_pylist()

    # ---------------------------------------------------------------- building
    @classmethod
    def from_records(cls, records: Sequence[Record]) -> "RecordTable":
        names = _merged_order({tuple(r.extra): None for r in records})
        columns = {f: [getattr(r, f) for r in records] for f in FIELDS}
        for f in _LIST_FIELDS:
            columns[f] = [v or None for v in columns[f]]
        for k in names:
            if k in FIELDS:
                raise MtxError(f"record field {k!r} is also an extra field", hint="rename the extra field")
            columns[k] = [r.extra.get(k, _ABSENT) for r in records]
        return cls.from_columns(columns, len(records))

    @classmethod
    def from_columns(cls, columns: dict[str, Sequence[Any]], n: int) -> "RecordTable":
        """A table of Python columns: record fields with None where a record has none, extra fields with
        ``_ABSENT`` where a record lacks one (None there is a value, written ``null``)."""
        pa, _ = _arrow()
        arrays, encoded = {}, set()
        for name, values in columns.items():
            if name in FIELDS:
                arr = _typed(values, _field_type(name))
            else:
                absent = _ABSENT in values if values else False
                present = [v for v in values if v is not _ABSENT] if absent else values
                arr = _typed(present, _extra_type(present)) if None not in present else None
                if arr is not None and absent:
                    arr = _scatter(arr, [v is not _ABSENT for v in values])
            if arr is None:
                encode = _line_encoder()
                arr = pa.array([None if v is _ABSENT or (v is None and name in FIELDS) else encode(v)
                                for v in values], pa.string())
                encoded.add(name)
            arrays[name] = arr
        if not arrays:
            return cls(pa.table({f: pa.array([], _field_type(f)) for f in FIELDS}))
        return cls(pa.table(arrays), encoded)

    @classmethod
    def concat(cls, tables: Sequence["RecordTable"]) -> "RecordTable":
        """The tables' rows one after another; a column one table lacks is null there, and a column two
        tables type differently is JSON text in all of them."""
        pa, _ = _arrow()
        if not tables:
            return cls.from_columns({}, 0)
        types: dict[str, set] = {}
        for t in tables:
            for f in t.table.schema:
                types.setdefault(f.name, set()).add(f.type)
        encoded = set().union(*(t.encoded for t in tables)) | {n for n, ts in types.items() if len(ts) > 1}
        parts = [t.as_text(encoded).table for t in tables]
        merged = pa.concat_tables(parts, promote_options="default")
        order = _merged_order({tuple(t.extras): None for t in tables})
        return cls(merged.select(list(FIELDS) + order) if order != merged.column_names[len(FIELDS):] else merged,
                   encoded)

    def as_text(self, names: Iterable[str]) -> "RecordTable":
        """This table with the columns ``names`` holding JSON text."""
        pa, _ = _arrow()
        t, encode = self.table, _line_encoder()
        for name in set(names) - self.encoded:
            if name in t.column_names:
                text = [encode(v) if has else None for v, has in zip(self.values(name), self._present(name))]
                t = t.set_column(t.column_names.index(name), name, pa.array(text, pa.string()))
        return RecordTable(t, self.encoded | set(names))


def _merged_order(shapes: Iterable[tuple[str, ...]]) -> list[str]:
    """One order of all the names in ``shapes`` (each a tuple of extra-field names, in a record's order) that
    keeps every shape's own order where they agree (a topological order of "comes before", ties broken by
    first appearance), so each record writes its extra fields as it had them. Where two shapes disagree,
    the one seen first wins."""
    first: dict[str, int] = {}
    after: dict[str, set[str]] = {}
    for shape in shapes:
        for k in shape:
            first.setdefault(k, len(first))
            after.setdefault(k, set())
        for a, b in zip(shape, shape[1:]):
            after[a].add(b)
    waiting = {k: 0 for k in first}
    for k, later in after.items():
        for b in later:
            waiting[b] += 1
    out: list[str] = []
    ready = sorted((k for k, w in waiting.items() if not w), key=first.__getitem__)
    while len(out) < len(first):
        if not ready:       # disagreeing orders (a cycle): take the earliest name still waiting
            ready = [min((k for k in first if k not in set(out)), key=first.__getitem__)]
            waiting[ready[0]] = 0
        k = ready.pop(0)
        if k in out:
            continue
        out.append(k)
        for b in after[k]:
            waiting[b] -= 1
            if waiting[b] == 0 and b not in out:
                ready.append(b)
                ready.sort(key=first.__getitem__)
    return out


def _field_type(name: str):
    pa, _ = _arrow()
    return pa.float64() if name == "duration" else pa.list_(pa.string()) if name in _LIST_FIELDS else pa.string()


def _typed(values: Sequence[Any], type_):
    """An Arrow array of ``values`` as ``type_``, or None where they do not all fit it exactly."""
    if type_ is None:
        return None
    pa, _ = _arrow()
    try:
        return pa.array(values, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return None


def _extra_type(values: Sequence[Any]):
    """The Arrow type an extra field's present values keep exactly, or None (then they are kept as JSON)."""
    pa, _ = _arrow()
    types = set(map(type, values))
    if types == {str}:
        return pa.string()
    if types == {int}:
        return pa.int64()
    if types == {float} and all(map(math.isfinite, values)):
        return pa.float64()
    if types == {bool}:
        return pa.bool_()
    if types == {list} and all(type(x) is str for v in values for x in v):
        return pa.list_(pa.string())
    return None


def _scatter(arr, mask: list[bool]):
    """``arr`` (one value per True of ``mask``) spread over ``mask``'s rows, null at the others."""
    pa, pc = _arrow()
    indices = []
    k = 0
    for m in mask:
        indices.append(k if m else None)
        k += m
    return pc.take(arr, pa.array(indices, pa.int64()))


# One batch of lines is built at a time: Arrow's string arrays hold at most 2 GiB.
_WRITE_BATCH = 100_000


def _write_table(path: Path, table: RecordTable) -> None:
    """The manifest of ``table``: byte for byte what :func:`write_manifest` writes for its records (one
    ``json`` line per record), made by Arrow's string kernels over whole columns."""
    n = len(table)
    if not n:
        atomic_write_text(path, "[]\n")
        return
    stored = _path_writer(path)
    prefix = getattr(stored, "prefix", None)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(b"[\n")
        for start in range(0, n, _WRITE_BATCH):
            lines = _json_lines(RecordTable(table.table.slice(start, _WRITE_BATCH), table.encoded), prefix, stored)
            f.write(lines[:-2] if start + _WRITE_BATCH >= n else lines)      # the last record has no ",\n"
        f.write(b"\n]\n")


def _json_lines(table: RecordTable, prefix: str | None, stored) -> memoryview:
    """Each record's line and ",\n", concatenated."""
    pa, pc = _arrow()
    key = _line_encoder()
    pieces = []
    for name in table.table.column_names:
        col = table.table.column(name).combine_chunks()
        if name == "audio_path" and prefix is not None:
            col = _stored_paths(col, prefix, stored)
        before = ("{" if not pieces else ", ") + key(name) + ": "
        text = pc.binary_join_element_wise(before, col, "") if name in table.encoded else _json_text(col, before)
        if name in _LIST_FIELDS and name not in table.encoded:   # an empty list is not written
            text = pc.if_else(pc.greater(pc.list_value_length(col), 0), text, pa.scalar(None, pa.string()))
        pieces.append(text)
    lines = pc.binary_join_element_wise(*pieces, pa.scalar("},\n"), "", null_handling="skip")
    return joined_bytes(lines)


def _json_text(col, before: str = ""):
    """``before`` + each value's JSON text, as ``json`` writes it (``ensure_ascii=False``); null stays null."""
    pa, pc = _arrow()
    t = col.type
    if pa.types.is_large_string(t):
        col, t = col.cast(pa.string()), pa.string()
    if pa.types.is_string(t):
        return _json_strings(col, before)
    if pa.types.is_null(t):
        return pa.nulls(len(col), pa.string())
    if pa.types.is_list(t) and pa.types.is_string(t.value_type):
        import numpy as np

        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        items = _json_strings(pc.list_flatten(col))
        lists = pa.ListArray.from_arrays(offsets, items, mask=col.is_null())
        return pc.binary_join_element_wise(before + "[", pc.binary_join(lists, ", "), "]", "")
    if pa.types.is_integer(t):
        text = pc.cast(col, pa.string())
    elif pa.types.is_boolean(t):
        text = pc.if_else(col, "true", "false")
    else:
        values = col.to_pylist()
        if pa.types.is_float64(t) and not col.null_count and all(map(math.isfinite, values)):
            text = pa.array(list(map(float.__repr__, values)), pa.string())    # json writes a finite float so
        else:   # NaN and infinities (json's own spelling), anything else
            encode = _line_encoder()
            text = pa.array([None if v is None else encode(v) for v in values], pa.string())
    return pc.binary_join_element_wise(before, text, "") if before else text


def _json_strings(col, before: str = ""):
    """``before`` + ``json``'s text of each string (null stays null). A column with nothing to
    escape is joined as it is; backslashes and quotes are escaped by kernels; a string holding a control
    character goes through the C escaper itself."""
    pa, pc = _arrow()
    out = col
    if pc.any(pc.match_substring_regex(col, '[\\\\"\\x00-\\x1f]')).as_py():
        out = pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')
        control = pc.fill_null(pc.match_substring_regex(col, "[\\x00-\\x1f]"), False)
        if pc.any(control).as_py():
            fixed = [_escape(v)[1:-1] for v in pc.filter(col, control).to_pylist()]
            out = pc.replace_with_mask(out, control, pa.array(fixed, pa.string()))
    return pc.binary_join_element_wise(before + '"', out, '"', "")


def _stored_paths(col, prefix: str, stored):
    """``stored`` (see :func:`_path_writer`) over a column of paths: a plain path under ``prefix`` by a
    kernel, one that ``normpath`` would change (``//``, ``.``, ``..``, a trailing ``/``) one by one."""
    pa, pc = _arrow()
    under = pc.fill_null(pc.starts_with(col, prefix), False)
    if not pc.any(under).as_py():
        return col
    odd = pc.fill_null(pc.match_substring_regex(col, r"//|/\./|/\.\./|/\.?\.?$"), False)
    plain = pc.and_(under, pc.invert(odd))
    out = pc.if_else(plain, pc.replace_substring(col, prefix, ".." + os.sep, max_replacements=1), col)
    unusual = pc.and_(under, odd)
    if pc.any(unusual).as_py():
        fixed = [stored(p) for p in pc.filter(col, unusual).to_pylist()]
        out = pc.replace_with_mask(out, unusual, pa.array(fixed, pa.string()))
    return out


def joined_bytes(arr) -> memoryview:
    """The concatenated bytes of a string array without nulls (a view of its data buffer)."""
    import numpy as np

    pa, _ = _arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    _, offsets, data = arr.buffers()
    at = np.frombuffer(offsets, dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    return memoryview(data)[int(at[0]):int(at[-1])]


def write_manifest(path: Path, records: "Sequence[Record] | RecordTable") -> None:
    """One record per line: a plain JSON array, diff-friendly, each line what ``json`` writes for the record's
    dict (``_write_table``). Records are turned into a table first."""
    table = records if isinstance(records, RecordTable) else RecordTable.from_records(records)
    if not table.unique_ids():
        seen: set[str] = set()
        dup = next(i for i in table.ids() if i in seen or seen.add(i))
        raise MtxError(f"duplicate record id {dup!r}", hint="ids must be unique across sources")
    _write_table(Path(path), table)


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

    stored.prefix = prefix     # type: ignore[attr-defined]  (the table writer's kernel does the plain paths)
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
    return str(value) if value else _stat_hash(r.audio_path)


def _stat_hash(path: str) -> str:
    try:
        st = os.stat(path)
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


def diff_manifests(old: Sequence[Record], new: "Sequence[Record] | RecordTable") -> ManifestChanges:
    before = {r.id: r for r in old}
    if isinstance(new, RecordTable):
        hashes = new.values(CONTENT_HASH) if new.has(CONTENT_HASH) else [None] * len(new)
        paths = new.values("audio_path")
        now = zip(new.ids(), (str(h) if h else _stat_hash(p) for h, p in zip(hashes, paths)), paths)
    else:
        now = ((r.id, content_hash(r), r.audio_path) for r in new)
    out = ManifestChanges()
    for id_, digest, path in now:
        was = before.pop(id_, None)
        if was is None:
            out.added += 1
        elif content_hash(was) != digest:
            out.changed += 1
        elif os.path.normpath(was.audio_path) != os.path.normpath(path):
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
def _stable_keys(seed: int, strings: Iterable[str]):
    """The seeded 64-bit key of each string (a numpy uint64 array): the big-endian BLAKE2b-64 digest of
    ``"{seed}:{string}"``. Sampling orders records by the key of their id, splits bucket components by the
    keys of their artists, so neither depends on input order. The hash of the seed's prefix is computed
    once and copied for each string, and the digests are read as one array: the hash dominates sampling."""
    import numpy as np

    start = hashlib.blake2b(f"{seed}:".encode(), digest_size=8)

    def digest(s: str) -> bytes:
        h = start.copy()
        h.update(s.encode())
        return h.digest()

    return np.frombuffer(b"".join(map(digest, strings)), dtype=">u8").astype(np.uint64)


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
    """Pick a subset; the result is ordered by the seeded key of each id (``_stable_keys``). See
    :func:`sample_indices`."""
    rows = sample_indices([r.id for r in records], [r.dataset for r in records], [r.duration for r in records],
                          max_samples=max_samples, stratify_by=stratify_by, samples_per_dataset=samples_per_dataset,
                          seed=seed)
    return [records[i] for i in rows]


def sample_indices(ids: Sequence[str], datasets: Sequence[str | None], durations: Sequence[float],
                   max_samples: int | None = None, stratify_by: str = "dataset",
                   samples_per_dataset: int | None = None, seed: int = 0) -> list[int]:
    """The rows to keep, in the order of the seeded key of each id (``_stable_keys``).

    ``samples_per_dataset`` keeps the first that many of each dataset in that order; ``max_samples`` then
    takes an even share of each stratum (``allocate_quota``), again the first in that order."""
    import numpy as np

    if stratify_by not in ("dataset", "duration", "none"):
        raise MtxError(f"unknown --stratify-by {stratify_by!r}", hint="choose dataset, duration or none")
    keys = _stable_keys(seed, ids)
    pool = np.argsort(keys, kind="stable")
    if samples_per_dataset or stratify_by == "dataset":
        ds_codes, ds_names = _codes(_or_unknown(datasets))
    if samples_per_dataset:
        pool = pool[_rank_within(ds_codes[pool]) < samples_per_dataset]
    if max_samples is not None and max_samples < len(pool):
        if stratify_by == "none":
            pool = pool[:max_samples]
        else:
            if stratify_by == "dataset":
                codes, names = ds_codes[pool], ds_names
            else:
                codes, names = _duration_bins(np.asarray(durations, dtype=np.float64)[pool]), \
                    [b[0] for b in DURATION_BINS]
            sizes = np.bincount(codes, minlength=len(names))
            quota = allocate_quota({names[c]: int(s) for c, s in enumerate(sizes) if s}, max_samples)
            limit = np.array([quota.get(name, 0) for name in names], dtype=np.int64)
            pool = pool[_rank_within(codes) < limit[codes]]
    return pool.tolist()


def _or_unknown(datasets):
    """``d or "unknown"`` of each dataset (a list or an Arrow string array)."""
    pa, pc = _arrow()
    if isinstance(datasets, pa.Array):
        return pc.if_else(pc.fill_null(pc.equal(datasets, ""), True), "unknown", datasets)
    return [d or "unknown" for d in datasets]


def _codes(values: Sequence[Any]):
    """(an integer code per value, -1 for None; the distinct other values in order of first appearance)."""
    import numpy as np

    pa, pc = _arrow()
    try:
        encoded = pc.dictionary_encode(values if isinstance(values, pa.Array) else pa.array(values, pa.string()))
    except (pa.ArrowException, TypeError, UnicodeError):      # not all strings: one dict lookup per value
        code: dict[Any, int] = {}
        setdefault = code.setdefault
        out = np.fromiter((-1 if v is None else setdefault(v, len(code)) for v in values), dtype=np.int64,
                          count=len(values))
        return out, list(code)
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return indices, encoded.dictionary.to_pylist()


def _rank_within(codes):
    """For each position, how many earlier positions hold the same code."""
    import numpy as np

    n = len(codes)
    if not n:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    ranked = codes[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    return rank


def _duration_bins(durations):
    """``duration_bin`` of each duration, as an index into ``DURATION_BINS``."""
    import numpy as np

    out = np.full(len(durations), len(DURATION_BINS) - 1, dtype=np.int64)
    for k, (_, lo, hi) in reversed(list(enumerate(DURATION_BINS))):
        out[(lo <= durations) & (durations < hi)] = k
    return out


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


def _normalised_artists(column) -> list[str | None]:
    """``normalised_artist`` of each value of a column (an Arrow array or a list), each distinct name once."""
    import numpy as np

    pa, pc = _arrow()
    try:
        encoded = pc.dictionary_encode(column if isinstance(column, pa.Array) else pa.array(column, pa.string()))
    except (pa.ArrowException, TypeError, UnicodeError):
        return [normalised_artist(a) for a in column]
    names = np.array([normalised_artist(a) for a in encoded.dictionary.to_pylist()] + [None], dtype=object)
    return names[encoded.indices.fill_null(len(names) - 1).to_numpy(zero_copy_only=False)].tolist()


def normalised_artist(artist: str | None) -> str | None:
    # Case and whitespace differ between sources for the same artist.
    name = " ".join(artist.lower().split()) if artist else ""
    return name or None


def artist_of(r: Record) -> str | None:
    """The artist identity used for splits: a source's catalogue id (``extra["artist_key"]``, e.g. the
    Jamendo artist id that all three Jamendo sources share) when it has one, else the normalised name.
    One identity per record, so that every source spells one artist the same way and a component's
    key (see ``split_assignment``) does not depend on which sources were sampled."""
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
    labels = _component_labels([[group_of(r) for r in records], [artist_of(r) for r in records],
                                [album_of(r) for r in records]])
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(i)
    return list(members.values())


def _component_labels(keys: Sequence[Sequence[str | None]]):
    """The component of each record, as the smallest record index in it. ``keys``: for each kind of link
    (group, artist, album), each record's key or None; records sharing a key are linked.

    Minimum-label propagation over whole columns: each round gives every record the smallest label among
    the records of each of its keys, then follows labels to their own labels; it stops when a round
    changes nothing, which happens once every component carries its smallest index."""
    import numpy as np

    n = len(keys[0]) if keys else 0
    labels = np.arange(n)
    links = []
    for column in keys:
        codes, _ = _codes(column)
        rows = np.flatnonzero(codes >= 0)
        order = np.argsort(codes[rows], kind="stable")
        rows, ranked = rows[order], codes[rows][order]
        new = np.r_[True, ranked[1:] != ranked[:-1]] if len(rows) else np.zeros(0, dtype=bool)
        links.append((rows, np.flatnonzero(new), np.cumsum(new) - 1))
    while True:
        before = labels.copy()
        for rows, starts, node in links:
            if len(rows):
                least = np.minimum.reduceat(labels[rows], starts)
                labels[rows] = np.minimum(labels[rows], least[node])
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


def split_assignment(ids: Sequence[str], groups: Sequence[str], artists: Sequence[str | None],
                     albums: Sequence[str | None], official: Sequence[str | None],
                     ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0, keep_official: bool = False,
                     previous: dict[str, str] | None = None) -> tuple[list[str], SplitSummary]:
    """Each record's split, from its id, group (``group_of``), artist (``artist_of``), album (``album_of``) and
    official split: :func:`assign_splits` on columns."""
    import numpy as np

    if abs(sum(ratios) - 1.0) > 1e-6 or any(x < 0 for x in ratios):
        raise MtxError(f"split ratios {ratios} must be non-negative and sum to 1")
    summary = SplitSummary()
    n = len(ids)
    if not n:
        return [], summary
    firsts, comp = np.unique(_component_labels([groups, artists, albums]), return_inverse=True)
    ncomp = len(firsts)
    summary.components = ncomp
    # The component's key: the least hash of its artists, else of its groups. It depends only on which
    # artists/recordings the component holds, not on how many of their records were sampled, so a record
    # keeps its split under sampling.
    top = np.iinfo(np.uint64).max
    keys = np.full(ncomp, top, dtype=np.uint64)
    art, art_names = _codes(artists)
    named = art >= 0
    if named.any():
        hashes = _stable_keys(seed, [f"a:{a}" for a in art_names])
        np.minimum.at(keys, comp[named], hashes[art[named]])
    with_artist = np.zeros(ncomp, dtype=bool)
    with_artist[comp[named]] = True
    rest = np.flatnonzero(~with_artist[comp])
    if len(rest):
        grp, grp_names = _codes([groups[i] for i in rest])
        hashes = _stable_keys(seed, [f"g:{g}" for g in grp_names])
        np.minimum.at(keys, comp[rest], hashes[grp])
    # Pinned components: by the manifest this one replaces, then by official splits.
    order = _HELD_OUT_ORDER
    held = sorted(order, key=order.__getitem__)           # test, val, train
    pinned = np.full(ncomp, len(held), dtype=np.int64)
    if previous:
        was = np.fromiter((order.get(previous.get(i), len(held)) for i in ids), dtype=np.int64, count=n)
        np.minimum.at(pinned, comp, was)
    kept = pinned < len(held)
    by_official = np.zeros(ncomp, dtype=bool)
    if keep_official:
        off = np.fromiter((order.get(s, len(held)) if s else len(held) for s in official), dtype=np.int64, count=n)
        has = off < len(held)
        least = np.full(ncomp, len(held), dtype=np.int64)
        most = np.full(ncomp, -1, dtype=np.int64)
        np.minimum.at(least, comp[has], off[has])
        np.maximum.at(most, comp[has], off[has])
        by_official = (least < len(held)) & ~kept
        conflict = by_official & (most != least)
        summary.official_conflicts = int(conflict.sum())
        summary.overridden = int((has & conflict[comp] & (off != least[comp])).sum())
        pinned = np.where(by_official, least, pinned)
    key_list = keys.tolist()
    u = np.array([k / 2.0**64 for k in key_list])     # Python's int-to-float rounding, as bucket() always had
    fallback = next(i for i, ratio in reversed(list(enumerate(ratios))) if ratio > 0)
    bucketed = np.full(ncomp, fallback, dtype=np.int64)
    for i, (lo, hi) in reversed(list(enumerate(_ranges(ratios).values()))):
        bucketed[(lo <= u) & (u < hi)] = i
    pinned_now = (kept | by_official).tolist()
    hashed: list[str | None] = [None if p else SPLITS[b] for b, p in zip(bucketed.tolist(), pinned_now)]
    if not previous and not by_official.any():
        summary.filled = _fill_empty_splits(key_list, hashed, ratios)
    names = [h if h is not None else held[p] for h, p in zip(hashed, pinned.tolist())]
    if summary.overridden:
        log.warning("%d record(s) in %d recording/artist component(s) had conflicting official splits and "
                    "were moved to their component's most held-out split", summary.overridden,
                    summary.official_conflicts)
    return [names[c] for c in comp.tolist()], summary


def _ranges(ratios: tuple[float, float, float]) -> dict[str, tuple[float, float]]:
    out, edge = {}, 0.0
    for name, ratio in zip(SPLITS, ratios):
        out[name] = (edge, edge + ratio)
        edge += ratio
    return out


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
    form connected components; each component goes whole into the split its seeded hash falls in (the
    least seeded hash of its artists, else of its groups), so the split sizes follow ``ratios`` in
    expectation (not exactly: the components are indivisible) and a record's split does not depend on
    what else was sampled, except in a manifest so small that a split would be empty
    (``_fill_empty_splits``). With
    ``keep_official`` a component with official splits keeps them; when its members disagree it goes to the
    most held-out one (test, then val), and the records moved are counted.

    ``previous`` (record id -> split, from the manifest this one replaces) keeps a changed library's
    splits still: a component holding records that had a split keeps it (the most held-out one if
    a new record joined components that had different splits), so an update never moves a track
    between train and test; only new components are bucketed.
    """
    splits, summary = split_assignment([r.id for r in records], [group_of(r) for r in records],
                                       [artist_of(r) for r in records], [album_of(r) for r in records],
                                       [r.split for r in records], ratios, seed, keep_official, previous)
    for r, split in zip(records, splits):
        r.split = split
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


def dominant_artists(artists: Sequence[str | None], names: Sequence[str | None],
                     max_share: float = ARTIST_SHARE_WARN,
                     min_records: int = ARTIST_SHARE_MIN_RECORDS) -> list[tuple[str, int]]:
    """(artist as written, records) for each split artist (``artists``: each record's ``artist_of``; ``names``:
    its artist as written) holding more than ``max_share`` of the records, largest first; empty for manifests
    under ``min_records``."""
    n = len(artists)
    if n < min_records:
        return []
    counts: dict[str, int] = defaultdict(int)
    written: dict[str, str] = {}
    for key, name in zip(artists, names):
        if key:
            counts[key] += 1
            if key not in written:
                written[key] = name or key
    return sorted(((written[k], c) for k, c in counts.items() if c > max_share * n), key=lambda x: (-x[1], x[0]))
