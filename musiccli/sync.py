"""`mtx sync PATH`: keep a music folder searchable, incrementally, in one command.

Runs scan -> verify -> unify -> embed -> index through each stage's public function, every one of
them incremental: the folder rescan records added, changed, moved and removed files (a moved file
keeps its id); verify checks only files it has not seen unchanged; unify updates the manifest in
place (ids and splits of unchanged tracks stay); embed embeds only tracks whose (id, content hash)
has no row; the search index copies its unchanged rows and maps only the new ones. A second sync
with nothing changed runs no encoder at all.

The library is searched without any training through the encoder's own text tower
(:data:`DEFAULT_ENCODER`, CLAP: a music-text model whose text tower answers "dark metal"
zero-shot). An encoder without a text tower (dsp, mert, ...) is embedded all the same; its index
waits for a trained run, and the result says so.

Like the demo, this module orchestrates stages and imports them where it calls them; the stages
themselves never import each other.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import MtxError
from .manifest import CONTENT_HASH, Record, content_hash, diff_manifests, from_state_dir, read_manifest
from .names import LIBRARY_MANIFEST
from .progress import NullProgress, Progress
from .state import DEFAULT_MAX_FAILURE_RATE, Resume, StateDir, atomic_write_text, read_json

log = logging.getLogger(__name__)

# LAION's music CLAP: trained on music-text pairs, with the text tower `mtx search` needs to answer a
# description with no training, and light enough for a CPU (about 10x cheaper than MuQ-MuLan-large).
DEFAULT_ENCODER = "clap"
DEFAULT_MANIFEST = LIBRARY_MANIFEST
SOURCE = "folder"
COUNTS = ("added", "changed", "moved", "removed", "unchanged", "failed", "embedded")


@dataclass
class SyncConfig:
    path: Path
    audio_encoder: str = DEFAULT_ENCODER
    manifest: str = DEFAULT_MANIFEST
    model: str | None = None             # the encoder's checkpoint (None: its default)
    device: str = "auto"
    batch_size: int = 64
    num_workers: int | None = None
    chunk_tracks: int = 128
    index: bool = True                   # also bring the search index up to date (encoders with a text tower)
    verify: bool = True
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE


@dataclass
class SyncResult:
    path: str
    encoder: str
    manifest: str
    added: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0          # files that are not readable audio, plus tracks the encoder could not embed
    embedded: int = 0        # tracks the encoder ran on in this sync (0: nothing changed)
    tracks: int = 0          # tracks in the library now
    store: str = ""
    index: str | None = None
    index_note: str | None = None        # why there is no index (an encoder without a text tower)
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)   # seconds per stage
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def nothing_changed(self) -> bool:
        return not (self.added or self.changed or self.moved or self.removed) and self.embedded == 0

    def counts(self) -> dict[str, int]:
        """The summary `mtx sync --json` prints: integer fields, named exactly so."""
        return {k: int(getattr(self, k)) for k in COUNTS}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "nothing_changed": self.nothing_changed}


def run_sync(state: StateDir, cfg: SyncConfig, progress: Progress | None = None) -> SyncResult:
    """Scan the folder, then update the manifest, the embeddings and the search index in place."""
    from .encoders import get_spec
    from .state import check_name

    progress = progress or NullProgress()
    spec = get_spec(cfg.audio_encoder)   # an unknown encoder fails before any work, listing the choices
    check_name("manifest", cfg.manifest)
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise MtxError(f"{cfg.path} is not a folder" if path.exists() else f"{cfg.path}: no such folder",
                       hint="pass the folder that holds your music, e.g. mtx sync ~/Music")
    path = path.resolve()
    start = time.perf_counter()
    result = SyncResult(path=str(path), encoder=spec.name, manifest=cfg.manifest)

    def timed(stage: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        result.stages[stage] = round(time.perf_counter() - t0, 3)
        return out

    scan = timed("scan", _scan, state, path, cfg, progress)
    if cfg.verify:
        timed("verify", _verify, state, progress)
    timed("unify", _unify, state, cfg, progress)
    # What changed since the last sync that finished (so a sync that was interrupted is still counted).
    current = read_manifest(state.manifest_path(cfg.manifest))
    before = _last_synced(state, cfg.manifest)
    changes = diff_manifests(before, current).to_dict() if before is not None else {"added": len(current)}
    for key in ("added", "changed", "moved", "removed", "unchanged"):
        setattr(result, key, int(changes.get(key, 0)))
    embedded = timed("embed", _embed, state, cfg, progress)
    result.embedded, result.store, result.tracks = embedded.embedded, str(embedded.path), embedded.n_ok
    result.failed = int(scan.failed) + int(embedded.n_failed)
    result.failures = [*scan.failures, *embedded.failures][:1000]
    if cfg.index:
        timed("index", _index, state, cfg, result, progress)
    _remember(state, cfg.manifest, current)
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def _snapshot_path(state: StateDir, manifest: str) -> Path:
    # not beside the manifests: every *.json there is one (the dot does not hide it from a glob)
    return state.manifests_dir / ".cache" / f"sync-{manifest}.json"


def _last_synced(state: StateDir, manifest: str) -> list[Record] | None:
    """The library as the last finished sync left it: id -> (content hash, audio path)."""
    path = _snapshot_path(state, manifest)
    if not path.is_file():
        return None
    try:
        data = read_json(path)
        return [Record(id=i, audio_path=from_state_dir(p, state.root), caption="", duration=1.0,
                       extra={CONTENT_HASH: h}) for i, (h, p) in data["tracks"].items()]
    except (MtxError, KeyError, TypeError, ValueError):
        log.warning("%s is unreadable; this sync counts every track as added", path)
        return None


def _remember(state: StateDir, manifest: str, records: list[Record]) -> None:
    # Paths as read_manifest gives them (absolute, normalised): inside the state dir they are stored
    # relative to it, by their spelling alone (from_state_dir is the inverse), without a stat per file.
    # Plain strings throughout, so json encodes them directly (no to_jsonable walk over 20,000 entries).
    inside = str(state.root).rstrip(os.sep) + os.sep
    tracks = {r.id: [content_hash(r), r.audio_path[len(inside):] if r.audio_path.startswith(inside) else r.audio_path]
              for r in records}
    atomic_write_text(_snapshot_path(state, manifest), json.dumps({"tracks": tracks}, ensure_ascii=False) + "\n")


def _scan(state: StateDir, path: Path, cfg: SyncConfig, progress: Progress):
    from .download import DownloadRequest, run_download
    from .sources.base import DownloadConfig

    # --continue: resumes an interrupted scan, and a finished one is rescanned in place.
    return run_download(state, DownloadRequest(DownloadConfig(source=SOURCE, path=path), Resume.CONTINUE,
                                               cfg.max_failure_rate), progress)


def _verify(state: StateDir, progress: Progress) -> None:
    from .verify import VerifyConfig, run_verify

    report = run_verify(state, VerifyConfig(source=SOURCE, resume=_resume(state, f"verify:{SOURCE}")), progress)
    if report.total - report.ok:
        log.warning("verify: %d file(s) are damaged and left out of the library", report.total - report.ok)


def _unify(state: StateDir, cfg: SyncConfig, progress: Progress):
    from .unify import UnifyConfig, run_unify

    return run_unify(state, UnifyConfig(datasets=[SOURCE], name=cfg.manifest,
                                        resume=_resume(state, f"unify:{cfg.manifest}")), progress)


def _embed(state: StateDir, cfg: SyncConfig, progress: Progress):
    from .embed import EmbedConfig, run_embed

    ecfg = EmbedConfig(audio_encoder=cfg.audio_encoder, manifest=cfg.manifest, model=cfg.model, device=cfg.device,
                       batch_size=cfg.batch_size, num_workers=cfg.num_workers, chunk_tracks=cfg.chunk_tracks,
                       max_failure_rate=cfg.max_failure_rate,
                       resume=_resume(state, f"embed:{cfg.audio_encoder}:{cfg.manifest}"))
    return run_embed(state, ecfg, progress)


def _resume(state: StateDir, key: str) -> Resume:
    """Continue a stage that an earlier sync left interrupted (Ctrl-C, kill, a full disk); otherwise a
    normal run, which every stage makes incremental."""
    from .state import StageStatus, load_stage

    record = load_stage(state, key)
    if record is not None and record.status in (StageStatus.RUNNING.value, StageStatus.PARTIAL.value):
        return Resume.CONTINUE
    return Resume.FRESH


def _index(state: StateDir, cfg: SyncConfig, result: SyncResult, progress: Progress) -> None:
    from .encoders.native_text import TEXT_TOWERS

    if cfg.audio_encoder not in TEXT_TOWERS:
        result.index_note = (f"{cfg.audio_encoder} has no text tower: train a run on this library "
                             f"(`mtx train --audio-encoder {cfg.audio_encoder}`) to search it, or sync with "
                             f"--audio-encoder {DEFAULT_ENCODER}")
        return
    from .runtime import select_runtime
    from .search import library_store, native_query_model, open_index

    store_path = library_store(state, cfg.audio_encoder, cfg.manifest)[2]
    text = native_query_model(cfg.audio_encoder, store_path, None, select_runtime(cfg.device, "fp32").device)
    # --continue finishes a first index build that an earlier sync left interrupted (an existing index
    # is updated beside itself and swapped in, so there is nothing to resume then).
    index, _ = open_index(state, text, manifest=cfg.manifest, progress=progress, resume=Resume.CONTINUE)
    result.index = index.name


__all__ = ["COUNTS", "DEFAULT_ENCODER", "SyncConfig", "SyncResult", "run_sync"]
