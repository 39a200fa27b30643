"""The "synth" source: procedurally generated clips with captions, fully offline.

Native layout under the dataset root::

    audio/NN/<id>.flac     NN = index % 100 as two digits; 16-bit FLAC
    metadata.csv           one row per ok clip; written LAST, once every clip was tried
    ledger.jsonl           per-clip ok / failed + sha256

The same ``n``/``seed``/``duration``/``sample_rate`` always give bit-identical files,
so a resumed generation equals an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import json.scanner
import logging
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import MtxError
from ..manifest import Record, RecordTable, joined_bytes
from ..progress import Progress
from ..state import atomic_write_text, file_sha256
from ._parallel import run_bounded
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import Ledger

log = logging.getLogger(__name__)

INFO = SourceInfo(
    name="synth",
    description="Procedurally generated music clips with captions (offline; for demos, tests and benchmarks)",
    license="CC0-1.0 (generated)",
    citation="",
    homepage="",
    phase=None,
    downloadable=True,
    synthetic=True,
    options=("n", "duration", "sample_rate", "seed"),
)

METADATA = "metadata.csv"
COLUMNS = ("id", "path", "style", "bpm", "key", "mode", "instruments", "mood", "loudness", "artist", "title",
           "tags", "caption", "alt_captions", "duration", "sample_rate", "sha256")


def relative_path(index: int, clip_id: str) -> str:
    return f"audio/{index % 100:02d}/{clip_id}.flac"


@dataclass(frozen=True)
class _Rendered:
    id: str
    path: str
    sha256: str
    nbytes: int


def _render_one(spec, root: str, duration: float, sample_rate: int, seed: int) -> _Rendered:
    """Worker: render one clip and write it atomically. Runs in a child process."""
    import numpy as np

    from ..audio import write_audio
    from .synth_gen import render_clip

    wave = render_clip(spec, duration=duration, sample_rate=sample_rate, seed=seed)
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    rel = relative_path(spec.index, spec.id)
    path = Path(root) / rel
    write_audio(path, wave, sample_rate, subtype="PCM_16")
    return _Rendered(id=spec.id, path=rel, sha256=file_sha256(path), nbytes=path.stat().st_size)


def _pool_context():
    # fork shares the already-imported modules (numpy, soundfile, torch via audio), so workers
    # start in milliseconds instead of re-importing for seconds; spawn where fork is unavailable.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


@register
class SynthSource(Source):
    info = INFO

    def plan(self, cfg: DownloadConfig):
        from .synth_gen import plan_dataset

        if cfg.n < 1:
            raise MtxError(f"--n must be at least 1 (got {cfg.n})")
        if cfg.duration <= 0 or cfg.sample_rate < 8000:
            raise MtxError(f"invalid synth audio settings: duration {cfg.duration}, sample rate {cfg.sample_rate}",
                           hint="use a positive --duration and --sample-rate of at least 8000")
        specs = plan_dataset(cfg.n, cfg.seed)
        if cfg.max_items is not None:
            specs = specs[: max(0, cfg.max_items)]
        return specs

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        specs = self.plan(cfg)
        root.mkdir(parents=True, exist_ok=True)
        todo = [s for s in specs if not (ledger.is_ok(s.id) and (root / relative_path(s.index, s.id)).exists())]
        done = len(specs) - len(todo)
        if done:
            log.info("synth: %d of %d clips already generated; rendering %d", done, len(specs), len(todo))
        with progress.task("Generating synth clips", total=len(specs), unit="clips", completed=done) as task:
            if todo:
                self._render_all(todo, cfg, root, ledger, progress, task)
        # The completion artifact comes last, once every planned clip was tried (an interrupt never
        # gets here). It lists the clips that are ok: a clip that failed is left out and listed by the
        # stage (complete with failures) until `--retry-failed` renders it and rewrites the file.
        self._write_metadata([s for s in specs if ledger.is_ok(s.id)], cfg, root, ledger)

    def _render_all(self, todo, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress, task) -> None:
        workers = max(1, min(cfg.n_workers, len(todo)))
        # Import the heavy modules here, before forking, so children inherit them instead of
        # each spending seconds on `import torch` (audio.py); importing the source stays light.
        from .. import audio  # noqa: F401
        from . import synth_gen  # noqa: F401

        def done(spec, fut: Future) -> None:  # noqa: ANN001
            try:
                out = fut.result()
            except Exception as e:  # one bad clip never stops the others
                ledger.failed(spec.id, f"render failed: {type(e).__name__}: {e}")
            else:
                ledger.ok(spec.id, path=out.path, checksum=out.sha256, nbytes=out.nbytes)
            task.advance(1)

        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            run_bounded(pool, lambda spec: pool.submit(_render_one, spec, str(root), cfg.duration, cfg.sample_rate,
                                                       cfg.seed), todo, workers * 2, done, progress)

    def _write_metadata(self, specs, cfg: DownloadConfig, root: Path, ledger: Ledger) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for s in specs:
            writer.writerow([
                s.id, relative_path(s.index, s.id), s.style, s.bpm, s.key, s.mode, ";".join(s.instruments),
                s.mood, s.loudness, s.artist, s.title, ";".join(s.tags), s.caption,
                json.dumps(list(s.alt_captions), ensure_ascii=False), f"{float(cfg.duration):g}",
                cfg.sample_rate, ledger.entries[s.id].checksum,
            ])
        atomic_write_text(root / METADATA, buf.getvalue())

    # ------------------------------------------------------------------ parsing
    def _rows(self, root: Path) -> list[dict[str, str]]:
        header, rows = self._table(root)
        return [dict(zip(header, row)) for row in rows]

    def _table(self, root: Path) -> tuple[list[str], list[list[str]]]:
        """The header and the rows of ``metadata.csv`` (plain lists: a dict per row dominated parsing)."""
        path = root / METADATA
        if not path.exists():
            raise MtxError(f"synth dataset in {root} is incomplete (no {METADATA})",
                           hint="run `mtx download synth --continue` to finish it")
        with open(path, newline="", encoding="utf-8") as f:
            table = list(csv.reader(f))
        header, rows = (table[0], table[1:]) if table else ([], [])
        missing = [c for c in COLUMNS if rows and c not in header]
        if missing:
            raise MtxError(f"{path} lacks column(s): {', '.join(missing)}",
                           hint="regenerate it with `mtx download synth --force`")
        # DictReader semantics: a short row reads "" for its missing cells (None there would fail below)
        width = len(header)
        return header, [row if len(row) >= width else row + [""] * (width - len(row)) for row in rows]

    def records(self, root: Path) -> list[Record]:
        return self.table(root).records()

    def table(self, root: Path) -> RecordTable:
        """The records as columns, parsed in C: Arrow reads the CSV, the numbers and the JSON lists of
        alternative captions (``_json_list_column``) and splits the tag lists. A bad cell is named in a
        one-line error (``_raise_bad_row``)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        root = Path(root).resolve()
        t = self._arrow_table(root)
        n = t.num_rows
        if not n:
            return RecordTable.from_columns({}, 0)

        def column(name: str):
            return t.column(name).combine_chunks()

        def text(name: str):      # "" is no value
            col = column(name)
            return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)

        def items(name: str):     # "a;b" -> ["a", "b"], empty items dropped
            lists = pc.split_pattern(column(name), ";")
            flat, parents = pc.list_flatten(lists), pc.list_parent_indices(lists)
            keep = pc.not_equal(flat, "")
            counts = np.bincount(parents.filter(keep).to_numpy(), minlength=n)
            offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
            return pa.ListArray.from_arrays(offsets, flat.filter(keep))

        def repeated(value: str):
            return pa.array([value], pa.string()).take(pa.array(np.zeros(n, dtype=np.int64)))

        ids = column("id")
        try:
            duration = self._numbers(column("duration"), pa.float64(), float)
            bpm = self._numbers(column("bpm"), pa.int64(), int)
            alts = _json_list_column(column("alt_captions"))
        except ValueError:
            self._raise_bad_row(root, ids.to_pylist(), lambda name: column(name).to_pylist())
            raise
        arrays = {
            "id": ids, "audio_path": pc.binary_join_element_wise(str(root) + "/", column("path"), ""),
            "caption": column("caption"), "duration": duration, "alt_captions": alts, "dataset": repeated(NAME_),
            "artist": text("artist"), "title": text("title"), "tags": items("tags"), "license": repeated("CC0-1.0"),
            "style": column("style"), "bpm": bpm, "key": column("key"),
            "mode": column("mode"), "instruments": items("instruments"), "mood": column("mood"),
            "loudness": column("loudness"),
        }
        return RecordTable(pa.table(arrays))

    @staticmethod
    def _numbers(col, type_, parse):
        """``parse`` of each cell (float or int), by Arrow's cast where it takes every cell."""
        import pyarrow as pa

        try:
            return col.cast(type_)
        except pa.ArrowException:            # a cell Arrow will not cast: Python parses them all
            return pa.array([parse(v) for v in col.to_pylist()], type_)   # Python's own rules (" 5 ", "1_0")

    def _arrow_table(self, root: Path):
        """``metadata.csv`` as a table of strings: Arrow's reader, or the csv module's where Arrow refuses the
        file (a short row, say: the csv module reads its missing cells as "")."""
        import pyarrow as pa
        import pyarrow.csv as pcsv

        path = root / METADATA
        if not path.exists():
            raise MtxError(f"synth dataset in {root} is incomplete (no {METADATA})",
                           hint="run `mtx download synth --continue` to finish it")
        try:
            with open(path, "rb") as f:
                header = next(csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline="")), [])
            parse = pcsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
            convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=False,
                                          quoted_strings_can_be_null=False)
            t = pcsv.read_csv(path, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, UnicodeDecodeError):
            header, rows = self._table(root)
            t = pa.table({c: pa.array([row[i] for row in rows], pa.string()) for i, c in enumerate(header)
                          if c not in header[:i]})
        missing = [c for c in COLUMNS if t.num_rows and c not in t.column_names]
        if missing:
            raise MtxError(f"{path} lacks column(s): {', '.join(missing)}",
                           hint="regenerate it with `mtx download synth --force`")
        return t

    def _raise_bad_row(self, root: Path, ids, column) -> None:
        """The per-row check, for the error message: the first row whose JSON, duration or bpm is bad."""
        for id_, alt, duration, bpm in zip(ids, column("alt_captions"), column("duration"), column("bpm")):
            try:
                json.loads(alt) if alt else None
                float(duration)
                int(bpm)
            except (json.JSONDecodeError, ValueError) as e:
                raise MtxError(f"{root / METADATA}: bad row for {id_!r}: {e}",
                               hint="regenerate it with `mtx download synth --force`") from None

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        root = Path(root)
        if (root / METADATA).exists():
            return [ExpectedFile(id=r["id"], path=root / r["path"], duration=float(r["duration"]),
                                 duration_tolerance=0.05, sample_rate=int(r["sample_rate"]),
                                 checksum=("sha256", r["sha256"]) if r["sha256"] else None)
                    for r in self._rows(root)]
        # Incomplete generation: check what the ledger says was written.
        ledger = Ledger(root)
        return [ExpectedFile(id=e.id, path=root / e.path, checksum=("sha256", e.checksum) if e.checksum else None)
                for e in ledger.entries.values() if e.status == "ok" and e.path]


