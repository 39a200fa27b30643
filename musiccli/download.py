"""The download stage: fetch (or generate) one source into its native layout, resumably.

The source module does the fetching and records every item in the ledger; this
module applies the stage contract around it, summarises the ledger into a result,
and selects sources by phase. ``dataset_stats`` reports what is on disk, measured from the
files (sizes from ``stat``, hours from the audio headers).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .datasets import disk_bytes, download_key, resolve_source
from .errors import Interrupted, MtxError
from .manifest import RealPaths
from .progress import NullProgress, Progress
from .sources import get_source, source_names
from .sources.base import DownloadConfig, Source
from .sources.ledger import FAILED, OK, PENDING, Ledger
from .state import (DEFAULT_MAX_FAILURE_RATE, FailurePolicy, FailureTracker, Resume, StageStatus, StateDir,
                    SystemicError, begin_stage, diff_configs, is_done, load_stage, stage_function, to_jsonable)

log = logging.getLogger(__name__)

PHASES = {1: "short clips (MusicCaps, MusicBench, FMA large, MTG-Jamendo)", 2: "full songs"}


@dataclass
class DownloadRequest:
    """One `mtx download SOURCE` invocation: the shared DownloadConfig plus how to resume."""

    config: DownloadConfig
    resume: Resume = Resume.FRESH
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE


@dataclass
class DownloadResult:
    source: str
    root: str
    ok: int = 0
    failed: int = 0
    pending: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    skipped: bool = False
    status: str = StageStatus.COMPLETE.value   # complete / complete-with-failures / partial / failed
    changes: dict[str, int] | None = None      # a rescanned library (folder): added, changed, moved, removed, ...

    @classmethod
    def from_dict(cls, d: dict[str, Any], skipped: bool = False) -> "DownloadResult":
        return cls(source=d["source"], root=d["root"], ok=d.get("ok", 0), failed=d.get("failed", 0),
                   pending=d.get("pending", 0), failures=[tuple(f) for f in d.get("failures", [])],
                   bytes=d.get("bytes", 0), seconds=d.get("seconds", 0.0), skipped=skipped,
                   status=d.get("status", StageStatus.COMPLETE.value), changes=d.get("changes"))


def _watch(ledger: Ledger, tracker: FailureTracker) -> None:
    """Feed the items this attempt records to the failure policy; items that already failed before
    (retried by --continue) do not count towards "the same error on the first items"."""
    before = {e.id for e in ledger.failures()}
    ledger.on_ok = lambda _id: tracker.success()

    def failed(id_: str, reason: str) -> None:
        if id_ in before:
            tracker.failed += 1
            return
        tracker.failure(id_, reason)

    ledger.on_failed = failed


@dataclass
class OnDisk:
    """What a dataset holds on disk, measured from its files."""

    bytes: int            # the dataset dir, plus every audio file it points to outside it
    hours: float | None   # summed from the audio files' headers; None when no file is known
    audio_files: int      # expected audio files present on disk
    unreadable: int = 0   # present files whose header could not be read (their declared length is used)


def measure_on_disk(source: Source, root: Path, hours: bool = True, workers: int | None = None) -> OnDisk:
    """Bytes and hours from the files themselves, not from metadata.

    A source's audio may live outside its dataset dir (the folder source leaves your music in
    place), so expected files outside ``root`` are added to its size. Hours come from each file's
    header (frames / rate, no decoding; skipped with ``hours=False``); a file whose header cannot
    be read counts with the duration its source declares, if any.
    """
    root = Path(root)
    total = disk_bytes(root)
    try:
        expected = source.expected_files(root)
    except Exception as e:  # noqa: BLE001 - a half-downloaded source's metadata may not parse; measuring
        # its size must never fail the download that asked for it.
        log.debug("%s: no expected files (%s); size from the dataset dir only", source.info.name, e)
        return OnDisk(bytes=total, hours=None, audio_files=0)
    real = RealPaths()   # each folder resolved once: a resolve() per file dominated rescanning a library
    inside = real(root)
    inside = inside if inside.endswith(os.sep) else inside + os.sep
    present: dict[str, float | None] = {}
    for ef in expected:
        resolved, st = real.with_stat(ef.path)
        if st is None:
            continue  # missing: verify reports it
        size = st.st_size
        if resolved in present:
            continue
        present[resolved] = ef.duration
        if not resolved.startswith(inside):
            total += size
    if not present or not hours:
        return OnDisk(bytes=total, hours=None, audio_files=len(present))
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        lengths = list(pool.map(_header_seconds, present))
    unreadable = sum(1 for x in lengths if x is None)
    seconds = sum(x if x is not None else (declared or 0.0) for x, declared in zip(lengths, present.values()))
    return OnDisk(bytes=total, hours=round(seconds / 3600, 6), audio_files=len(present), unreadable=unreadable)


def _header_seconds(path: Path) -> float | None:
    from .audio import AudioError, audio_info

    try:
        return audio_info(path).duration
    except AudioError:
        return None


@stage_function
def run_download(state: StateDir, req: DownloadRequest, progress: Progress | None = None) -> DownloadResult:
    """Download one source. Items that failed are listed in the result, never raised one by one.

    Outcome: complete; complete-with-failures (nothing pending, some items failed: downstream
    stages use the dataset, ``--continue``/``--retry-failed`` retries the failed items); failed
    (a systemic error, or more than ``max_failure_rate`` of the items failed: raises, exit 1).
    """
    progress = progress or NullProgress()
    cfg = req.config
    source = resolve_source(cfg.source)
    root = state.dataset_dir(source.info.name)
    source.check(cfg)  # a bad option is one clear line, not a partial record that later reads "interrupted"
    policy = FailurePolicy(max_failure_rate=req.max_failure_rate)
    mode, discard = req.resume, lambda: shutil.rmtree(root, ignore_errors=True)
    if getattr(source, "rescans", False) and mode is not Resume.FORCE:
        # A library that changes (your music folder): a finished scan is redone in place, recording
        # what was added, changed, moved and removed; nothing is discarded.
        previous = load_stage(state, download_key(source.info.name))
        if previous is not None and is_done(previous.status) \
                and not diff_configs(previous.config, to_jsonable(source.identity(cfg))):
            mode, discard = Resume.FORCE, (lambda: None)
    run = begin_stage(state, "download", download_key(source.info.name), config=source.identity(cfg),
                      mode=mode, discard=discard, outputs={"dataset": root}, policy=policy)
    if run.already_complete:
        return DownloadResult.from_dict(run.record.result, skipped=True)

    root.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(root)
    _watch(ledger, FailureTracker(f"download {source.info.name}", policy, where=root))
    log.info("downloading %s into %s", source.info.name, root)
    start = time.monotonic()
    try:
        source.download(cfg, root, ledger, progress)
    finally:
        # Counters survive an interrupt, so `--continue` and the stage record agree.
        ledger.on_ok = ledger.on_failed = None
        run.update(**ledger.counts())
    counts = ledger.counts()
    result = DownloadResult(
        source=source.info.name, root=str(root), ok=counts[OK], failed=counts[FAILED], pending=counts[PENDING],
        failures=[(e.id, e.reason or "unknown") for e in ledger.failures()],
        bytes=measure_on_disk(source, root, hours=False).bytes, seconds=round(time.monotonic() - start, 3),
        changes=source.changes(root) if hasattr(source, "changes") else None,
    )
    if result.pending:
        result.status = StageStatus.PARTIAL.value
    elif result.failed:
        result.status = StageStatus.COMPLETE_WITH_FAILURES.value
    run.update(**counts, failures=len(result.failures))
    try:
        result.status = run.finish(asdict(result), ok=result.ok, failed=result.failed, pending=result.pending,
                                   failures=result.failures, listed_in=ledger.path)
    except SystemicError:
        result.status = StageStatus.FAILED.value
        raise
    if result.failed and not result.pending:
        log.warning("%s: %d item(s) failed; `mtx download %s --retry-failed` retries them", source.info.name,
                    result.failed, source.info.name)
    return result


def run_downloads(state: StateDir, names: list[str], config: DownloadConfig, resume: Resume,
                  progress: Progress | None = None,
                  max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE) -> list[DownloadResult]:
    """Download several sources (``--phase``) one after another with the same options.

    A source that cannot even start (its host is down, a checksum list is missing) is
    reported as failed and the others still run; Ctrl-C stops everything.
    """
    results = []
    for name in names:
        req = DownloadRequest(replace(config, source=name), resume, max_failure_rate)
        try:
            results.append(run_download(state, req, progress))
        except Interrupted:
            raise
        except MtxError as e:
            if len(names) == 1:
                raise
            log.error("%s: %s", name, e.message)
            results.append(DownloadResult(source=name, root=str(state.dataset_dir(name)), failed=1,
                                          failures=[(name, e.message)], status=StageStatus.FAILED.value))
    return results


def download_phase(phase: int) -> list[str]:
    """Names of the registered sources that belong to a phase (1: short clips, 2: full songs)."""
    if phase not in PHASES:
        raise MtxError(f"unknown phase {phase}", hint="use --phase 1 (short clips) or --phase 2 (full songs)")
    names = [n for n in source_names() if get_source(n).info.phase == phase]
    if not names:
        raise MtxError(f"no phase {phase} sources are registered ({PHASES[phase]})",
                       hint=f"available sources: {', '.join(source_names())}")
    return names


@dataclass
class DatasetStats:
    source: str
    items: int
    ok: int
    failed: int
    gb: float
    hours: float | None
    audio_files: int = 0
    unreadable: int = 0


def dataset_stats(state: StateDir) -> list[DatasetStats]:
    """One row per registered source that has a dataset dir on disk; sizes and hours from its files."""
    rows = []
    for name in source_names():
        root = state.dataset_dir(name)
        if not root.is_dir():
            continue
        ledger = Ledger(root)
        counts = ledger.counts()
        disk = measure_on_disk(get_source(name), root)
        rows.append(DatasetStats(source=name, items=len(ledger.entries), ok=counts[OK], failed=counts[FAILED],
                                 gb=round(disk.bytes / 1e9, 6), hours=disk.hours, audio_files=disk.audio_files,
                                 unreadable=disk.unreadable))
    return rows
