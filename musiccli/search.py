"""Text search over a music library: an index of a run's retrieval-space audio vectors.

An index lives in ``<state>/index/<name>/``::

    vectors.npy   [N, D] float32 unit rows: model.audio_for_retrieval(store rows)
    ids.json      the N track ids, in row order
    items.json    display metadata per id (title, artist, dataset, tags, audio_path, duration)
    meta.json     run, encoder, manifest, store path + identity, weights identity, dim, count, created

``meta.json`` is written last and marks the index complete. The vectors depend on
the run (its audio statistics) and on the store, so an index whose recorded
identities no longer match is rebuilt automatically.

A query is one matrix-vector product over the in-RAM matrix plus ``argpartition``:
the ranking code is :func:`rank_top_k`, which the latency benchmark times directly.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MtxError, unknown_choice
from .evaluate import RunInfo, resolve_run, store_identity, weights_identity
from .progress import NullProgress, Progress
from .state import (Resume, StateDir, atomic_path, atomic_write_json, atomic_write_text, begin_stage, check_name,
                    read_json)

log = logging.getLogger(__name__)

CHUNK = 8192


@dataclass
class Index:
    name: str
    dir: Path
    meta: dict[str, Any]
    ids: list[str]
    items: dict[str, dict[str, Any]]
    vectors: np.ndarray            # [N, D] float32, C-contiguous, in RAM

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SearchConfig:
    query: str
    run: str | None = None
    index: str | None = None
    k: int = 10
    device: str = "cpu"
    rebuild: bool = False          # rebuild the index even if it is current (--force)
    text_model: str = "run"        # "run": the run's trained text embedder
    resume: Resume = Resume.FRESH  # for the index build: --continue finishes an interrupted one


@dataclass
class SearchResult:
    query: str
    run: str
    index: str
    hits: list[dict[str, Any]] = field(default_factory=list)
    rebuilt: bool = False
    search_ms: float = 0.0


# --------------------------------------------------------------------------- ranking
def rank_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best rows by dot product, best first.

    One BLAS matrix-vector product, then ``argpartition`` (O(N)) and a sort of only
    the ``k`` survivors: no full sort of N scores.
    """
    scores = vectors @ query
    n = scores.shape[0]
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    top = np.argpartition(scores, n - k)[n - k:] if k < n else np.arange(n)
    order = top[np.argsort(-scores[top], kind="stable")]
    return order, scores[order]


# --------------------------------------------------------------------------- identity / discovery
def _identity(info: RunInfo, checkpoint: str, store_path: Path, manifest_path: Path | None) -> dict[str, Any]:
    """What the index was computed from: run weights (audio stats), store rows, and display metadata."""
    ident = {"weights": weights_identity(info.dir / checkpoint), "store": store_identity(store_path)}
    if manifest_path is not None and manifest_path.exists():
        ident["manifest"] = store_identity(manifest_path)
    return ident


def default_library_manifest(state: StateDir, encoder: str) -> str:
    """The newest manifest that has embeddings for ``encoder``."""
    for name in state.list_manifests():
        if state.embeddings_path(encoder, name).exists():
            return name
    raise MtxError(f"no manifest has {encoder} embeddings",
                   hint=f"run `mtx embed --audio-encoder {encoder} --manifest NAME` on your library first")


def list_indexes(state: StateDir) -> list[str]:
    base = state.root / "index"
    return sorted(d.name for d in base.glob("*") if (d / "meta.json").exists() and not d.name.startswith("."))


def load_index(state: StateDir, name: str) -> Index:
    d = state.index_dir(name)
    if not (d / "meta.json").exists():
        raise unknown_choice("index", name, list_indexes(state) or ["(none yet: `mtx search` builds one)"])
    meta = read_json(d / "meta.json")
    ids = read_json(d / "ids.json")
    items = read_json(d / "items.json")
    # Memory-map to validate shape/dtype cheaply, then copy into RAM once: queries then touch
    # only memory that is already resident.
    mm = np.load(d / "vectors.npy", mmap_mode="r")
    if mm.shape != (len(ids), int(meta["dim"])):
        raise MtxError(f"index {name!r} is damaged ({mm.shape} vectors for {len(ids)} ids)",
                       hint="rebuild it with `mtx search --force`")
    vectors = np.ascontiguousarray(np.array(mm, dtype=np.float32))
    del mm
    return Index(name=name, dir=d, meta=meta, ids=ids, items=items, vectors=vectors)


