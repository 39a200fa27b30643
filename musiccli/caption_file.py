"""Your own captions and labels: a CSV or JSONL file merged onto the records ``mtx unify`` scanned.

One row per track, keyed by ``id`` (the record id in the manifest) or ``path`` (the audio file:
absolute, relative to the scanned music folder, or relative to the caption file). The other
columns are:

- ``caption``: replaces the record's captions (its ``alt_captions`` become the row's, or none);
- ``alt_captions``: further captions (in CSV several are separated by ``|``);
- ``artist``, ``title``, ``tags``, ``license``: the record fields of those names (the artist is also
  what splits group by);
- any other name: a label field, stored on the record as an extra field (``--zero-shot NAME``
  reads it; in CSV ``a|b`` is a list, which makes the field multi-label).

An empty cell (or a JSON ``null``) leaves the record's value as it was. Fields that identify the
track or its split (``audio_path``, ``duration``, ``dataset``, ``group``, ``split``, ...) cannot be
set here: a caption file changes what the tracks are called, never which audio they are, so the
embeddings of a manifest made with one are those of the manifest without it.

Reading refuses a file it cannot use in one line (unknown format, unreadable row, a key given
twice); keys that name no scanned record are reported, not fatal.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MtxError
from .manifest import Record

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
KEYS = ("id", "path")
LIST_SEPARATOR = "|"
RECORD_FIELDS = ("artist", "title", "tags", "license")
# What a caption file may not change: the track's identity (id, audio, duration: what embeddings are
# keyed by), its recording group and split, and the fields mtx itself derives.
RESERVED = ("audio_path", "duration", "dataset", "group", "split", "content_hash", "relative_path",
            "artist_source", "caption_source")
UNKNOWN_EXAMPLES = 10
_HINT = "one row per track: id or path, then caption, alt_captions and label columns (docs/reference/captions.md)"


@dataclass
class Row:
    line: int
    kind: str                  # "id" or "path"
    key: str
    values: dict[str, Any]     # field -> value (absent fields are not in it)


@dataclass
class CaptionFile:
    path: str
    format: str
    digest: str                # of the file's bytes: part of the unify stage's identity
    rows: list[Row]

    @property
    def fields(self) -> list[str]:
        return sorted({f for r in self.rows for f in r.values})


@dataclass
class CaptionMerge:
    """What merging a caption file did (``UnifyResult.caption_file``)."""

    file: str
    format: str
    rows: int
    matched: int = 0
    captions: int = 0                      # records whose captions the file replaced
    labels: dict[str, int] = field(default_factory=dict)   # field -> records it was set on
    unknown: int = 0                       # rows naming no scanned record
    unknown_examples: list[str] = field(default_factory=list)
    without_row: int = 0                   # scanned records the file does not mention


# --------------------------------------------------------------------------- reading
def read_caption_file(path: str | Path) -> CaptionFile:
    """Parse ``path`` (CSV, TSV or JSONL by its suffix); raises MtxError with the line at fault."""
    p = Path(path).expanduser()
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise MtxError(f"caption file {p.name}: unknown format {p.suffix or '(no suffix)'!r}",
                       hint="use a .csv, .tsv or .jsonl file (one row per track)")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise MtxError(f"caption file {path} does not exist", hint="pass the path of a .csv or .jsonl file") from None
    except IsADirectoryError:
        raise MtxError(f"caption file {path} is a directory", hint="pass the path of a .csv or .jsonl file") from None
    except OSError as e:
        raise MtxError(f"cannot read caption file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MtxError(f"caption file {p.name} is not UTF-8 text (byte {e.start})",
                       hint="save it as UTF-8") from None
    rows = _read_jsonl(text, p.name) if fmt == "jsonl" else _read_csv(text, p.name, "\t" if fmt == "tsv" else ",")
    if not rows:
        raise MtxError(f"caption file {p.name} has no rows", hint=_HINT)
    _refuse_duplicates(rows, p.name)
    return CaptionFile(path=str(p.resolve()), format=fmt, digest=hashlib.sha256(data).hexdigest()[:16], rows=rows)


def _read_csv(text: str, name: str, delimiter: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)  # keeps quoted newlines
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise MtxError(f"{name}: line 1 is not valid CSV ({e})", hint=_HINT) from None
    if not header or not any(h.strip() for h in header):
        raise MtxError(f"{name} has no header line", hint=_HINT)
    columns = [h.strip() for h in header]
    _check_columns(columns, name)
    rows = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise MtxError(f"{name}: line {reader.line_num} is not valid CSV ({e})", hint=_HINT) from None
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(columns):
            raise MtxError(f"{name}: line {reader.line_num} has {len(cells)} cells for {len(columns)} columns",
                           hint="quote cells that contain the delimiter")
        raw = {c: v.strip() for c, v in zip(columns, cells) if c and v.strip()}
        rows.append(_row(raw, reader.line_num, name, from_csv=True))
    return rows


def _read_jsonl(text: str, name: str) -> list[Row]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MtxError(f"{name}: line {n} is not valid JSON ({e.msg})",
                           hint="JSONL is one JSON object per line") from None
        if not isinstance(obj, dict):
            raise MtxError(f"{name}: line {n} is a JSON {type(obj).__name__}, not an object",
                           hint="JSONL is one JSON object per line") from None
        _check_columns(list(obj), name, line=n)
        rows.append(_row({k.strip(): v for k, v in obj.items() if v is not None and v != ""}, n, name,
                         from_csv=False))
    return rows


def _check_columns(columns: list[str], name: str, line: int | None = None) -> None:
    where = f"{name}: line {line}" if line is not None else name
    seen = set()
    for c in columns:
        c = c.strip()
        if c in seen:
            raise MtxError(f"{where}: column {c!r} appears twice", hint=_HINT)
        seen.add(c)
        if c in RESERVED:
            raise MtxError(f"{where}: {c!r} cannot be set from a caption file (it identifies the track or "
                           f"its split)", hint="a caption file sets captions and labels; key rows by id or path")
    if not seen & set(KEYS):
        raise MtxError(f"{where} has no id or path {'field' if line is not None else 'column'}", hint=_HINT)


def _row(raw: dict[str, Any], line: int, name: str, from_csv: bool) -> Row:
    given = [k for k in KEYS if k in raw]
    if len(given) != 1:
        raise MtxError(f"{name}: line {line} " + ("gives both id and path" if given else "has no id or path"),
                       hint="key each row by one of id or path")
    kind = given[0]
    key = raw.pop(kind)
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise MtxError(f"{name}: line {line}: {kind} {key!r} is not a string", hint=_HINT)
    values: dict[str, Any] = {}
    for f, v in raw.items():
        value = _value(f, v, from_csv)
        if value is None:
            raise MtxError(f"{name}: line {line}: {f} {v!r} is not "
                           + ("a string" if f in ("caption", "artist", "title", "license")
                              else "a list of strings" if f in ("alt_captions", "tags")
                              else "a string, number or list of them"), hint=_HINT)
        if value != []:
            values[f] = value
    return Row(line=line, kind=kind, key=str(key).strip(), values=values)


def _value(f: str, v: Any, from_csv: bool) -> Any:
    """The field's value in the record's type, or None when it has the wrong type."""
    if from_csv:
        parts = [p.strip() for p in v.split(LIST_SEPARATOR) if p.strip()]
        if f in ("alt_captions", "tags"):
            return parts
        if f in ("caption", "artist", "title", "license"):
            return v
        return parts if len(parts) > 1 else v
    if f in ("caption", "artist", "title", "license"):
        return v.strip() if isinstance(v, str) and v.strip() else None
    if f in ("alt_captions", "tags"):
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            return None
        return [x.strip() for x in items if x.strip()]
    if isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, list) and all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in v):
        return v
    return None


def _refuse_duplicates(rows: list[Row], name: str) -> None:
    first: dict[tuple[str, str], int] = {}
    for r in rows:
        k = (r.kind, _path_key(r.key) if r.kind == "path" else r.key)
        if k in first:
            raise MtxError(f"{name}: line {r.line} repeats {r.kind} {r.key!r} (first on line {first[k]})",
                           hint="give each track one row; put its further captions in alt_captions")
        first[k] = r.line


def _path_key(p: str) -> str:
    return os.path.normpath(os.path.expanduser(p))


# --------------------------------------------------------------------------- merging
def merge_caption_file(records: Sequence[Record], cf: CaptionFile) -> CaptionMerge:
    """Apply ``cf`` to ``records`` in place (captions, labels; never identity fields) and report it.

    Raises MtxError when two rows name the same record (say, by id and by path)."""
    by_id = {r.id: i for i, r in enumerate(records)}
    by_path = {os.path.normpath(r.audio_path): i for i, r in enumerate(records)}
    by_rel: dict[str, int | None] = {}
    for i, r in enumerate(records):
        rel = r.extra.get("relative_path")
        if isinstance(rel, str):
            k = os.path.normpath(rel)
            by_rel[k] = None if k in by_rel else i     # None: several sources share it; not a key
    base = Path(cf.path).parent
    name = Path(cf.path).name
    out = CaptionMerge(file=cf.path, format=cf.format, rows=len(cf.rows))
    owner: dict[int, int] = {}
    for row in cf.rows:
        i = _find(row, by_id, by_path, by_rel, base)
        if i is None:
            out.unknown += 1
            if len(out.unknown_examples) < UNKNOWN_EXAMPLES:
                out.unknown_examples.append(f"line {row.line}: {row.kind} {row.key}")
            continue
        if i in owner:
            raise MtxError(f"{name}: lines {owner[i]} and {row.line} both name record {records[i].id!r}",
                           hint="give each track one row (by id or by path, not both)")
        owner[i] = row.line
        out.matched += 1
        _apply(records[i], row.values, out)
    out.without_row = len(records) - out.matched
    if out.unknown:
        log.warning("%s: %d row(s) name no scanned record and are ignored, e.g. %s", name, out.unknown,
                    out.unknown_examples[0])
    log.debug("%s: %d row(s) matched, %d record(s) got new captions", name, out.matched, out.captions)
    return out


def _find(row: Row, by_id: dict[str, int], by_path: dict[str, int], by_rel: dict[str, int | None],
          base: Path) -> int | None:
    if row.kind == "id":
        return by_id.get(row.key)
    p = _path_key(row.key)
    if os.path.isabs(p):
        return by_path.get(p)
    # Relative: to the scanned music folder first (the form a library listing has), then to the file.
    i = by_rel.get(p)
    return i if i is not None else by_path.get(os.path.normpath(base / p))


def _apply(r: Record, values: dict[str, Any], out: CaptionMerge) -> None:
    if "caption" in values:
        r.caption = values["caption"]
        r.alt_captions = list(values.get("alt_captions", []))
        r.extra["caption_source"] = "file"
        out.captions += 1
    elif "alt_captions" in values:
        r.alt_captions = list(values["alt_captions"])
    for f, v in values.items():
        if f in ("caption", "alt_captions"):
            continue
        if f in RECORD_FIELDS:
            setattr(r, f, list(v) if f == "tags" else v)
            if f == "artist":
                r.extra["artist_source"] = "file"
        else:
            r.extra[f] = v
        out.labels[f] = out.labels.get(f, 0) + 1


__all__ = ["CaptionFile", "CaptionMerge", "read_caption_file", "merge_caption_file", "FORMATS", "RESERVED"]
