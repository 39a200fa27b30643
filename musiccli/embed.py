"""The embed stage: run a frozen audio encoder over a manifest into an HDF5 store.

Pipeline
--------
Tracks are taken in manifest order and cut into fixed *chunks* of
``chunk_tracks`` tracks; a chunk is the commit unit. For the chunks this process
owns, a ``DataLoader`` decodes, resamples and windows the audio in worker
processes (failures such as a missing or corrupt file come back as records and
never crash a worker); the main process runs the encoder on large batches of
windows under ``torch.inference_mode()`` and the runtime's autocast, and
aggregates the windows of each track (``encoders.base.aggregate``). When a chunk
is finished it is committed with ``store.write_part`` (rows, failures and, for
``--aggregation none``, the window vectors), then the stage record's counters move
and ``progress.check_interrupt()`` gives Ctrl-C its chance. ``--continue`` skips
chunks whose part file exists. With ``--tags`` (encoders whose spec declares a
tagger, e.g. musicnn) the window tag probabilities are also averaged per track and
committed with the rows; the store gets ``tag_probs`` [N, T] and the result a
:class:`~musiccli.tagging.TagSummary`. Tags asked for a store that is already complete
without them do not re-embed: a tagger needs the audio, so the encoder runs over it
once more, but only the tags are kept, in ``<manifest>.tags.h5`` beside the store
(its own stage record ``embed-tags:<enc>:<manifest>``, committed and resumed in
chunks like the embeddings). A store with tags also satisfies a request without them.

How windows cover the end of a track is the encoder spec's ``tail`` policy: ``flush`` (a last
window flush with the end, short tracks repeat-padded) or ``wrap`` (MuQ-MuLan's clips: the last
window continues from the track's start). An encoder with ``context_samples > 0`` receives, in front of each window, the
samples that precede it in the track (zeros at the start): windows of
``context + window`` samples on the same start grid. An encoder with
``patch_samples > 0`` (musicnn) gets its reference's drop-the-tail grid instead:
windows only at hop starts where a full patch fits, the remainder dropped,
zero-padding where a window runs past the end. Once every part exists, ``store.assemble`` streams
them in chunk order into ``embeddings/<encoder>/<manifest>.h5``; the stage is
marked complete and the parts are removed. Because chunks are fixed by the
manifest and ``chunk_tracks`` (checked against the parts' config), an interrupted and
resumed run produces the same file as an uninterrupted one.

Rows keyed by content; updates and retries
------------------------------------------
A row is keyed by (track id, content hash) (``manifest.content_hash``: the source's hash of the
file, else its size and mtime), and the stage config is the encoder's identity only, not the
manifest's hash. A store complete for another library (``store.attrs["library"]``, the digest of
the manifest's ordered (id, hash) pairs) is *updated*: only the manifest's tracks whose (id, hash)
has no row are embedded, committed in chunks into a workspace in the store's parts folder (an
interrupted update resumes with ``--continue`` like any run), and composed with the kept rows in
manifest order by ``store.compose`` (one atomic rewrite): removed tracks' rows are dropped, kept
rows are copied bit for bit, and the result equals a store embedded from scratch. Tracks that failed
before with the same content are not retried by an update. A caption-only change embeds nothing.

``--retry-failed`` (or ``--continue``, as for ``download``) over a store that is complete with
failures is the same path with the failed tracks included. The record becomes complete when none
fail now; tracks that fail again stay listed (they never make the stage "failed" by the same-error
rule, since a file nobody fixed fails the same way). A store with ``tag_probs`` gets them for the
new tracks too; a tag side file of the previous store is removed.

Sharding
--------
Chunk ``i`` belongs to shard ``i % N == K`` for ``--shard K/N``, and likewise to
rank ``r`` of ``W`` when launched by ``torchrun`` (``WORLD_SIZE > 1``); both
combine (worker ``K * W + r`` of ``N * W``). Every shard and rank writes parts into
the same parts directory next to the output, which also holds the config the parts
were made with (a different config is refused). Assembly happens when every part
is present:

- under ``torchrun``, rank 0 assembles after a barrier;
- with ``--shard``, whichever shard finishes and finds every part present
  assembles (a shard that finishes first reports ``assembled=False``); otherwise a
  later ``mtx embed --continue`` without ``--shard`` finds nothing left to encode
  and assembles.

Each ``--shard K/N`` has its own stage record (key ``embed:<enc>:<manifest>:shard
K/N``); whoever assembles also marks the unsharded stage complete, so a plain
``mtx embed`` afterwards is a no-op.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from . import store
from .audio import decode_windows, frame_with_context
from .encoders import AGGREGATIONS, AudioEncoder, EncoderOptions, aggregate, build_encoder, get_spec
from .errors import MtxError, unknown_choice
from .manifest import Record, content_hash, library_digest, manifest_hash, read_manifest, resolve_manifest
from .progress import NullProgress, Progress
from .tagging import TagSummary, check_tagger, summarize_tags
from .runtime import DistInfo, Runtime, init_distributed, on_main, select_runtime
from .state import (DEFAULT_MAX_FAILURE_RATE, FailurePolicy, FailureTracker, Resume, RetryTracker, StageRecord,
                    StageRun, StageStatus, StateDir, atomic_write_json, begin_stage, clean_stale_temps, config_hash,
                    diff_configs,
                    is_done, load_stage, read_json, stage_function, to_jsonable)

log = logging.getLogger(__name__)

MAX_FAILURES_KEPT = 1000  # failures listed in the result; counts are always exact
PARTS_CONFIG = "config.json"


@dataclass
class EmbedConfig:
    audio_encoder: str = "dsp"
    manifest: str | None = None          # name in the state dir, a path, or None = newest
    model: str | None = None             # hub id / local path; None = encoder default
    layers: list[int] | None = None      # multi-layer encoders only
    aggregation: str | None = None       # None = encoder default; mean | stats | none
    window: float | None = None          # seconds; None = encoder default
    hop: float | None = None
    max_windows: int | None = None       # evenly spaced windows over full songs
    batch_size: int = 64                 # windows per encoder batch
    num_workers: int | None = None       # DataLoader workers; None = 2 on CPU, up to 8 with a GPU
    dtype: str = "float32"               # storage dtype: float32 | float16
    device: str = "auto"
    precision: str = "auto"
    shard: str | None = None             # "K/N"
    chunk_tracks: int = 128              # tracks per committed part
    tags: bool = False                   # also store per-track tag probabilities (encoders with a tagger)
    encoder_options: dict[str, str] = field(default_factory=dict)  # --encoder-option KEY=VALUE
    trust_remote_code: bool = False      # let a model run code from its repo (MERT); never the default
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE  # more failed tracks than this fraction: the stage fails
    resume: Resume = Resume.FRESH


@dataclass
class EmbedResult:
    path: Path
    encoder: str
    manifest: str
    dim: int
    n_ok: int
    n_failed: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    clips_per_s: float = 0.0
    skipped: bool = False
    assembled: bool = True
    shard: str | None = None
    tag_summary: TagSummary | None = None  # with --tags: top tags of the first tracks, top-1 counts
    tags_path: Path | None = None          # the tag side file, when tags were added to a finished store
    tags_only: bool = False                # this run computed tags only (n_ok/failures count tagged tracks)
    retried: int = 0                       # --retry-failed: tracks embedded again (n_ok/failures: the whole store)
    embedded: int = 0                      # tracks the encoder ran on in this run (0 when nothing changed)
    updated: bool = False                  # an existing store was brought up to date with the manifest
    library: str = ""                      # manifest.library_digest of the rows the store was built for

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any], skipped: bool = False) -> "EmbedResult":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        out = cls(**known)
        out.path = Path(out.path)
        out.tags_path = Path(out.tags_path) if out.tags_path else None
        out.failures = [(str(a), str(b)) for a, b in out.failures]
        if isinstance(out.tag_summary, dict):
            out.tag_summary = TagSummary.from_dict(out.tag_summary)
        out.skipped = skipped
        if skipped:
            out.seconds, out.clips_per_s, out.embedded, out.retried, out.updated = 0.0, 0.0, 0, 0, False
        return out


# --------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    name: str
    manifest_name: str
    manifest_path: Path
    records: list[Record]
    encoder: AudioEncoder
    runtime: Runtime
    aggregation: str
    window: float
    hop: float
    dim: int
    path: Path
    config: dict[str, Any]
    chunk_tracks: int
    n_chunks: int
    shard: tuple[int, int] | None
    dist: DistInfo
    tags: bool = False
    hashes: dict[str, str] = field(default_factory=dict)   # record id -> content hash (manifest.content_hash)
    library: str = ""                                       # library_digest of (id, content hash), manifest order
    manifest_hash: str = ""

    @property
    def worker(self) -> tuple[int, int]:
        """(index, count) of this process among all shards x ranks."""
        k, n = self.shard or (0, 1)
        return k * self.dist.world_size + self.dist.rank, n * self.dist.world_size

    def owns(self, chunk: int) -> bool:
        idx, count = self.worker
        return chunk % count == idx

    def chunk_records(self, chunk: int, size: int) -> list[Record]:
        return self.records[chunk * size:(chunk + 1) * size]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise MtxError(f"invalid --shard {text!r}", hint="use K/N with 0 <= K < N, e.g. --shard 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise MtxError(f"invalid --shard {text!r}", hint="use K/N with 0 <= K < N, e.g. --shard 0/4")
    return k, n


def _validate(cfg: EmbedConfig) -> None:
    if cfg.aggregation is not None and cfg.aggregation not in AGGREGATIONS:
        raise unknown_choice("aggregation", cfg.aggregation, AGGREGATIONS)
    if cfg.dtype not in store.DTYPES:
        raise unknown_choice("storage dtype", cfg.dtype, store.DTYPES)
    for name in ("window", "hop"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise MtxError(f"--{name} must be positive, got {value}")
    for name in ("batch_size", "chunk_tracks", "max_windows"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise MtxError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _plan(state: StateDir, cfg: EmbedConfig) -> _Plan:
    _validate(cfg)
    spec = get_spec(cfg.audio_encoder)
    if cfg.tags:
        check_tagger(spec.name)
    shard = parse_shard(cfg.shard)
    manifest_name, manifest_path = resolve_manifest(state, cfg.manifest)
    records = read_manifest(manifest_path)
    runtime = select_runtime(cfg.device, cfg.precision)
    dist = init_distributed(runtime)
    if dist.is_main:
        log.info("using manifest %s (%d records, %s)", manifest_name, len(records), manifest_path)
        log.info("%s", runtime.describe())
    encoder = build_encoder(spec.name, EncoderOptions(model=cfg.model, layers=cfg.layers,
                                                      cache_dir=state.root / "models",
                                                      trust_remote_code=cfg.trust_remote_code,
                                                      extra=dict(cfg.encoder_options)), runtime)
    aggregation = cfg.aggregation or spec.default_aggregation
    # A row is keyed by (id, content hash), not by the manifest: the store is this encoder config's.
    hashes = {r.id: content_hash(r) for r in records}
    window = cfg.window or encoder.default_window()[0]
    hop = cfg.hop or encoder.default_window()[1]
    config = {
        **encoder.identity(),
        "aggregation": aggregation, "window": window, "hop": hop, "max_windows": cfg.max_windows,
        "dtype": cfg.dtype,
        # Only when asked, so that records of runs without tags keep their config.
        **({"tags": True} if cfg.tags else {}),
    }
    return _Plan(
        name=spec.name, manifest_name=manifest_name, manifest_path=manifest_path, records=records,
        encoder=encoder, runtime=runtime, aggregation=aggregation, window=window, hop=hop,
        dim=encoder.dim(aggregation), path=state.embeddings_path(spec.name, manifest_name), config=config,
        chunk_tracks=cfg.chunk_tracks, n_chunks=math.ceil(len(records) / cfg.chunk_tracks), shard=shard,
        dist=dist, tags=cfg.tags, hashes=hashes, library=library_digest((r.id, hashes[r.id]) for r in records),
        manifest_hash=manifest_hash(manifest_path),
    )


def stage_key(encoder: str, manifest: str, shard: tuple[int, int] | None = None) -> str:
    key = f"embed:{encoder}:{manifest}"
    return key if shard is None else f"{key}:shard {shard[0]}/{shard[1]}"


def tags_stage_key(encoder: str, manifest: str) -> str:
    return f"embed-tags:{encoder}:{manifest}"


# --------------------------------------------------------------------------- data loading
@dataclass
class _Batch:
    """Windows of a few consecutive tracks of one chunk (what the DataLoader yields)."""

    chunk: int
    ids: list[str]                 # tracks that decoded, in manifest order
    counts: list[int]              # windows per track in ``ids``
    windows: torch.Tensor          # [sum(counts), samples]
    failed: list[tuple[str, str]]  # (id, reason)
    n_tracks: int

    def pin_memory(self) -> "_Batch":
        self.windows = self.windows.pin_memory()
        return self


class _TrackDataset(torch.utils.data.Dataset):
    """Decode + resample + window one track; runs in DataLoader workers."""

    def __init__(self, items: list[tuple[int, str, str]], sample_rate: int, window: int, hop: int,
                 max_windows: int | None, context: int = 0, patch: int = 0, tail: str = "flush") -> None:
        self.items = items
        self.sample_rate = sample_rate
        self.window = window
        self.hop = hop
        self.max_windows = max_windows
        self.context = context
        self.patch = patch
        self.tail = tail

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, str, np.ndarray | None, str | None]:
        chunk, id_, path = self.items[i]
        try:
            # With --max-windows only the chosen windows are decoded (span reads), never the whole track.
            windows = decode_windows(path, self.sample_rate, self.window, self.hop, self.max_windows, self.context,
                                     self.patch, self.tail)
            return chunk, id_, windows, None
        except MtxError as e:
            return chunk, id_, None, e.message
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the stage
            return chunk, id_, None, f"{type(e).__name__}: {e}"


def _frame(wave: np.ndarray, window: int, hop: int, max_windows: int | None, context: int,
           patch: int = 0, tail: str = "flush") -> np.ndarray:
    """``audio.frame_with_context``: windows on the stage's start grid, each preceded by ``context`` samples."""
    return frame_with_context(wave, window, hop, max_windows, context, patch, tail)