# --------------------------------------------------------------------------- building
def _item(record, id_: str) -> dict[str, Any]:
    if record is None:
        return {"title": None, "artist": None, "dataset": None, "tags": [], "audio_path": None, "duration": None}
    return {"title": record.title, "artist": record.artist, "dataset": record.dataset, "tags": list(record.tags),
            "audio_path": record.audio_path, "duration": record.duration}


def build_index(state: StateDir, run: str | None = None, manifest: str | None = None, name: str | None = None,
                checkpoint: str | None = None, model=None, progress: Progress | None = None) -> Index:
    """Index a library manifest's store with a run's audio statistics; returns the loaded index."""
    from .encoders.text import TextEmbedder
    from .manifest import read_manifest, resolve_manifest
    from .store import EmbeddingStore

    progress = progress or NullProgress()
    info = resolve_run(state, run)
    checkpoint = checkpoint or info.default_checkpoint()
    ckpt = info.checkpoint_dir(checkpoint)
    encoder = info.audio_encoder
    mname = manifest or default_library_manifest(state, encoder)
    mname, mpath = resolve_manifest(state, mname)
    store_path = state.embeddings_path(encoder, mname)
    if not store_path.exists():
        raise MtxError(f"no {encoder} embeddings for manifest {mname!r}",
                       hint=f"run `mtx embed --audio-encoder {encoder} --manifest {mname}` first")
    name = check_name("index", name or f"{info.name}--{mname}")
    if model is None:
        model = TextEmbedder.from_pretrained(ckpt)
    records = {r.id: r for r in read_manifest(mpath)} if mpath.exists() else {}
    d = state.index_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").unlink(missing_ok=True)   # the index is incomplete from here until meta.json is back
    log.info("building index %s from %s (%s embeddings)", name, mname, encoder)
    with EmbeddingStore(store_path) as store:
        if store.dim != model.config.out_dim:
            raise MtxError(f"store {store_path.name} has dim {store.dim}, the run predicts {model.config.out_dim}",
                           hint="index a library embedded with the run's audio encoder")
        n, dim = len(store), store.dim
        # Streamed chunk by chunk into a .npy memmap, so the library never needs to fit twice in RAM.
        with atomic_path(d / "vectors.npy") as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
            with progress.task("Indexing", total=n, unit="tracks") as task:
                for start, chunk in store.iter_chunks(CHUNK):
                    progress.check_interrupt()
                    mm[start:start + len(chunk)] = model.audio_for_retrieval(chunk)
                    task.advance(len(chunk))
            mm.flush()
            del mm
        ids = list(store.ids)
    atomic_write_text(d / "ids.json", json.dumps(ids))
    atomic_write_text(d / "items.json", json.dumps({i: _item(records.get(i), i) for i in ids}, ensure_ascii=False))
    atomic_write_json(d / "meta.json", {
        "name": name, "run": info.name, "checkpoint": checkpoint, "encoder": encoder, "manifest": mname,
        "manifest_path": str(mpath), "store": str(store_path),
        "identity": _identity(info, checkpoint, store_path, mpath), "dim": dim, "count": n,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return load_index(state, name)


def _stale_reason(state: StateDir, info: RunInfo, meta: dict[str, Any]) -> str | None:
    store_path = Path(meta.get("store", ""))
    if not store_path.exists():
        return "its embedding store is gone"
    ckpt = meta.get("checkpoint") or info.default_checkpoint()
    if not (info.dir / ckpt / "model.safetensors").exists():
        return f"the run's {ckpt} checkpoint is gone"
    mpath = Path(meta["manifest_path"]) if meta.get("manifest_path") else None
    current = _identity(info, ckpt, store_path, mpath)
    old = meta.get("identity", {})
    if old.get("weights") != current["weights"]:
        return "the run's weights changed"
    if old.get("store") != current["store"]:
        return "the embedding store changed"
    if old.get("manifest") != current.get("manifest"):
        return "the library manifest changed"
    return None


def open_index(state: StateDir, info: RunInfo, index: str | None, rebuild: bool, model=None,
               progress: Progress | None = None, resume: Resume = Resume.FRESH) -> tuple[Index, bool]:
    """The requested (or default) index for a run, rebuilt when asked or stale. Returns (index, rebuilt)."""
    if index is not None:
        d = state.index_dir(index)
        if not (d / "meta.json").exists():
            raise unknown_choice("index", index, list_indexes(state) or ["(none yet: `mtx search` builds one)"])
        meta = read_json(d / "meta.json")
        if meta.get("run") != info.name:
            raise MtxError(f"index {index!r} was built for run {meta.get('run')!r}, not {info.name!r}",
                           hint=f"pass --run {meta.get('run')} or pick another index")
        name, manifest = index, meta.get("manifest")
    else:
        manifest = default_library_manifest(state, info.audio_encoder)
        name = f"{info.name}--{manifest}"
        d = state.index_dir(name)
        meta = read_json(d / "meta.json") if (d / "meta.json").exists() else None
    if meta is not None and not rebuild:
        reason = _stale_reason(state, info, meta)
        if reason is None:
            return load_index(state, name), False
        log.info("index %s is out of date (%s); rebuilding", name, reason)
    checkpoint = meta.get("checkpoint") if meta else None
    if checkpoint and not (info.dir / checkpoint / "model.safetensors").exists():
        checkpoint = None
    # Building the index is this stage's unit of work. A stale or explicitly rebuilt index starts over;
    # a build that was interrupted before meta.json landed must be resumed (--continue) or forced.
    mode = Resume.FORCE if (meta is not None or rebuild) else resume
    stage = begin_stage(state, "search", f"index:{name}", {"run": info.name, "manifest": manifest,
                                                             "checkpoint": checkpoint}, mode)
    built = build_index(state, info.name, manifest, name, checkpoint=checkpoint, model=model, progress=progress)
    stage.complete({"index": name, "count": len(built)})
    return built, True


# --------------------------------------------------------------------------- querying
def search(state: StateDir, cfg: SearchConfig, progress: Progress | None = None) -> SearchResult:
    from .encoders.text import TextEmbedder
    from .runtime import select_runtime

    if cfg.text_model != "run":
        raise unknown_choice("text model", cfg.text_model, ["run"])
    if cfg.k < 1:
        raise MtxError(f"-k must be at least 1 (got {cfg.k})")
    if not cfg.query.strip():
        raise MtxError("empty query", hint='pass a description, e.g. mtx search "dark ambient drone"')
    run = cfg.run
    if run is None and cfg.index is not None:
        # An index belongs to one run: searching it with that run needs no --run.
        meta_path = state.index_dir(cfg.index) / "meta.json"
        if not meta_path.exists():
            raise unknown_choice("index", cfg.index, list_indexes(state) or ["(none yet: `mtx search` builds one)"])
        run = read_json(meta_path).get("run")
    info = resolve_run(state, run, announce=False)   # the caller reports "using run X, index Y"
    runtime = select_runtime(cfg.device, "fp32")
    model = TextEmbedder.from_pretrained(info.checkpoint_dir(info.default_checkpoint()), device=runtime.device)
    index, rebuilt = open_index(state, info, cfg.index, cfg.rebuild, model=model, progress=progress,
                                resume=cfg.resume)
    if index.meta.get("checkpoint") not in (None, info.default_checkpoint()):
        model = TextEmbedder.from_pretrained(info.checkpoint_dir(index.meta["checkpoint"]), device=runtime.device)
    log.debug("using run %s, index %s (%d tracks)", info.name, index.name, len(index))
    q = model.encode([cfg.query])[0].astype(np.float32)
    t0 = time.perf_counter()   # the ranking alone; encoding cost depends on the text model
    rows, scores = rank_top_k(index.vectors, q, cfg.k)
    ms = (time.perf_counter() - t0) * 1000.0
    hits = []
    for rank, (row, score) in enumerate(zip(rows.tolist(), scores.tolist()), start=1):
        id_ = index.ids[row]
        item = index.items.get(id_, {})
        hits.append({"rank": rank, "score": float(score), "id": id_, "title": item.get("title"),
                     "artist": item.get("artist"), "dataset": item.get("dataset"), "tags": item.get("tags") or [],
                     "audio_path": item.get("audio_path"), "duration": item.get("duration")})
    return SearchResult(query=cfg.query, run=info.name, index=index.name, hits=hits, rebuilt=rebuilt, search_ms=ms)


def write_m3u(path: Path, hits: list[dict[str, Any]]) -> Path:
    """Extended M3U playlist of the hits (``#EXTINF:seconds,artist - title``), written atomically."""
    lines = ["#EXTM3U"]
    for h in hits:
        if not h.get("audio_path"):
            continue
        dur = h.get("duration")
        secs = int(round(float(dur))) if dur is not None else -1
        label = " - ".join(x for x in (h.get("artist"), h.get("title")) if x) or h["id"]
        lines += [f"#EXTINF:{secs},{label}", str(h["audio_path"])]
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
