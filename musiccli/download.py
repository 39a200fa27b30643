"""The download stage: fetch (or generate) one source into its native layout, resumably.

The source module does the fetching and records every item in the ledger; this
module applies the stage contract around it, summarises the ledger into a result,
and selects sources by phase. ``dataset_stats`` reports what is on disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import Interrupted, MtxError
from .progress import NullProgress, Progress
from .sources import get_source, source_names
from .sources.base import DownloadConfig, Source
from .sources.ledger import FAILED, OK, PENDING, Ledger
from .state import TMP_PREFIX, Resume, StateDir, begin_stage

log = logging.getLogger(__name__)

PHASES = {1: "short clips (MusicCaps, MusicBench, FMA large, MTG-Jamendo)", 2: "full songs"}


@dataclass
class DownloadRequest:
    """One `mtx download SOURCE` invocation: the shared DownloadConfig plus how to resume."""

    config: DownloadConfig
    resume: Resume = Resume.FRESH


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

    @classmethod
    def from_dict(cls, d: dict[str, Any], skipped: bool = False) -> "DownloadResult":
        return cls(source=d["source"], root=d["root"], ok=d.get("ok", 0), failed=d.get("failed", 0),
                   pending=d.get("pending", 0), failures=[tuple(f) for f in d.get("failures", [])],
                   bytes=d.get("bytes", 0), seconds=d.get("seconds", 0.0), skipped=skipped)


def resolve_source(name: str) -> Source:
    if name not in source_names():
        raise MtxError(f"unknown source {name!r}; valid sources: {', '.join(source_names())}",
                       hint="run `mtx download --help` for the list")
    return get_source(name)


def dataset_identity(root: Path) -> dict[str, Any]:
    """What identifies the current contents of a dataset dir for later stages.

    The ledger is appended to for every downloaded item, so its size and mtime change
    whenever the dataset does. (Not the directory's mtime: verify writes its results
    into the dataset dir, which must not change the dataset's identity.)
    """
    ledger = Path(root) / Ledger.FILENAME
    try:
        st = ledger.stat()
        return {"ledger_bytes": st.st_size, "ledger_mtime_ns": st.st_mtime_ns}
    except FileNotFoundError:
        return {"ledger": None}


def disk_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith(TMP_PREFIX):
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return total


def run_download(state: StateDir, req: DownloadRequest, progress: Progress | None = None) -> DownloadResult:
    """Download one source. Items that failed are listed in the result (failed > 0), never raised."""
    progress = progress or NullProgress()
    cfg = req.config
    source = resolve_source(cfg.source)
    root = state.dataset_dir(source.info.name)
    source.check(cfg)  # a bad option is one clear line, not a partial record that later reads "interrupted"
    run = begin_stage(state, "download", f"download:{source.info.name}", config=source.identity(cfg),
                      mode=req.resume, discard=lambda: shutil.rmtree(root, ignore_errors=True))
    if run.already_complete:
        return DownloadResult.from_dict(run.record.result, skipped=True)

    root.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(root)
    log.info("downloading %s into %s", source.info.name, root)
    start = time.monotonic()
    try:
        source.download(cfg, root, ledger, progress)
    finally:
        # Counters survive an interrupt, so `--continue` and the stage record agree.
        run.update(**ledger.counts())
    counts = ledger.counts()
    result = DownloadResult(
        source=source.info.name, root=str(root), ok=counts[OK], failed=counts[FAILED], pending=counts[PENDING],
        failures=[(e.id, e.reason or "unknown") for e in ledger.failures()],
        bytes=disk_bytes(root), seconds=round(time.monotonic() - start, 3),
    )
    if result.failed or result.pending:
        # Left partial on purpose: `--continue` retries exactly the items that did not succeed.
        run.update(**counts, failures=len(result.failures))
        log.warning("%s: %d item(s) failed; rerun with --continue to retry them", source.info.name, result.failed)
    else:
        run.complete(result=result)
    return result


def run_downloads(state: StateDir, names: list[str], config: DownloadConfig, resume: Resume,
                  progress: Progress | None = None) -> list[DownloadResult]:
    """Download several sources (``--phase``) one after another with the same options.

    A source that cannot even start (its host is down, a checksum list is missing) is
    reported as failed and the others still run; Ctrl-C stops everything.
    """
    results = []
    for name in names:
        req = DownloadRequest(replace(config, source=name), resume)
        try:
            results.append(run_download(state, req, progress))
        except Interrupted:
            raise
        except MtxError as e:
            if len(names) == 1:
                raise
            log.error("%s: %s", name, e.message)
            results.append(DownloadResult(source=name, root=str(state.dataset_dir(name)), failed=1,
                                          failures=[(name, e.message)]))
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


def dataset_stats(state: StateDir) -> list[DatasetStats]:
    """One row per registered source that has a dataset dir on disk."""
    rows = []
    for name in source_names():
        root = state.dataset_dir(name)
        if not root.is_dir():
            continue
        ledger = Ledger(root)
        counts = ledger.counts()
        rows.append(DatasetStats(source=name, items=len(ledger.entries), ok=counts[OK], failed=counts[FAILED],
                                 gb=round(disk_bytes(root) / 1e9, 6), hours=_hours(get_source(name), root)))
    return rows


def _hours(source: Source, root: Path) -> float | None:
    """Hours of audio from the parsed records, else from the durations verify expects; None if unknown."""
    try:
        return round(sum(r.duration for r in source.records(root)) / 3600, 6)
    except (MtxError, OSError, ValueError, KeyError):
        pass
    try:
        durations = [f.duration for f in source.expected_files(root)]
    except (MtxError, OSError, ValueError, KeyError):
        return None
    known = [d for d in durations if d is not None]
    return round(sum(known) / 3600, 6) if known else None