def _collate(items: list[tuple[int, str, np.ndarray | None, str | None]]) -> _Batch:
    ok = [(id_, w) for _, id_, w, _ in items if w is not None]
    windows = (torch.from_numpy(np.concatenate([w for _, w in ok], axis=0)) if ok
               else torch.zeros(0, 0, dtype=torch.float32))
    return _Batch(chunk=items[0][0], ids=[i for i, _ in ok], counts=[len(w) for _, w in ok], windows=windows,
                  failed=[(id_, why) for _, id_, w, why in items if w is None], n_tracks=len(items))


def _worker_init(_: int) -> None:
    # Workers decode and resample; one thread each keeps them from fighting the encoder.
    torch.set_num_threads(1)


def _batches_by_chunk(chunk_of: list[int], tracks_per_batch: int) -> list[list[int]]:
    """Consecutive index lists that never cross a chunk boundary."""
    out: list[list[int]] = []
    for i, c in enumerate(chunk_of):
        if out and chunk_of[out[-1][0]] == c and len(out[-1]) < tracks_per_batch:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _tracks_per_batch(records: list[Record], window: float, hop: float, max_windows: int | None,
                      batch_size: int) -> int:
    """Tracks per loader batch so that one batch holds about ``batch_size`` windows."""
    if not records:
        return 1
    duration = float(np.median([r.duration for r in records]))
    per_track = 1 + max(0, math.ceil((duration - window) / hop))
    if max_windows:
        per_track = min(per_track, max_windows)
    return max(1, min(256, batch_size // max(1, per_track)))


# --------------------------------------------------------------------------- the stage
@stage_function
def run_embed(state: StateDir, cfg: EmbedConfig, progress: Progress | None = None) -> EmbedResult:
    """Embed a manifest. Tracks that fail (missing, corrupt) are listed and the stage completes with
    failures; a systemic error (the same error on the first tracks, a library that cannot load,
    out of memory) or more than ``cfg.max_failure_rate`` failed tracks fail it (raises, exit 1)."""
    progress = progress or NullProgress()
    if get_spec(cfg.audio_encoder).imported_from:
        return _copy_imported(state, cfg, progress)
    policy = FailurePolicy(max_failure_rate=cfg.max_failure_rate)
    plan = _plan(state, cfg)
    key = stage_key(plan.name, plan.manifest_name, plan.shard)
    run: StageRun | None = None

    update = _update_kind(state, key, plan, cfg)
    if update is not None:
        return _update_store(state, update[1], cfg, progress, policy, update[0])

    finished = _finished_store_differing_in_tags(state, key, plan, cfg)
    if finished is not None:
        if plan.tags:
            return _tag_finished_store(state, plan, cfg, progress, policy)
        log.info("%s is complete (with tags, which this run does not ask for); nothing to do", plan.path)
        return replace(EmbedResult.from_dict(finished.result, skipped=True), tag_summary=None)

    def begin() -> bool:
        nonlocal run
        run = begin_stage(state, "embed", key, config=plan.config, mode=cfg.resume,
                          discard=lambda: _discard(plan, cfg), outputs={"store": plan.path}, policy=policy)
        if not run.already_complete:
            _check_existing(plan, cfg)
            _check_parts_config(plan)
        elif plan.shard is None and not plan.dist.enabled:
            _check_complete_store(plan, run.record)
        return run.already_complete

    if on_main(plan.dist, begin):
        if run is not None:
            store.remove_parts(plan.path)  # a crash after completion can leave them behind
            return EmbedResult.from_dict(run.record.result, skipped=True)
        return EmbedResult(path=plan.path, encoder=plan.name, manifest=plan.manifest_name, dim=plan.dim,
                           n_ok=0, n_failed=0, skipped=True)

    start = time.perf_counter()
    if plan.dist.is_main:
        # Temp files of a run that died mid-write (a part, or the store being assembled).
        for folder in (plan.path.parent, store.parts_dir(plan.path)):
            clean_stale_temps(folder)
    done = store.committed_parts(plan.path)
    mine = [c for c in range(plan.n_chunks) if plan.owns(c)]
    todo = [c for c in mine if c not in done]
    if len(todo) < len(mine):
        log.info("%d of %d chunk(s) already committed; embedding the remaining %d",
                 len(mine) - len(todo), len(mine), len(todo))
    tracker = FailureTracker(f"embed ({plan.name})", policy)
    n_ok, failures, n_processed = _encode_chunks(plan, cfg, todo, run, progress, tracker)
    seconds = time.perf_counter() - start

    _barrier(plan.dist)
    result = EmbedResult(path=plan.path, encoder=plan.name, manifest=plan.manifest_name, dim=plan.dim,
                         n_ok=n_ok, n_failed=len(failures), failures=failures[:MAX_FAILURES_KEPT],
                         seconds=round(seconds, 3), clips_per_s=round(n_processed / seconds, 2) if seconds else 0.0,
                         assembled=False, shard=cfg.shard, embedded=n_processed, library=plan.library)
    if not plan.dist.is_main:
        return result
    parts = store.committed_parts(plan.path)
    missing = [c for c in range(plan.n_chunks) if c not in parts]
    if missing:
        log.info("this shard is done; %d chunk(s) of other shards are pending: the last shard to finish, or "
                 "`mtx embed --continue` without --shard, assembles the store", len(missing))
        if run is not None:
            run.check_failures(ok=n_ok, failed=len(failures))
            run.complete(result.to_dict(), failed=len(failures))
        return result
    if run is not None:
        # Judge the whole store before assembling it: a store of mostly failed tracks is never "complete".
        part_failures = sum(len(store.read_part_failures(parts[c])) for c in range(plan.n_chunks))
        run.check_failures(ok=len(plan.records) - part_failures, failed=part_failures)
    result = _assemble(state, plan, cfg, parts, result)
    if run is not None:
        run.complete(result.to_dict(), failed=result.n_failed)
    if plan.shard is not None:
        _mark_unsharded_complete(state, plan, result)
    store.remove_parts(plan.path)
    return result


def _copy_imported(state: StateDir, cfg: EmbedConfig, progress: Progress) -> EmbedResult:
    """An imported space (``audiomuse-clap``): copy the downloaded vectors of the manifest's records.

    No audio is decoded and nothing is recomputed. Records without an imported vector are listed
    as failures. The copy is one unit: the store appears complete or not at all.
    """
    from .encoders.imported import imported_store

    name = cfg.audio_encoder
    source = imported_store(state.root, name)
    if not source.exists():
        raise MtxError(f"no imported {name} vectors ({source})",
                       hint=f"run `mtx download {get_spec(name).imported_from}` first")
    manifest_name, manifest_path = resolve_manifest(state, cfg.manifest)
    records = read_manifest(manifest_path)
    out = state.embeddings_path(name, manifest_name)
    st = source.stat()
    config = {"encoder": name, "encoder_version": "imported", "imported": str(source), "imported_bytes": st.st_size,
              "imported_mtime_ns": st.st_mtime_ns, "dtype": cfg.dtype, "manifest_hash": manifest_hash(manifest_path)}
    run = begin_stage(state, "embed", stage_key(name, manifest_name), config=config, mode=cfg.resume,
                      discard=lambda: store.discard(out), redo_changed=True, outputs={"store": out})
    if run.already_complete and out.exists():
        return EmbedResult.from_dict(run.record.result, skipped=True)
    start = time.perf_counter()
    with store.EmbeddingStore(source) as teacher, progress.task(f"Copying {name}", total=len(records),
                                                                unit="tracks") as task:
        have = [r.id for r in records if teacher.has(r.id)]
        failures = [(r.id, f"no {name} vector in the imported database") for r in records if not teacher.has(r.id)]
        store.discard(out)
        for i in range(0, max(1, len(have)), 4096):
            ids = have[i:i + 4096]
            store.write_part(out, i // 4096, ids, teacher.get(ids) if ids else np.zeros((0, teacher.dim), np.float32),
                             failed=failures if i == 0 else ())
            task.advance(len(ids))
        attrs = {**teacher.attrs, "encoder": name, "manifest_hash": config["manifest_hash"], "manifest": manifest_name,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        n = store.assemble(out, teacher.dim, cfg.dtype, attrs, max(1, math.ceil(len(have) / 4096)))
        dim = teacher.dim
    store.remove_parts(out)
    seconds = time.perf_counter() - start
    log.info("copied %d imported %s vectors (dim %d) to %s; %d record(s) have none", n, name, dim, out, len(failures))
    result = EmbedResult(path=out, encoder=name, manifest=manifest_name, dim=dim, n_ok=n, n_failed=len(failures),
                         failures=failures[:MAX_FAILURES_KEPT], seconds=round(seconds, 3),
                         clips_per_s=round(n / seconds, 2) if seconds else 0.0)
    run.complete(result.to_dict(), failed=len(failures))
    return result


def _encode_chunks(plan: _Plan, cfg: EmbedConfig, todo: list[int], run: StageRun | None,
                   progress: Progress, tracker: FailureTracker) -> tuple[int, list[tuple[str, str]], int]:
    """Encode and commit the given chunks; return (rows written, failures, tracks processed)."""
    items = [(c, r.id, r.audio_path) for c in todo for r in plan.chunk_records(c, cfg.chunk_tracks)]
    n_ok, failures = 0, []
    if not items:
        return 0, [], 0
    spec = plan.encoder.spec
    sr = spec.sample_rate
    dataset = _TrackDataset(items, sr, int(round(plan.window * sr)), int(round(plan.hop * sr)), cfg.max_windows,
                            context=plan.encoder.context_samples, patch=plan.encoder.patch_samples,
                            tail=spec.tail)
    per_batch = _tracks_per_batch(plan.records, plan.window, plan.hop, cfg.max_windows, cfg.batch_size)
    batches = _batches_by_chunk([c for c, _, _ in items], per_batch)
    cuda = plan.runtime.device.type == "cuda"
    workers = cfg.num_workers if cfg.num_workers is not None else (min(8, os.cpu_count() or 2) if cuda else 2)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate, pin_memory=cuda,
        worker_init_fn=_worker_init if workers else None, persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    log.debug("%d track(s) in %d loader batch(es) of <= %d tracks, %d worker(s)", len(items), len(batches),
              per_batch, workers)
    pending = _ChunkBuffer(keep_windows=plan.aggregation == "none", keep_tags=plan.tags)
    committed = len(store.committed_parts(plan.path))
    with progress.task(f"Embedding ({plan.name})", total=len(items), unit="clips") as task:
        for batch in loader:
            if pending.chunk is not None and batch.chunk != pending.chunk:
                n_ok, committed = _commit(plan, pending, failures, n_ok, committed, run, progress)
            pending.chunk = batch.chunk
            # In loader order: a systemic error stops the stage after the first tracks, not after all.
            for id_, why in batch.failed:
                tracker.failure(id_, why)
            tracker.success(len(batch.ids))
            vectors, tags = _encode(plan, batch.windows, cfg.batch_size)
            pending.add(batch, vectors, plan.aggregation, tags)
            task.advance(batch.n_tracks)
        if pending.chunk is not None:
            n_ok, committed = _commit(plan, pending, failures, n_ok, committed, run, progress)
    return n_ok, failures, len(items)


def _encode(plan: _Plan, windows: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """[W, samples] -> ([W, window_dim] float32, [W, T] tag probabilities with --tags else None),
    in encoder batches of ``batch_size`` windows."""
    n_tags = len(plan.encoder.tag_names or ()) if plan.tags else 0
    if len(windows) == 0:
        return (np.zeros((0, plan.encoder.window_dim), dtype=np.float32),
                np.zeros((0, n_tags), dtype=np.float32) if plan.tags else None)
    x = windows.to(plan.runtime.device, non_blocking=True)
    out, tags = [], []
    with torch.inference_mode(), plan.runtime.autocast():
        for s in range(0, len(x), batch_size):
            if plan.tags:
                vec, probs = plan.encoder.embed_windows_with_tags(x[s:s + batch_size])
                tags.append(probs.float().cpu())
            else:
                vec = plan.encoder.embed_windows(x[s:s + batch_size])
            out.append(vec.float().cpu())
    return torch.cat(out).numpy(), torch.cat(tags).numpy() if plan.tags else None


@dataclass
class _ChunkBuffer:
    keep_windows: bool
    keep_tags: bool = False
    chunk: int | None = None
    ids: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    windows: list[np.ndarray] = field(default_factory=list)
    tags: list[np.ndarray] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def add(self, batch: _Batch, window_vectors: np.ndarray, aggregation: str,
            window_tags: np.ndarray | None = None) -> None:
        bounds = np.cumsum([0, *batch.counts])
        for k, id_ in enumerate(batch.ids):
            w = window_vectors[bounds[k]:bounds[k + 1]]
            self.ids.append(id_)
            self.vectors.append(aggregate(w, aggregation))
            if self.keep_windows:
                self.windows.append(w)
            if self.keep_tags and window_tags is not None:
                self.tags.append(window_tags[bounds[k]:bounds[k + 1]].mean(0))  # tag probs: mean over windows
        self.failed.extend(batch.failed)

    def reset(self) -> None:
        self.chunk, self.ids, self.vectors, self.windows, self.tags, self.failed = None, [], [], [], [], []


def _commit(plan: _Plan, buf: _ChunkBuffer, failures: list[tuple[str, str]], n_ok: int, committed: int,
            run: StageRun | None, progress: Progress) -> tuple[int, int]:
    vectors = (np.stack(buf.vectors) if buf.vectors else np.zeros((0, plan.dim), np.float32))
    _check_free_space(plan.path, vectors.nbytes + sum(w.nbytes for w in buf.windows))
    store.write_part(plan.path, buf.chunk, buf.ids, vectors.astype(store.DTYPES[plan.config["dtype"]]),
                     failed=buf.failed, windows=buf.windows if buf.keep_windows else None,
                     tags=_stack_tags(plan, buf) if buf.keep_tags else None,
                     hashes=[plan.hashes[i] for i in buf.ids], failed_hashes=[plan.hashes[i] for i, _ in buf.failed])
    for id_, why in buf.failed:
        log.warning("failed %s: %s", id_, why)
    n_ok += len(buf.ids)
    failures.extend(buf.failed)
    committed += 1
    if run is not None:
        run.update(chunks_committed=committed, chunks_total=plan.n_chunks, last_chunk=buf.chunk)
    buf.reset()
    progress.check_interrupt()
    return n_ok, committed


def _stack_tags(plan: _Plan, buf: _ChunkBuffer) -> np.ndarray:
    n_tags = len(plan.encoder.tag_names or ())
    return np.stack(buf.tags).astype(np.float32) if buf.tags else np.zeros((0, n_tags), np.float32)


# --------------------------------------------------------------------------- assembly
def _store_attrs(plan: _Plan) -> dict[str, Any]:
    return {
        "encoder": plan.name, "encoder_version": plan.encoder.spec.version, "model_id": plan.encoder.model_id,
        "layers": ",".join(str(v) for v in plan.config.get("layers") or []),
        "sample_rate": plan.encoder.spec.sample_rate, "window": plan.window, "hop": plan.hop,
        "max_windows": plan.config["max_windows"] or 0, "aggregation": plan.aggregation, "dim": plan.dim,
        "window_dim": plan.encoder.window_dim, "manifest_hash": plan.manifest_hash, "library": plan.library,
        "encoder_config": config_hash(_comparable(to_jsonable(plan.config))),
        "manifest": plan.manifest_name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # an encoder that can run in several runtimes (the student: onnx / torch) says which one did
        **({"runtime": plan.config["runtime"]} if "runtime" in plan.config else {}),
    }


def _assemble(state: StateDir, plan: _Plan, cfg: EmbedConfig, parts: dict[int, Path],
              result: EmbedResult) -> EmbedResult:
    failures: list[tuple[str, str]] = []
    for c in range(plan.n_chunks):
        failures.extend(store.read_part_failures(parts[c]))
    attrs = _store_attrs(plan)
    n = store.assemble(plan.path, plan.dim, cfg.dtype, attrs, plan.n_chunks,
                       keep_windows=plan.aggregation == "none",
                       tag_names=plan.encoder.tag_names if plan.tags else None)
    log.info("wrote %d embeddings (dim %d) to %s", n, plan.dim, plan.path)
    if plan.tags:
        result.tag_summary = summarize_tags(plan.path, plan.records)
        log.info("stored tag probabilities of %d tracks as `tag_probs` (%d tags)", n,
                 len(plan.encoder.tag_names or ()))
    result.n_ok, result.n_failed = n, len(failures)
    result.failures = failures[:MAX_FAILURES_KEPT]
    result.assembled = True
    return result


def _mark_unsharded_complete(state: StateDir, plan: _Plan, result: EmbedResult) -> None:
    run = begin_stage(state, "embed", stage_key(plan.name, plan.manifest_name), config=plan.config,
                      mode=Resume.FORCE)
    done = EmbedResult(**{**asdict(result), "shard": None})
    run.complete(done.to_dict(), failed=result.n_failed)


# --------------------------------------------------------------------------- tags for a finished store
def _finished_store_differing_in_tags(state: StateDir, key: str, plan: _Plan,
                                      cfg: EmbedConfig) -> StageRecord | None:
    """The complete record of this store when it differs from the request only in having tags."""
    if plan.shard is not None or plan.dist.enabled or cfg.resume is Resume.FORCE or not plan.path.exists():
        return None
    previous = load_stage(state, key)
    if previous is None or not is_done(previous.status):
        return None
    if bool(previous.config.get("tags")) == plan.tags:
        return None
    untagged = {k: v for k, v in to_jsonable(plan.config).items() if k != "tags"}
    if diff_configs({k: v for k, v in previous.config.items() if k != "tags"}, untagged):
        return None
    return previous


def _tag_finished_store(state: StateDir, plan: _Plan, cfg: EmbedConfig, progress: Progress,
                        policy: FailurePolicy) -> EmbedResult:
    """Zero-shot tags for a store that is complete without them, into its side file.

    The tagger needs the audio, so the encoder runs over every stored track again; only the tags
    are kept (committed in chunks through their own stage record), the embeddings are not touched.
    """
    side = store.tags_path(plan.path)
    with store.EmbeddingStore(plan.path) as existing:
        ids, created = list(existing.ids), str(existing.attrs.get("created", ""))
    by_id = {r.id: r for r in plan.records}
    records = [by_id[i] for i in ids if i in by_id]  # store order: the side file's rows follow the store's
    # The store is this stage's input: a re-embedded store (new `created`) means tags start over.
    config = {**plan.config, "tags": True, "store": {"rows": len(ids), "created": created}}
    tplan = replace(plan, records=records, path=side, config=config, tags=True, aggregation="mean",
                    dim=plan.encoder.dim("mean"), n_chunks=math.ceil(len(records) / cfg.chunk_tracks))
    key = tags_stage_key(plan.name, plan.manifest_name)
    previous = load_stage(state, key)
    mode = cfg.resume
    if previous is not None and is_done(previous.status) and not side.is_file():
        mode = Resume.FORCE  # the record outlived its side file: compute the tags again
    run = begin_stage(state, "embed", key, config=config, mode=mode, discard=lambda: store.discard(side),
                      redo_changed=True, outputs={"tags": side}, policy=policy)
    if run.already_complete:
        return EmbedResult.from_dict(run.record.result, skipped=True)
    log.info("%s is complete without tags: computing zero-shot tags only, into %s (embeddings are kept)",
             plan.path, side)
    _check_parts_config(tplan)
    start = time.perf_counter()
    done = store.committed_parts(side)
    todo = [c for c in range(tplan.n_chunks) if c not in done]
    tracker = FailureTracker(f"embed tags ({plan.name})", policy)
    _, _, n_processed = _encode_chunks(tplan, cfg, todo, run, progress, tracker)
    seconds = time.perf_counter() - start
    parts = store.committed_parts(side)
    failures = [f for c in range(tplan.n_chunks) for f in store.read_part_failures(parts[c])]
    run.check_failures(ok=len(records) - len(failures), failed=len(failures))
    attrs = {"encoder": plan.name, "model_id": plan.encoder.model_id, "manifest": plan.manifest_name,
             "manifest_hash": plan.manifest_hash, "store": plan.path.name, "store_created": created,
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    n = store.assemble_tags(side, plan.encoder.tag_names or (), attrs, tplan.n_chunks)
    log.info("stored tag probabilities of %d tracks in %s", n, side)
    result = EmbedResult(path=plan.path, encoder=plan.name, manifest=plan.manifest_name, dim=plan.dim, n_ok=n,
                         n_failed=len(failures), failures=failures[:MAX_FAILURES_KEPT], seconds=round(seconds, 3),
                         clips_per_s=round(n_processed / seconds, 2) if seconds else 0.0,
                         tag_summary=summarize_tags(plan.path, plan.records), tags_path=side, tags_only=True)
    run.complete(result.to_dict(), failed=len(failures))
    store.remove_parts(side)
    return result


# --------------------------------------------------------------------------- updates and --retry-failed
def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded config as today's: stores made before rows were keyed by content named the whole
    manifest's hash; that is the store's input now, not its config."""
    return {k: v for k, v in config.items() if k not in ("manifest_hash", "tags")}


def _update_kind(state: StateDir, key: str, plan: _Plan, cfg: EmbedConfig) -> tuple[str, _Plan] | None:
    """How this run changes a finished store, or None for a normal run.

    ``update``: the store is complete for another library (tracks added, changed, removed, reordered);
    ``retry``: ``--retry-failed``/``--continue`` over a store complete with failures (as for ``download``);
    ``resume``: an update or retry that was interrupted. Each keeps the store's own tags setting, so
    every row of the result has what the others have.
    """
    if cfg.resume is Resume.FORCE or not plan.path.is_file():
        return None
    previous = load_stage(state, stage_key(plan.name, plan.manifest_name))   # the store's own record
    if previous is None:
        return None
    in_flight = (store.parts_dir(store.retry_path(plan.path)) / PARTS_CONFIG).is_file()
    if in_flight and not is_done(previous.status):
        kind = "resume"
    elif not is_done(previous.status) or diff_configs(_comparable(previous.config), _comparable(plan.config)):
        return None
    elif previous.status == StageStatus.COMPLETE_WITH_FAILURES.value and cfg.resume is Resume.CONTINUE:
        kind = "retry"
    elif (library := _store_attr(plan.path, "library")) is not _UNREADABLE and library != plan.library:
        kind = "update"   # (an unreadable store is reported as damaged by the normal path)
    else:
        return None
    if plan.shard is not None or plan.dist.enabled:
        # Every rank reads the same record, so each refuses alike (no rank waits on a barrier alone).
        what = "its failed tracks are retried" if kind == "retry" else "it is updated"
        raise MtxError(f"{plan.path} is assembled; {what} by one process",
                       hint=f"run `mtx embed --audio-encoder {plan.name} --manifest {plan.manifest_name}"
                            f"{' --retry-failed' if kind == 'retry' else ''}` without --shard or torchrun")
    tagged = bool(previous.config.get("tags"))
    if plan.tags and not tagged:
        what = "retry its failed tracks" if kind == "retry" else "update it"
        raise MtxError(f"{plan.path} has no tags: {what} without --tags first",
                       hint="then `mtx embed --tags` adds the tags of every stored track beside it")
    if tagged and not plan.tags:
        check_tagger(plan.name)
        plan = replace(plan, tags=True, config={**plan.config, "tags": True})
    return kind, plan


_UNREADABLE = object()


def _store_attr(path: Path, name: str) -> Any:
    try:
        with h5py.File(path, "r") as f:
            return store._attr(f.attrs.get(name))
    except OSError:
        return _UNREADABLE


@dataclass
class _Update:
    tplan: _Plan                                  # the tracks to embed, committed into the workspace
    token: str                                    # names this update; the composed store carries it
    merged: bool                                  # the store was composed already: only the record is left
    base_rows: dict[tuple[str, str], int]         # (id, content hash) -> row of the store
    base_failed: dict[tuple[str, str], str]       # (id, content hash) -> why it failed
    retry: bool


def _update_plan(plan: _Plan, cfg: EmbedConfig, retry: bool | None) -> _Update:
    """What an update (or retry) embeds: the manifest's tracks whose (id, content hash) has no row.

    Tracks that failed before with the same content are not tried again by an update (the file is
    the same; ``--retry-failed`` tries them). A workspace made for this store and library is resumed
    with its own list of tracks; one whose token the store carries was composed already; any other
    is discarded.
    """
    workspace = store.retry_path(plan.path)
    with store.EmbeddingStore(plan.path) as existing:
        ids = existing.ids
        hashes = existing.hashes
        if hashes is None and existing.attrs.get("manifest_hash") == plan.manifest_hash:
            hashes = [plan.hashes.get(i, "") for i in ids]   # a store from before content hashes, same manifest
        base_rows = {(i, h): k for k, (i, h) in enumerate(zip(ids, hashes or [""] * len(ids))) if h}
        base_failed = {(i, h): why for i, h, why in existing.failures() if h}
        identity = f"{existing.attrs.get('created', '')} ({len(ids)} rows, {existing.attrs.get('library', '')})"
        token_now = str(existing.attrs.get("update_token", ""))
    saved_path = store.parts_dir(workspace) / PARTS_CONFIG
    saved = read_json(saved_path) if saved_path.is_file() else None
    merged = saved is not None and saved.get("token") == token_now
    if saved is not None and not merged and (saved.get("update_of") != identity
                                             or saved.get("library") != plan.library):
        store.discard(workspace)
        saved = None
    if saved is not None:
        todo, token, retry = saved["todo"], saved["token"], bool(saved.get("retry"))
    else:
        retry = bool(retry)
        todo = [r.id for r in plan.records if (r.id, plan.hashes[r.id]) not in base_rows
                and (retry or (r.id, plan.hashes[r.id]) not in base_failed)]
        token = config_hash({"of": identity, "library": plan.library, "todo": todo})
    by_id = {r.id: r for r in plan.records}
    tplan = replace(plan, records=[by_id[i] for i in todo], path=workspace,
                    config={**plan.config, "update_of": identity, "todo": todo, "token": token, "retry": retry},
                    n_chunks=math.ceil(len(todo) / cfg.chunk_tracks))
    if not merged:
        _check_parts_config(tplan)
    return _Update(tplan=tplan, token=token, merged=merged, base_rows=base_rows, base_failed=base_failed, retry=retry)


def _update_store(state: StateDir, plan: _Plan, cfg: EmbedConfig, progress: Progress, policy: FailurePolicy,
                  kind: str) -> EmbedResult:
    """Bring a finished store up to date with the manifest, embedding only what has no row.

    The new tracks are committed in chunks into a workspace in the store's parts folder (resumed by
    ``--continue`` like any run), assembled there, and composed with the store's kept rows in
    manifest order (``store.compose``: one atomic rewrite), so the result equals a store embedded
    from scratch on this manifest; rows of unchanged tracks are copied bit for bit. Rows of tracks
    no longer in the manifest are dropped.
    """
    key = stage_key(plan.name, plan.manifest_name)
    workspace = store.retry_path(plan.path)
    # An update starts a new record over the finished one; its discard only drops a stale workspace
    # (the store is this run's input until the composed one replaces it).
    mode = Resume.FORCE if kind == "update" else cfg.resume
    discard = (lambda: store.discard(workspace)) if kind == "update" else (lambda: _discard(plan, cfg))
    run = begin_stage(state, "embed", key, config=plan.config, mode=mode, discard=discard,
                      outputs={"store": plan.path}, policy=policy)
    if run.already_complete:
        return EmbedResult.from_dict(run.record.result, skipped=True)
    _check_existing(plan, cfg)
    for folder in (plan.path.parent, store.parts_dir(plan.path), store.parts_dir(workspace)):
        clean_stale_temps(folder)
    up = _update_plan(plan, cfg, retry=kind == "retry" if kind != "resume" else None)
    tplan = up.tplan
    n_todo = len(tplan.records)
    if up.retry:
        log.info("retrying the %d failed track(s) of %s; the stored tracks are kept", n_todo, plan.path)
    else:
        log.info("updating %s: %d new or changed track(s) to embed; the other rows are kept", plan.path, n_todo)
    run.update(retrying=n_todo) if up.retry else run.update(embedding=n_todo)
    start = time.perf_counter()
    done = store.committed_parts(workspace)
    todo = [] if up.merged else [c for c in range(tplan.n_chunks) if c not in done]
    tracker = (RetryTracker if up.retry else FailureTracker)(f"embed ({plan.name})", policy)
    _, _, n_processed = _encode_chunks(tplan, cfg, todo, run, progress, tracker)
    seconds = time.perf_counter() - start
    if up.merged:
        with store.EmbeddingStore(plan.path) as st:
            n_ok, failures = len(st), [(i, why) for i, _, why in st.failures()]
    else:
        parts = store.committed_parts(workspace)
        new_failed = {(i, h): why for c in range(tplan.n_chunks) for i, h, why in store.part_failures(parts[c])}
        kept_failed = {k: why for k, why in up.base_failed.items() if not up.retry}
        failed_now = {**kept_failed, **new_failed}
        failures = [(r.id, failed_now[(r.id, plan.hashes[r.id])]) for r in plan.records
                    if (r.id, plan.hashes[r.id]) in failed_now]
        run.check_failures(ok=len(plan.records) - len(failures), failed=len(failures))
        n_ok, kept = _compose_update(plan, tplan, up, failed_now)
        log.info("%s: %d row(s) kept, %d dropped, %d track(s) embedded", plan.path.name, kept,
                 len(up.base_rows) - kept, n_processed)
    side = store.tags_path(plan.path)
    if side.exists():   # the store was rewritten: its tag side file describes the previous rows
        store.discard(side)
        log.info("removed %s: it holds the tags of the previous store; `mtx embed --tags` computes them again", side)
    result = EmbedResult(path=plan.path, encoder=plan.name, manifest=plan.manifest_name, dim=plan.dim, n_ok=n_ok,
                         n_failed=len(failures), failures=failures[:MAX_FAILURES_KEPT], seconds=round(seconds, 3),
                         clips_per_s=round(n_processed / seconds, 2) if seconds else 0.0,
                         retried=n_todo if up.retry else 0, embedded=n_processed, updated=not up.retry,
                         library=plan.library)
    if plan.tags:
        result.tag_summary = summarize_tags(plan.path, plan.records)
    run.complete(result.to_dict(), failed=len(failures))
    store.remove_parts(plan.path)  # the workspace lives in the store's parts folder
    return result


def _compose_update(plan: _Plan, tplan: _Plan, up: _Update,
                    failed_now: dict[tuple[str, str], str]) -> tuple[int, int]:
    """Assemble the newly embedded tracks and compose them with the store's kept rows (manifest order);
    return (rows, rows kept from the store)."""
    sources = [plan.path]
    new_rows: dict[str, int] = {}
    if tplan.records:
        store.assemble(tplan.path, plan.dim, plan.config["dtype"], {}, tplan.n_chunks,
                       keep_windows=plan.aggregation == "none",
                       tag_names=plan.encoder.tag_names if plan.tags else None)
        with store.EmbeddingStore(tplan.path) as added:
            new_rows = {i: k for k, i in enumerate(added.ids)}
        sources.append(tplan.path)
    picks, ids, hashes, failed = [], [], [], []
    for r in plan.records:
        h = plan.hashes[r.id]
        if r.id in new_rows:
            picks.append((1, new_rows[r.id]))
        elif (r.id, h) in up.base_rows:
            picks.append((0, up.base_rows[(r.id, h)]))
        else:
            failed.append((r.id, h, failed_now.get((r.id, h), "not embedded")))
            continue
        ids.append(r.id)
        hashes.append(h)
    attrs = {**_store_attrs(plan), "update_token": up.token}
    n = store.compose(plan.path, sources, picks, ids, hashes, failed, attrs)
    return n, sum(1 for s, _ in picks if s == 0)


# --------------------------------------------------------------------------- safety checks
def _parts_config_path(plan: _Plan) -> Path:
    return store.parts_dir(plan.path) / PARTS_CONFIG


def _parts_config(plan: _Plan) -> dict[str, Any]:
    # The chunking decides which rows a part holds, so it must match too (it does not
    # change the final file, hence it is not part of the stage config).
    return to_jsonable({**plan.config, "chunk_tracks": plan.chunk_tracks, "n_chunks": plan.n_chunks,
                        "library": plan.library})


def _check_parts_config(plan: _Plan) -> None:
    """Parts from any shard must come from the same config; record it on first use."""
    path = _parts_config_path(plan)
    expected = _parts_config(plan)
    if path.exists():
        saved = read_json(path)
        differences = diff_configs(saved, expected)
        changed = {k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k)}
        if differences and changed <= {"library", "n_chunks"} and "todo" not in plan.config:
            # The manifest changed while a first embed was interrupted: chunks now hold other tracks.
            log.warning("the manifest changed since these embedding parts were committed; embedding it from the "
                        "start (a finished store is updated in place instead)")
            for part in store.committed_parts(plan.path).values():
                part.unlink(missing_ok=True)
            atomic_write_json(path, expected)
            return
        if differences:
            raise MtxError("the committed embedding parts were made with a different config: "
                           + "; ".join(differences),
                           hint="rerun with the original options, or use --force to start over")
        return
    atomic_write_json(path, expected)


# Room kept free beyond a part's own size: HDF5 metadata, the stage record, the next temp file.
FREE_MARGIN = 16 << 20


def _check_free_space(path: Path, nbytes: int) -> None:
    """Refuse to write ``nbytes`` (twice over, plus a margin) into ``path``'s folder without the room:
    HDF5 crashes the process when a flush hits a full disk, so the check comes before the write."""
    import shutil as _shutil

    folder = store.parts_dir(path)
    probe = folder if folder.exists() else path.parent
    try:
        free = _shutil.disk_usage(probe).free
    except OSError:
        return
    need = 2 * int(nbytes) + FREE_MARGIN
    if free < need:
        raise MtxError(f"no space left on device at {probe} ({free >> 20} MiB free, about {need >> 20} MiB needed)",
                       hint="free some space, then rerun the same command with --continue: committed work is kept")


def _check_complete_store(plan: _Plan, record: StageRecord) -> None:
    """A store read as complete must open and hold the rows its record says (a truncated copy, a
    disk that filled during a copy); otherwise say so instead of reporting "already complete"."""
    expected = (record.result or {}).get("n_ok")
    try:
        with store.EmbeddingStore(plan.path) as st:
            rows = len(st)
    except MtxError as e:
        raise MtxError(f"the embeddings recorded as complete are damaged: {e.message}",
                       hint=f"rerun `mtx embed --audio-encoder {plan.name} --manifest {plan.manifest_name} "
                            "--force` to rebuild them") from None
    if isinstance(expected, int) and rows != expected:
        raise MtxError(f"the embeddings recorded as complete are damaged: {plan.path} holds {rows} rows, "
                       f"its record says {expected}",
                       hint=f"rerun `mtx embed --audio-encoder {plan.name} --manifest {plan.manifest_name} "
                            "--force` to rebuild them")


def _check_existing(plan: _Plan, cfg: EmbedConfig) -> None:
    """An existing final store that this run would overwrite must at least be the same kind."""
    if cfg.resume is Resume.FORCE or not plan.path.exists():
        return
    try:
        with store.EmbeddingStore(plan.path) as existing:
            enc, dim = existing.encoder, existing.dim
    except MtxError:
        return  # unreadable: it is rebuilt from the parts
    if enc != plan.name or dim != plan.dim:
        raise MtxError(f"{plan.path} holds {enc or '?'} embeddings of dim {dim}, this run makes {plan.name} "
                       f"embeddings of dim {plan.dim}", hint="use --force to replace it")


def _discard(plan: _Plan, cfg: EmbedConfig) -> None:
    """--force: remove the output; a shard removes only its own parts unless the config changed."""
    store.discard(store.tags_path(plan.path))  # tags computed later for the store go with it
    if plan.shard is None or plan.dist.enabled:
        store.discard(plan.path)
        return
    cfg_path = _parts_config_path(plan)
    same = cfg_path.exists() and not diff_configs(read_json(cfg_path), _parts_config(plan))
    if not same:
        store.discard(plan.path)
        return
    plan.path.unlink(missing_ok=True)
    for c, p in store.committed_parts(plan.path).items():
        if plan.owns(c):
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- distributed helpers
def _barrier(dist_info: DistInfo) -> None:
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()




__all__ = ["EmbedConfig", "EmbedResult", "parse_shard", "run_embed", "stage_key", "tags_stage_key"]