NAME_ = INFO.name
_SCAN = json.scanner.make_scanner(json.JSONDecoder())   # the C scanner json.loads ends in, without its wrapper


def _json_lists(cells) -> list[list[str]]:
    """``[str(a) for a in json.loads(cell)]`` per cell ("" -> []), scanning each cell with the C scanner
    directly; any cell it does not take whole (whitespace around it, bad JSON) goes through json.loads,
    which raises ``json.JSONDecodeError`` (a ``ValueError``) for bad JSON as before."""
    scan = _SCAN
    out = []
    append = out.append
    for cell in cells:
        if not cell:
            append([])
            continue
        try:
            value, end = scan(cell, 0)
        except StopIteration:
            end = -1
        if end != len(cell):
            value = json.loads(cell)
        append(value if type(value) is list and all(type(a) is str for a in value) else [str(a) for a in value])
    return out


def _json_list_column(cells):
    """``_json_lists`` of a column of cells, as an Arrow list column. Arrow's JSON reader parses them all
    at once where every cell is one JSON array of strings on one line; anything else (a number in the
    list, a line break, bad JSON, ``null``) goes through ``_json_lists``, which keeps Python's rules."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    listed = pa.list_(pa.string())
    if not pc.any(pc.match_substring_regex(cells, "[\\r\\n]")).as_py():
        lines = pc.binary_join_element_wise('{"a":', pc.if_else(pc.equal(cells, ""), "[]", cells), "}\n", "")
        try:
            parsed = pj.read_json(pa.BufferReader(joined_bytes(lines)), parse_options=pj.ParseOptions(
                explicit_schema=pa.schema([("a", listed)]), unexpected_field_behavior="error"))
        except pa.ArrowInvalid:
            parsed = None
        if parsed is not None and parsed.num_rows == len(cells) and not parsed.column("a").null_count:
            return parsed.column("a").combine_chunks()
    return pa.array(_json_lists(cells.to_pylist()), listed)


__all__ = ["SynthSource", "INFO", "relative_path"]
