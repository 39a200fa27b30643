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
import logging
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import MtxError
from ..manifest import Record
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
        path = root / METADATA
        if not path.exists():
            raise MtxError(f"synth dataset in {root} is incomplete (no {METADATA})",
                           hint="run `mtx download synth --continue` to finish it")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        missing = [c for c in COLUMNS if rows and c not in rows[0]]
        if missing:
            raise MtxError(f"{path} lacks column(s): {', '.join(missing)}",
                           hint="regenerate it with `mtx download synth --force`")
        return rows

    def records(self, root: Path) -> list[Record]:
        root = Path(root).resolve()
        base = str(root) + "/"  # plain string joins: Path arithmetic dominated parsing 100k rows
        out = []
        for row in self._rows(root):
            try:
                alt = json.loads(row["alt_captions"]) if row["alt_captions"] else []
                duration = float(row["duration"])
            except (json.JSONDecodeError, ValueError) as e:
                raise MtxError(f"{root / METADATA}: bad row for {row.get('id')!r}: {e}",
                               hint="regenerate it with `mtx download synth --force`") from None
            out.append(Record(
                id=row["id"], audio_path=base + row["path"], caption=row["caption"], duration=duration,
                alt_captions=[str(a) for a in alt], dataset=INFO.name, artist=row["artist"] or None,
                title=row["title"] or None, tags=[t for t in row["tags"].split(";") if t],
                license="CC0-1.0",
                extra={"style": row["style"], "bpm": int(row["bpm"]), "key": row["key"], "mode": row["mode"],
                       "instruments": [i for i in row["instruments"].split(";") if i], "mood": row["mood"],
                       "loudness": row["loudness"]},
            ))
        return out

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


__all__ = ["SynthSource", "INFO", "relative_path"]
