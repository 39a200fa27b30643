"""The verify stage: check every expected file of a source and report problems as data.

Per file: exists, non-empty, decodes fully (streamed in blocks, so a 2-hour file
never sits in memory), sample rate, duration within tolerance, checksum (streamed)
where the source knows one. Problems are counted and listed, never raised; the
caller decides the exit code from ``passed``.

Results are committed in batches to ``<dataset>/verify-<identity>.jsonl`` so an
interrupted verify resumes with ``--continue``. The stage config holds the identity
of the inputs (ledger size + mtime, number of expected files) and the tolerance, so
verifying again after a re-download is a fresh run, while ``--continue`` with other
inputs is refused with the differences listed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audio import AudioError, stream_blocks
from .datasets import dataset_identity, resolve_source
from .errors import MtxError
from .manifest import RealPaths, from_state_dir, state_relative
from .progress import NullProgress, Progress
from .sources.base import ExpectedFile
from .sources.ledger import read_jsonl
from .state import (Resume, StateDir, SystemicError, append_jsonl, begin_stage, config_hash, is_systemic,
                    stage_function)

log = logging.getLogger(__name__)

PROBLEMS = ("missing", "corrupt", "wrong_duration", "wrong_sample_rate", "checksum_mismatch")
BLOCK_FRAMES = 1 << 16
BATCH = 64


@dataclass(frozen=True)
class FrameCountTolerance:
    """How far a decoded stream may fall short of the frame count its header declares."""
    seconds: float = 0.0
    fraction: float = 0.0

    def allowed(self, declared: int, sample_rate: int) -> int:
        return int(max(self.seconds * sample_rate, self.fraction * declared))


# Keyed by libsndfile subtype (the codec). WAV, AIFF and FLAC store an exact sample count, so any
# shortfall there means a cut file. Lossy codecs do not promise one: an Ogg stream's count is the
# last page's granule position, which encoders may set past the last decodable sample (Vorbis
# block overlap, Opus pre-skip), and an MP3's comes from a Xing/LAME header (encoder delay and
# padding) or, without one, an estimate from the bitrate. Those get a small allowance; a file cut
# in half still falls far outside it. Documented in README (verify).
FRAME_COUNT_TOLERANCE: dict[str, FrameCountTolerance] = {
    "VORBIS": FrameCountTolerance(seconds=0.5),
    "OPUS": FrameCountTolerance(seconds=0.5),
    "MPEG_LAYER_I": FrameCountTolerance(seconds=0.5, fraction=0.02),
    "MPEG_LAYER_II": FrameCountTolerance(seconds=0.5, fraction=0.02),
    "MPEG_LAYER_III": FrameCountTolerance(seconds=0.5, fraction=0.02),
}
EXACT = FrameCountTolerance()


def frame_count_tolerance(subtype: str) -> FrameCountTolerance:
    return FRAME_COUNT_TOLERANCE.get(subtype.upper(), EXACT)


@dataclass
class VerifyConfig:
    source: str
    min_success: float = 0.9
    workers: int | None = None               # checker threads; None = min(8, CPU count)
    duration_tolerance: float | None = None  # seconds; None = what each source declares
    resume: Resume = Resume.FRESH


@dataclass
class BadFile:
    id: str
    path: str
    problem: str
    detail: str


@dataclass
class VerifyReport:
    source: str
    total: int
    ok: int = 0
    missing: int = 0
    corrupt: int = 0
    wrong_duration: int = 0
    wrong_sample_rate: int = 0
    checksum_mismatch: int = 0
    success_rate: float = 0.0
    min_success: float = 0.9
    passed: bool = False
    bad: list[BadFile] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False

    def counts(self) -> dict[str, int]:
        return {"ok": self.ok, **{p: getattr(self, p) for p in PROBLEMS}}


# --------------------------------------------------------------------------- one file
def check_file(ef: ExpectedFile, tolerance: float | None = None) -> tuple[str | None, str]:
    """(problem or None, detail) for one expected file. Never raises for bad files."""
    path = Path(ef.path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing", "file does not exist"
    except OSError as e:
        return "missing", f"cannot stat: {e}"
    if size == 0:
        return "corrupt", "empty file (0 bytes)"
    try:
        frames, sr = _decode_stream(path)
    except _DecodeError as e:
        return "corrupt", str(e)
    if frames == 0:
        return "corrupt", "no audio samples"
    if ef.sample_rate is not None and sr != ef.sample_rate:
        return "wrong_sample_rate", f"{sr} Hz, expected {ef.sample_rate} Hz"
    duration = frames / sr
    tol = ef.duration_tolerance if tolerance is None else tolerance
    if ef.duration is not None and abs(duration - ef.duration) > tol:
        return "wrong_duration", f"{duration:.3f} s, expected {ef.duration:.3f} s (± {tol:g} s)"
    if ef.checksum is not None:
        algo, expected = ef.checksum
        try:
            actual = _hash_file(path, algo)
        except ValueError:
            return "checksum_mismatch", f"unknown checksum algorithm {algo!r}"
        if actual.lower() != expected.lower():
            return "checksum_mismatch", f"{algo} {actual[:12]}..., expected {expected[:12]}..."
    return None, ""


class _DecodeError(Exception):
    pass


def _decode_stream(path: Path) -> tuple[int, int]:
    """Decode the whole file block by block; (frames decoded, sample rate).

    libsndfile where it opens the file, FFmpeg (PyAV) for the rest (AAC/ALAC in .m4a, Opus, ...).
    """
    try:
        sr, declared, subtype, blocks = stream_blocks(path, BLOCK_FRAMES)
    except AudioError as e:
        raise _DecodeError(f"not decodable audio: {e.message}") from None
    except Exception as e:  # libsndfile raises several types for non-audio input
        raise _DecodeError(f"not decodable audio: {_first_line(e)}") from None
    frames = 0
    try:
        for block in blocks:
            if not np.isfinite(block).all():
                raise _DecodeError(f"non-finite samples near {frames / sr:.2f} s")
            frames += len(block)
    except _DecodeError:
        raise
    except AudioError as e:
        raise _DecodeError(f"decoding failed after {frames / max(sr, 1):.2f} s: {e.message}") from None
    except Exception as e:
        raise _DecodeError(f"decoding failed after {frames / max(sr, 1):.2f} s: {_first_line(e)}") from None
    # The header promised more frames than the stream holds: the file was cut short, unless the
    # format's header count is only approximate and the shortfall is within its allowance.
    if 0 < declared and frames < declared and declared < (1 << 62):
        allowed = frame_count_tolerance(subtype).allowed(declared, sr)
        if declared - frames > allowed:
            slack = f", {subtype} allows {allowed / sr:.2f} s less" if allowed else ""
            raise _DecodeError(f"truncated: decoded {frames} of {declared} frames "
                               f"({(declared - frames) / sr:.2f} s short{slack})")
        log.debug("%s: decoded %d of %d header frames, within the %s allowance", path, frames, declared, subtype)
    return frames, sr


def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# --------------------------------------------------------------------------- stage
def results_path(root: Path, identity_key: str) -> Path:
    return root / f"verify-{identity_key}.jsonl"


def _load_results(path: Path) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in read_jsonl(path) if "id" in d}   # one JSON call per file (ledger.read_jsonl)


@stage_function
def run_verify(state: StateDir, cfg: VerifyConfig, progress: Progress | None = None) -> VerifyReport:
    progress = progress or NullProgress()
    if not 0.0 <= cfg.min_success <= 1.0:
        raise MtxError(f"--min-success must be between 0 and 1 (got {cfg.min_success})")
    source = resolve_source(cfg.source)
    root = state.dataset_dir(source.info.name)
    if not root.is_dir():
        raise MtxError(f"{source.info.name} is not downloaded ({root} does not exist)",
                       hint=f"run `mtx download {source.info.name}` first")
    expected = source.expected_files(root)
    identity = {**dataset_identity(root), "expected_files": len(expected),
                "duration_tolerance": cfg.duration_tolerance}
    out_path = results_path(root, config_hash(identity))
    run = begin_stage(state, "verify", f"verify:{source.info.name}", config=identity, mode=cfg.resume,
                      discard=lambda: out_path.unlink(missing_ok=True), redo_changed=True)
    if run.already_complete:
        return _report_from_result(run.record.result, cfg.min_success)
    start = time.monotonic()
    carried = None
    if not run.resumed:
        # A fresh run never mixes in verdicts from an older dataset, except for files it can tell are
        # the very same (path, size and mtime): a rescanned library checks only what changed.
        carried = _carry_over(root, out_path, expected, state.root)
        for old in root.glob("verify-*.jsonl"):
            if old != out_path:
                old.unlink(missing_ok=True)
        if carried:
            log.info("%d file(s) are unchanged since the last verify; their verdicts are kept", len(carried))
    # The verdicts just carried over are what the new file holds: not read back from it.
    done = {r["id"]: r for r in carried} if carried is not None else _load_results(out_path)
    todo = [ef for ef in expected if ef.id not in done]
    real = RealPaths()
    log.info("verifying %d %s files (%d already checked)", len(expected), source.info.name, len(done))
    with progress.task(f"Verifying {source.info.name}", total=len(expected), unit="files",
                       completed=len(expected) - len(todo)) as task, \
            ThreadPoolExecutor(max_workers=cfg.workers or min(8, os.cpu_count() or 1)) as pool:
        for i in range(0, len(todo), BATCH):
            batch = todo[i:i + BATCH]
            outcomes = list(pool.map(lambda ef: check_file(ef, cfg.duration_tolerance), batch))
            rows = [{"id": ef.id, "path": state_relative(ef.path, state.root, real), "problem": p, "detail": d,
                     "stat": _stamp(ef.path)} for ef, (p, d) in zip(batch, outcomes)]
            _check_systemic(rows)
            append_jsonl(out_path, rows)  # the batch is committed before progress moves
            done.update({r["id"]: r for r in rows})
            run.update(checked=len(done))
            task.advance(len(batch))
            progress.check_interrupt()

    report = _summarise(source.info.name, expected, done, cfg.min_success)
    report.seconds = round(time.monotonic() - start, 3)
    run.complete(result=asdict(report), failed=report.total - report.ok)
    return report


def _stamp(path: Path | str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _carry_over(root: Path, out_path: Path, expected: list[ExpectedFile],
                state_root: Path) -> list[dict[str, Any]] | None:
    """Copy into ``out_path`` the newest earlier verdicts of files unchanged since (same id, path, size,
    mtime); return them (None: ``out_path`` was there already, and was left alone). A verdict without a
    stamp (an older verify) is not carried."""
    if out_path.exists():
        return None
    earlier = sorted((p for p in root.glob("verify-*.jsonl") if p != out_path), key=lambda p: p.stat().st_mtime)
    if not earlier:
        return []
    old = _load_results(earlier[-1])
    rows = []
    for ef in expected:
        row = old.get(ef.id)
        if row is None or row.get("stat") is None:
            continue
        if from_state_dir(str(row.get("path", "")), state_root) == os.path.normpath(ef.path) \
                and row["stat"] == _stamp(ef.path):
            rows.append(row)
    for i in range(0, len(rows), 4096):
        append_jsonl(out_path, rows[i:i + 4096])
    return rows


def _check_systemic(rows: list[dict[str, Any]]) -> None:
    """A check that fails because a library cannot load says nothing about the files: stop."""
    for row in rows:
        if row["problem"] and is_systemic(row.get("detail") or ""):
            raise SystemicError(f"verify stopped: {row['detail']} ({row['id']})",
                                hint="the audio library cannot load; fix the installation and rerun")


def _summarise(name: str, expected: list[ExpectedFile], done: dict[str, dict[str, Any]],
               min_success: float) -> VerifyReport:
    report = VerifyReport(source=name, total=len(expected), min_success=min_success)
    for ef in expected:
        row = done[ef.id]
        problem = row.get("problem")
        if problem is None:
            report.ok += 1
        else:
            setattr(report, problem, getattr(report, problem) + 1)
            report.bad.append(BadFile(id=ef.id, path=row["path"], problem=problem, detail=row.get("detail", "")))
    _judge(report)
    return report


def _judge(report: VerifyReport) -> None:
    # An empty dataset has nothing verified: that is a failure, not 100 %. The threshold is compared
    # with the exact rate: the rounded one could lift 89.99999 % over a 90 % threshold.
    rate = report.ok / report.total if report.total else 0.0
    report.success_rate = round(rate, 6)
    report.passed = report.total > 0 and rate >= report.min_success


def _report_from_result(d: dict[str, Any], min_success: float) -> VerifyReport:
    known = set(VerifyReport.__dataclass_fields__)
    report = VerifyReport(**{k: v for k, v in d.items() if k in known and k != "bad"})
    report.bad = [BadFile(**b) for b in d.get("bad", [])]
    report.min_success = min_success  # the threshold is the caller's, not part of the stored check
    report.skipped = True
    _judge(report)
    return report
