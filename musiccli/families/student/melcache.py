"""The student's optional mel cache (``mtx train --objective student --mel-cache``).

Without it, every epoch decodes each track at 48 kHz and recomputes its STFT and mel in the
DataLoader workers. With it, the full-track log-mel of every train and val track (dB,
``10 log10(max(mel, amin))``, *before* the per-crop scaling; float16) is computed once into

    <state>/cache/mel/<manifest>-<front-end hash>.h5

and training takes its random crops in frame space from there, then applies the same per-crop
scaling as :func:`musiccli.encoders.student.scale_db` (ref = crop max, floor at ``-top_db``,
min-max). The hash covers only the front-end fields of
:class:`~musiccli.encoders.student.StudentConfig` (``FRONT_END_FIELDS``), so student runs with
other teachers, crops or towers on the same manifest share one cache.

Cached crops differ from uncached ones on purpose, so a cached run is not bit-identical to an
uncached one (``mel_cache`` is part of a run's result-affecting config):

- a crop starts on a hop boundary (frame ``k`` of the track), not on any sample;
- the frames at a crop's two edges see the real neighbouring audio instead of reflect padding
  (only the track's own two ends are reflect-padded, as ``LogMel`` pads a whole track);
- a track shorter than the crop is tiled in frame space (uncached: its samples are repeated
  before the STFT), so the seams differ by a frame or two.

The cache is a stage (``melcache:<manifest>:<hash>``) under the stage contract: tracks are
committed in chunks of ``chunk_tracks`` as small HDF5 part files (``store.parts_dir``), which
``--continue`` skips; once every part exists they are streamed in order into the final file
(an atomic rename), so an interrupted build resumes to the same file. A track that cannot be
decoded is recorded with its reason (complete-with-failures, like ``mtx embed``); a failure
rate above the default policy fails the stage. A complete cache is reused, never rebuilt.

File layout: ``ids`` [N] (utf-8), ``offsets`` [N + 1] (int64; track ``i`` is rows
``offsets[i]:offsets[i+1]``), ``db`` [frames, n_mels] float16 (frame-major, so a crop is one
contiguous slice), ``failed_ids``/``failed_reasons``; attributes: the front-end fields, the
manifest hash and the format version.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from ... import store as store_mod
from ...audio import decode
from ...errors import MtxError
from ...manifest import Record
from ...progress import NullProgress, Progress
from ...state import (FailureTracker, Resume, StateDir, StageStatus, atomic_path, begin_stage, clean_stale_temps,
                     config_hash, load_stage, stage_function, to_jsonable)

from .frontend import LogMel, crop_offset, scale_db
from .model import StudentConfig

log = logging.getLogger(__name__)

FRONT_END_FIELDS = ("sample_rate", "n_fft", "hop", "n_mels", "fmin", "fmax", "amin")
CACHE_SPLITS = ("train", "val")
CHUNK_TRACKS = 16        # tracks per committed part
BLOCK_FRAMES = 2048      # STFT frames per block: a long track never needs its whole spectrogram in memory
FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")


def front_end(cfg: StudentConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in FRONT_END_FIELDS}


def front_end_hash(cfg: StudentConfig) -> str:
    return config_hash(front_end(cfg))[:12]


def cache_path(state: StateDir, manifest: str, fe_hash: str) -> Path:
    return state.root / "cache" / "mel" / f"{manifest}-{fe_hash}.h5"


def stage_key(manifest: str, fe_hash: str) -> str:
    return f"melcache:{manifest}:{fe_hash}"


def crop_frames(cfg: StudentConfig) -> int:
    """Frames ``LogMel`` yields for one crop (centred STFT): what a cached crop must have too."""
    return 1 + cfg.crop_samples // cfg.hop


# --------------------------------------------------------------------------- computing one track
def track_db(front: LogMel, wave: np.ndarray, block_frames: int = BLOCK_FRAMES) -> np.ndarray:
    """A whole track's dB mel [T, n_mels] (float32), ``T = 1 + len // hop``, as ``LogMel.db`` on the whole
    track computes it (centred, reflect-padded at the track's ends), in blocks of ``block_frames``."""
    c = front.cfg
    pad = c.n_fft // 2
    w = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if w.shape[-1] <= pad:            # as LogMel: reflect padding needs more samples than the pad
        w = F.pad(w, (0, pad + 1 - w.shape[-1]))
    n_frames = 1 + w.shape[-1] // c.hop
    padded = F.pad(w[None, None], (pad, pad), mode="reflect")[0, 0]
    out = np.empty((n_frames, c.n_mels), dtype=np.float32)
    with torch.no_grad():
        for a in range(0, n_frames, block_frames):
            b = min(n_frames, a + block_frames)
            seg = padded[a * c.hop:(b - 1) * c.hop + c.n_fft]
            out[a:b] = front.db(seg[None], center=False)[0].T.numpy()
    return out


class _Tracks(torch.utils.data.Dataset):
    """(position, dB mel [T, M] float16 or None, failure reason or None); runs in DataLoader workers."""

    def __init__(self, items: list[tuple[int, str]], cfg: StudentConfig) -> None:
        self.items, self.cfg = items, cfg
        self._front: LogMel | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        pos, path = self.items[i]
        if self._front is None:
            self._front = LogMel(self.cfg)
        try:
            wave, _ = decode(path, self.cfg.sample_rate)
            return pos, track_db(self._front, wave).astype(np.float16), None
        except MtxError as e:
            return pos, None, e.message
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the stage
            return pos, None, f"{type(e).__name__}: {e}"


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _as_is(item: Any) -> Any:
    """One track per loader item, kept as NumPy (the default would convert it to tensors)."""
    return item


# --------------------------------------------------------------------------- the stage
@dataclass
class MelCacheResult:
    path: Path
    manifest: str
    key: str
    tracks: int
    frames: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def _records(records: list[Record]) -> list[Record]:
    return [r for r in records if r.split in CACHE_SPLITS]


def _write_part(path: Path, chunk: int, ids: list[str], mels: list[np.ndarray], n_mels: int,
                failed: list[tuple[str, str]]) -> None:
    pdir = store_mod.parts_dir(path)
    pdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(pdir / f"part-{chunk:06d}.h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR)
            f.create_dataset("counts", data=np.array([len(m) for m in mels], dtype=np.int64))
            f.create_dataset("db", data=np.concatenate(mels) if mels else np.zeros((0, n_mels), np.float16))
            f.create_dataset("failed_ids", data=np.array([i for i, _ in failed], dtype=object), dtype=STR)
            f.create_dataset("failed_reasons", data=np.array([r for _, r in failed], dtype=object), dtype=STR)


def _assemble(path: Path, n_chunks: int, n_mels: int, attrs: dict[str, Any]) -> tuple[int, int]:
    """Stream the parts, in chunk order, into the final file; (tracks, frames)."""
    parts = store_mod.committed_parts(path)
    missing = [i for i in range(n_chunks) if i not in parts]
    if missing:
        raise MtxError(f"cannot assemble {path.name}: {len(missing)} part(s) missing", hint="rerun with --continue")
    n = frames = 0
    offsets = [0]
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as out:
            ids = out.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR, chunks=(1024,))
            db = out.create_dataset("db", shape=(0, n_mels), maxshape=(None, n_mels), dtype=np.float16,
                                    chunks=(256, n_mels))
            failed_ids: list[str] = []
            failed_why: list[str] = []
            for i in range(n_chunks):
                with h5py.File(parts[i], "r") as part:
                    pids, counts, rows = part["ids"][()], part["counts"][()], part["db"][()]
                    failed_ids += store_mod.h5_strings(part["failed_ids"][()])
                    failed_why += store_mod.h5_strings(part["failed_reasons"][()])
                if len(pids):
                    ids.resize((n + len(pids),))
                    ids[n:] = pids
                    db.resize((frames + len(rows), n_mels))
                    db[frames:] = rows
                    n += len(pids)
                    frames += len(rows)
                    offsets += (offsets[-1] + np.cumsum(counts)).tolist()
            out.create_dataset("offsets", data=np.array(offsets, dtype=np.int64))
            out.create_dataset("failed_ids", data=np.array(failed_ids, dtype=object), dtype=STR)
            out.create_dataset("failed_reasons", data=np.array(failed_why, dtype=object), dtype=STR)
            for k, v in attrs.items():
                out.attrs[k] = v
    return n, frames


@stage_function
def ensure_mel_cache(state: StateDir, manifest: str, manifest_hash: str, records: list[Record],
                     cfg: StudentConfig, mode: Resume = Resume.FRESH, progress: Progress | None = None,
                     num_workers: int = 0, chunk_tracks: int = CHUNK_TRACKS) -> MelCacheResult:
    """Build (or resume, or reuse) the mel cache of ``records``' train and val tracks; see the module docstring.

    ``mode`` follows the stage contract, except that ``--force`` of a training run keeps a complete
    cache (other runs share it; it depends only on the audio and the front end) and only starts
    an interrupted one over.
    """
    progress = progress or NullProgress()
    fe_hash = front_end_hash(cfg)
    path = cache_path(state, manifest, fe_hash)
    key = stage_key(manifest, fe_hash)
    todo_records = _records(records)
    n_chunks = -(-len(todo_records) // chunk_tracks)
    config = {"manifest_hash": manifest_hash, "front_end": front_end(cfg), "splits": list(CACHE_SPLITS),
              "tracks": len(todo_records), "chunk_tracks": chunk_tracks, "dtype": "float16",
              "version": FORMAT_VERSION}
    previous = load_stage(state, key)
    if mode is Resume.FORCE and previous is not None and previous.status in (
            StageStatus.COMPLETE.value, StageStatus.COMPLETE_WITH_FAILURES.value) and path.exists():
        mode = Resume.FRESH

    def discard() -> None:
        path.unlink(missing_ok=True)
        shutil.rmtree(store_mod.parts_dir(path), ignore_errors=True)

    run = begin_stage(state, "melcache", key, config, mode, discard=discard, outputs={"cache": path},
                      redo_changed=True)
    if run.already_complete:
        if path.exists():
            log.info("reusing the mel cache %s", path)
            r = run.record.result
            return MelCacheResult(path=path, manifest=manifest, key=key, tracks=int(r.get("tracks", 0)),
                                  frames=int(r.get("frames", 0)),
                                  failures=[(str(a), str(b)) for a, b in r.get("failures", [])], skipped=True)
        run.close()
        log.info("the mel cache %s is gone; building it again", path)
        run = begin_stage(state, "melcache", key, config, Resume.FORCE, discard=discard, outputs={"cache": path})
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in (path.parent, store_mod.parts_dir(path)):
        clean_stale_temps(folder)
    done = store_mod.committed_parts(path)
    todo = [c for c in range(n_chunks) if c not in done]
    if done:
        log.info("mel cache: %d of %d chunk(s) already committed", n_chunks - len(todo), n_chunks)
    tracker = FailureTracker("melcache")
    for c in done:
        with h5py.File(done[c], "r") as part:
            tracker.ok += len(part["ids"])
            tracker.failed += len(part["failed_ids"])
    items = [(pos, todo_records[pos].audio_path) for c in todo
             for pos in range(c * chunk_tracks, min(len(todo_records), (c + 1) * chunk_tracks))]
    loader = torch.utils.data.DataLoader(_Tracks(items, cfg), batch_size=None, shuffle=False,
                                         num_workers=num_workers, worker_init_fn=_worker_init, collate_fn=_as_is)
    pending: dict[int, list[tuple[int, np.ndarray | None, str | None]]] = {}
    with progress.task("Building mel cache", total=len(todo_records), unit="tracks",
                       completed=len(todo_records) - len(items)) as task:
        for pos, db, why in loader:
            chunk = pos // chunk_tracks
            if db is None:
                tracker.failure(todo_records[pos].id, str(why))
            else:
                tracker.success()
            pending.setdefault(chunk, []).append((pos, db, why))
            end = min(len(todo_records), (chunk + 1) * chunk_tracks)
            if len(pending[chunk]) == end - chunk * chunk_tracks:
                got = sorted(pending.pop(chunk), key=lambda t: t[0])
                _write_part(path, chunk, [todo_records[p].id for p, d, _ in got if d is not None],
                            [d for _, d, _ in got if d is not None], cfg.n_mels,
                            [(todo_records[p].id, str(w)) for p, d, w in got if d is None])
                todo.remove(chunk)
                run.update(chunks_done=n_chunks - len(todo))
                task.advance(end - chunk * chunk_tracks)
                progress.check_interrupt()
    attrs = {**{f"front_end_{k}": v for k, v in front_end(cfg).items()}, "manifest": manifest,
             "manifest_hash": manifest_hash, "version": FORMAT_VERSION, "unit": "dB (10 log10 max(mel, amin))"}
    tracks, frames = _assemble(path, n_chunks, cfg.n_mels, attrs)
    failures = MelCache(path).failures
    store_mod.remove_parts(path)
    result = MelCacheResult(path=path, manifest=manifest, key=key, tracks=tracks, frames=frames,
                            failures=failures, seconds=round(time.perf_counter() - start, 3))
    run.finish(result.to_dict(), ok=tracker.ok, failed=tracker.failed)
    log.info("mel cache %s: %d tracks, %d frames (%.1f MB), %d failed", path.name, tracks, frames,
             path.stat().st_size / 1e6, len(failures))
    return result


# --------------------------------------------------------------------------- reading crops
class MelCache:
    """Read-only access to a finished cache; the HDF5 file is opened lazily (after a DataLoader fork)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            ids = store_mod.h5_strings(f["ids"][()])
            self.offsets = f["offsets"][()]
            self.failures = list(zip(store_mod.h5_strings(f["failed_ids"][()]),
                                     store_mod.h5_strings(f["failed_reasons"][()])))
        self.row = {id_: i for i, id_ in enumerate(ids)}
        self._file: h5py.File | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}   # each DataLoader worker opens its own handle

    def has(self, id_: str) -> bool:
        return id_ in self.row

    def frames(self, id_: str) -> int:
        i = self.row[id_]
        return int(self.offsets[i + 1] - self.offsets[i])

    def db(self, id_: str, start: int = 0, length: int | None = None) -> np.ndarray:
        """dB frames [length, n_mels] (float32) of track ``id_`` from frame ``start``."""
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        i = self.row[id_]
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        stop = b if length is None else min(b, a + start + length)
        return self._file["db"][a + start:stop].astype(np.float32)

    def crop(self, id_: str, n_frames: int, key: int | None, top_db: float) -> torch.Tensor:
        """A scaled crop [1, n_mels, n_frames]: offset ``crop_offset`` in frames from ``key`` (None: centre),
        a short track tiled in frame space, then ``scale_db`` as for uncached crops."""
        total = self.frames(id_)
        if total >= n_frames:
            db = self.db(id_, crop_offset(total, n_frames, key), n_frames)
        else:
            db = np.tile(self.db(id_), (-(-n_frames // max(1, total)), 1))[:n_frames]
        return scale_db(torch.from_numpy(np.ascontiguousarray(db.T))[None], top_db)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
