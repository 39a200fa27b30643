"""Text search over a music library: an index of retrieval-space audio vectors.

Queries are encoded by a *text model*, one of two kinds with the same interface
(``encode`` + ``audio_for_retrieval``), wrapped in :class:`QueryModel`:

- ``run``: a trained run's text embedder (its audio statistics map the store rows
  into the retrieval space);
- ``native``: the audio encoder's own zero-shot text tower (``clap``, ``muq``), which
  needs no trained run.

An index lives in ``<state>/index/<name>/`` (default name ``<run>--<manifest>`` or
``native-<encoder>--<manifest>``, plus ``--ann`` / ``--milvus`` for those backends)::

    vectors.npy   [N, D] float32 unit rows: model.audio_for_retrieval(store rows) (exact copy, memory-mapped)
    ids.json      the N track ids, in row order
    items.json    display metadata per id (title, artist, dataset, tags, audio_path, duration)
    ...           the backend's own files (index_backends/: vectors.f16.npy, ann.faiss, milvus.db)
    meta.json     text model, run / model id, encoder, manifest, store path + identity, dim, count,
                  backend, created

``meta.json`` is written last and marks the index complete. The vectors depend on
the text model (a run's weights; a tower's dim) and on the store, so an index whose
recorded identities no longer match is rebuilt automatically. Building is a resumable
stage: the vectors, then the backend's own units (ANN blocks, Milvus batches).

A run's queries are encoded by its exported ONNX text tower (``exports/<run>/<checkpoint>/onnx``, written
by `mtx train` and `mtx export`) through onnxruntime + tokenizers when that export belongs to
the checkpoint in use: torch and transformers are then never imported, which is most of a cold
start. Otherwise the PyTorch model is loaded and the result says why.

A query is a text, a track to sound like (``--like``: a library track's own vector, or an audio
file embedded with the store's encoder), or both mixed; ``--max-per-artist`` caps each artist.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MtxError, unknown_choice
from .index_backends import ANN_THRESHOLD, CHOICES as BACKEND_CHOICES, get_backend, resolve_backend
from .index_backends._topk import top_k
from .progress import NullProgress, Progress
from .runs import RunInfo, export_dir, resolve_run, store_identity, weights_identity
from .manifest import from_state_dir, state_relative
from .safe_read import load_npy
from .state import (Resume, StateDir, atomic_path, atomic_write_json, atomic_write_text, begin_stage, check_name,
                    clean_stale_temps, read_json, stage_function)

log = logging.getLogger(__name__)



@dataclass
class Index:
    name: str
    dir: Path
    meta: dict[str, Any]
    ids: list[str]
    items: dict[str, dict[str, Any]]
    vectors: np.ndarray            # [N, D] float32 unit rows, memory-mapped (the exact copy)
    searcher: Any = None           # the backend's searcher: search(q, k) -> (rows, scores)
    _rows: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def backend(self) -> str:
        return str(self.meta.get("backend", "exact"))

    def row_of(self, track_id: str) -> int | None:
        if self._rows is None:
            self._rows = {i: r for r, i in enumerate(self.ids)}
        return self._rows.get(track_id)


TEXT_MODELS = ("run", "native")
QUERY_RUNTIMES = ("auto", "onnx", "torch")
INDEX_FORMAT = 2   # 2: memory-mapped vectors + a backend; older indexes are rebuilt


@dataclass
class SearchConfig:
    query: str | None = None
    run: str | None = None
    index: str | None = None
    k: int = 10
    device: str = "auto"
    rebuild: bool = False          # rebuild the index even if it is current (--force)
    text_model: str = "run"        # "run": the run's trained text embedder; "native": the encoder's own tower
    audio_encoder: str | None = None  # native: whose tower and store (clap, muq)
    manifest: str | None = None    # library manifest; default: newest with embeddings for the encoder
    model: str | None = None       # native: tower checkpoint; default: the one recorded in the store
    checkpoint: str | None = None  # run: best | latest; default: best if saved, else latest
    resume: Resume = Resume.FRESH  # for the index build: --continue finishes an interrupted one
    like: str | None = None        # a track id of the index, or an audio file, to sound like
    mix: float = 0.5               # with --like and a query: the text's weight (0 = only --like, 1 = only text)
    max_per_artist: int | None = None
    where: str | None = None       # metadata filter (musiccli.filters), e.g. "duration < 600 and genre != 'x'"
    exclude_artists: list[str] = field(default_factory=list)
    negative: str | None = None    # --not: a described sound to move the query away from
    not_weight: float = 0.5
    backend: str = "auto"          # auto | exact | ann | milvus (index_backends)
    uri: str | None = None         # milvus: a Milvus Lite file or a server URL; default <index>/milvus.db
    index_dtype: str = "float16"   # exact backend: the scanned copy (re-ranked against float32)
    query_runtime: str = "auto"    # auto: the ONNX export when it matches, else PyTorch; onnx | torch: insist
    playlist: str | None = None    # also save the hits as this playlist on the media server
    server: str | None = None      # jellyfin | navidrome (default: MEDIASERVER_TYPE)
    allow_degenerate_text: bool = False  # native: use a tower that fails the health check (text_health)


@dataclass
class SearchResult:
    query: str
    run: str | None
    index: str
    hits: list[dict[str, Any]] = field(default_factory=list)
    rebuilt: bool = False          # the index was built or brought up to date by this search
    index_updated: bool = False    # ... and that was an in-place update (only changed rows embedded)
    search_ms: float = 0.0
    text_model: str = "run"
    encoder: str = ""
    model_id: str | None = None    # native: the text tower's checkpoint
    query_runtime: str = "torch"   # what encoded the query: onnx | torch
    notes: list[str] = field(default_factory=list)
    like: str | None = None
    backend: str = "exact"
    playlist: dict[str, Any] | None = None  # with --playlist: server, name, playlist_id, tracks, created
    warnings: list[str] = field(default_factory=list)  # e.g. the run never saw the library's sources


# --------------------------------------------------------------------------- ranking
def rank_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best rows by dot product, best first.

    One BLAS matrix-vector product, then ``argpartition`` (O(N)) and a sort of only
    the ``k`` survivors: no full sort of N scores.
    """
    scores = vectors @ query
    order = top_k(scores, k)
    return order, scores[order].astype(np.float32)


@dataclass
class QueryModel:
    """The text side of an index: a run's trained ``TextEmbedder`` or an encoder's ``NativeTextModel``.

    Both map queries with ``encode`` and store rows with ``audio_for_retrieval``; everything
    else an index needs (its default name, what its vectors depend on) is answered here, so
    building, reusing and rebuilding indexes is one code path for both kinds.
    """

    kind: str                      # "run" or "native"
    encoder: str                   # the audio encoder whose store the index ranks
    model: Any                     # TextEmbedder | NativeTextModel
    run: RunInfo | None = None     # kind "run" only
    checkpoint: str | None = None  # kind "run" only
    runtime: str = "torch"         # "onnx": an OnnxTextModel (no torch); "torch": torch modules
    note: str | None = None        # why the ONNX path was not taken, or why a native tower answers
    audio: Any = None              # kind "run", torch: the run's AudioTower (identity for align, the head for joint)

    @property
    def audio_side(self) -> Any:
        """What maps stored audio rows into the query space (``audio_for_retrieval``): the run's audio
        tower, or the model itself (a native tower; an OnnxTextModel, which runs audio_tower.onnx)."""
        return self.audio if self.audio is not None else self.model

    @property
    def audio_dim(self) -> int | None:
        """The stored width a run's audio tower reads (None for native towers, which slice rows)."""
        if self.audio is not None:
            return int(self.audio.in_dim)
        if self.runtime == "onnx":
            return int(self.model.audio_in_dim)
        return None

    @property
    def label(self) -> str:
        """Prefix of the default index name."""
        return self.run.name if self.run is not None else f"native-{self.encoder}"

    @property
    def dim(self) -> int:
        if self.runtime == "onnx" or self.run is None:
            return int(self.model.dim)
        return int(self.model.config.out_dim)

    @property
    def model_id(self) -> str | None:
        return None if self.run is not None else str(self.model.model_id)

    def identity(self) -> dict[str, Any]:
        """What the index vectors depend on besides the store: a run's weights carry its audio
        statistics; a native tower only takes the first ``dim`` dims of each stored vector."""
        if self.run is not None:
            return {"weights": weights_identity(self.run.dir / str(self.checkpoint))}
        return {"tower": {"encoder": self.encoder, "dim": self.dim}}

    def owns(self, meta: dict[str, Any]) -> bool:
        """Was the index described by ``meta`` built for this text model?"""
        if meta.get("text_model", "run") != self.kind:
            return False
        return meta.get("run") == self.run.name if self.run is not None else meta.get("encoder") == self.encoder


def run_query_model(info: RunInfo, device: Any = "cpu", checkpoint: str | None = None,
                    onnx_dir: Path | None = None, query_runtime: str = "torch") -> QueryModel:
    """A run's model at ``checkpoint`` (best / latest; None = its default checkpoint), from its family: the
    ONNX export (no torch) when that matches the checkpoint, else PyTorch."""
    from .families import family_for

    if checkpoint is not None and checkpoint not in ("best", "latest"):
        raise unknown_choice("checkpoint", checkpoint, ("best", "latest"))
    if checkpoint is not None and not (info.checkpoint_dir(checkpoint) / "model.safetensors").exists():
        raise MtxError(f"run {info.name!r} has no {checkpoint} checkpoint",
                       hint="pass --checkpoint best or latest (whichever the run saved)")
    checkpoint = checkpoint or info.default_checkpoint()
    parts = family_for(info).query_parts(info, checkpoint, device, onnx_dir, query_runtime)
    if parts.note:
        log.debug("%s", parts.note)   # the result carries it; the CLI prints it once
    return QueryModel("run", info.audio_encoder, parts.model, run=info, checkpoint=checkpoint, audio=parts.audio,
                      runtime=parts.runtime, note=parts.note)


def native_query_model(encoder: str, store_path: Path, model: str | None = None, device: Any = "cpu",
                       allow_degenerate: bool = False) -> QueryModel:
    """``encoder``'s own text tower; by default the checkpoint the store was embedded with."""
    from .encoders.native_text import load_native_text_model
    from .store import EmbeddingStore

    if model is None:
        # The tower must be the text half of the checkpoint that embedded the library.
        with EmbeddingStore(store_path) as store:
            model = store.attrs.get("model_id") or None
    return QueryModel("native", encoder, load_native_text_model(encoder, model, device, allow_degenerate))


def require_native_tower(encoder: str) -> None:
    """Fail before any work when ``encoder`` has no text tower (the error lists those that do)."""
    from .encoders.native_text import TEXT_TOWERS, load_native_text_model

    if encoder not in TEXT_TOWERS:
        load_native_text_model(encoder)   # raises its "has no native text tower" MtxError, naming clap and muq


# --------------------------------------------------------------------------- identity / discovery
def _identity(text: QueryModel, store_path: Path, manifest_path: Path | None) -> dict[str, Any]:
    """What the index was computed from: the text model, store rows, and display metadata."""
    ident = {**text.identity(), "store": _file_identity(store_path)}
    if manifest_path is not None and manifest_path.exists():
        ident["manifest"] = _file_identity(manifest_path)
    return ident


def _file_identity(path: Path) -> dict[str, Any]:
    """A file's content identity without its location (a moved state dir is the same library)."""
    return {k: v for k, v in store_identity(path).items() if k != "path"}


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


def read_index_meta(state: StateDir, name: str) -> dict[str, Any]:
    recover_index(state, name)
    path = state.index_dir(name) / "meta.json"
    if not path.exists():
        raise unknown_choice("index", name, list_indexes(state) or ["(none yet: `mtx search` builds one)"])
    return _absolute_paths(state, read_json(path))


def _absolute_paths(state: StateDir, meta: dict[str, Any]) -> dict[str, Any]:
    """meta.json records paths inside the state dir relative to it; callers get them absolute."""
    for key in ("store", "manifest_path"):
        if meta.get(key):
            meta[key] = from_state_dir(str(meta[key]), state.root)
    return meta


def load_index(state: StateDir, name: str) -> Index:
    d = state.index_dir(name)
    meta = read_index_meta(state, name)
    ids = read_json(d / "ids.json")
    items = read_json(d / "items.json")
    # Memory-mapped: a cold process reads only the pages a query touches (the fp16 scan copy and the
    # float32 rows of the candidates it re-ranks), not the whole matrix.
    vectors = load_npy(d / "vectors.npy", mmap_mode="r", hint="rebuild the index with `mtx search --force`")
    if vectors.shape != (len(ids), int(meta["dim"])) or vectors.dtype != np.float32:
        raise MtxError(f"index {name!r} is damaged ({vectors.shape} {vectors.dtype} vectors for {len(ids)} ids)",
                       hint="rebuild it with `mtx search --force`")
    searcher = get_backend(str(meta.get("backend", "exact"))).open(d, meta, vectors)
    return Index(name=name, dir=d, meta=meta, ids=ids, items=items, vectors=vectors, searcher=searcher)


# --------------------------------------------------------------------------- building
def _item(record, root: Path | None = None) -> dict[str, Any]:
    """Display metadata of a track; an audio path inside the state dir is stored relative to it."""
    if record is None:
        return {"title": None, "artist": None, "dataset": None, "tags": [], "audio_path": None, "duration": None}
    path = state_relative(record.audio_path, root) if root is not None else record.audio_path
    return {"title": record.title, "artist": record.artist, "dataset": record.dataset, "tags": list(record.tags),
            "audio_path": path, "duration": record.duration,
            **{k: record.extra[k] for k in ("server_path", "album", "year") if record.extra.get(k) not in (None, "")}}


def _abs_audio(state: StateDir, path: str | None) -> str | None:
    return from_state_dir(path, state.root) if path else path


def library_store(state: StateDir, encoder: str, manifest: str | None) -> tuple[str, Path, Path]:
    """(manifest name, manifest path, store path) of the library to index; default: newest embedded one."""
    from .manifest import resolve_manifest

    mname, mpath = resolve_manifest(state, manifest or default_library_manifest(state, encoder))
    store_path = state.embeddings_path(encoder, mname)
    if not store_path.exists():
        raise MtxError(f"no {encoder} embeddings for manifest {mname!r}",
                       hint=f"run `mtx embed --audio-encoder {encoder} --manifest {mname}` first")
    return mname, mpath, store_path


def build_index(state: StateDir, text: QueryModel, manifest: str | None = None, name: str | None = None,
                progress: Progress | None = None, backend: str = "exact", options: dict[str, Any] | None = None,
                stage=None, target: Path | None = None) -> Index | None:
    """Index a library manifest's store with ``text``'s mapping of audio rows; returns the loaded index.

    Units: the vectors (+ ids and items), then the backend's own (``stage`` counters record them,
    so a resumed build skips what is done).
    """
    progress = progress or NullProgress()
    options = dict(options or {})
    encoder = text.encoder
    mname, mpath, store_path = library_store(state, encoder, manifest)
    name = check_name("index", name or f"{text.label}--{mname}")
    d = target or state.index_dir(name)   # ``target``: a successor written beside the working index
    d.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(d)                        # .tmp-items.json.*, .tmp-vectors.npy.* of a build that died
    (d / "meta.json").unlink(missing_ok=True)   # the index is incomplete from here until meta.json is back
    done: dict[str, Any] = dict(stage.record.counters) if stage is not None and stage.resumed else {}

    def commit(**counters: Any) -> None:
        if stage is not None:
            stage.update(**counters)

    if not (done.get("vectors") and (d / "vectors.npy").exists() and (d / "ids.json").exists()):
        log.info("building index %s from %s (%s embeddings)", name, mname, encoder)
        _write_vectors(d, text, store_path, mpath, progress, state.root)
        commit(vectors=True)
    ids = read_json(d / "ids.json")
    items = read_json(d / "items.json")
    vectors = load_npy(d / "vectors.npy", mmap_mode="r", hint="rebuild the index with `mtx search --force`")
    backend_options = dict(options)
    options["index_name"] = name
    backend_meta = get_backend(backend).build(d, vectors, options, progress, commit, done, ids, items)
    del vectors
    atomic_write_json(d / "meta.json", _meta(state, name, text, mname, mpath, store_path, len(ids), backend,
                                             backend_options, backend_meta))
    return load_index(state, name) if target is None else None


def _meta(state: StateDir, name: str, text: QueryModel, mname: str, mpath: Path, store_path: Path, count: int,
          backend: str, options: dict[str, Any], backend_meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name, "text_model": text.kind, "run": text.run.name if text.run is not None else None,
        "checkpoint": text.checkpoint, "model_id": text.model_id, "encoder": text.encoder, "manifest": mname,
        # Paths inside the state dir are relative to it, so a moved state dir keeps its indexes.
        "manifest_path": state_relative(mpath, state.root), "store": state_relative(store_path, state.root),
        "identity": _identity(text, store_path, mpath), "dim": text.dim, "count": count,
        "format": INDEX_FORMAT, "backend": backend, "backend_options": options, "backend_meta": backend_meta,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _write_vectors(d: Path, text: QueryModel, store_path: Path, mpath: Path, progress: Progress,
                   root: Path | None = None) -> None:
    """vectors.npy (streamed chunk by chunk into a memmap, so the library never sits twice in RAM),
    ids.json and items.json."""
    from .manifest import read_manifest
    from .store import EmbeddingStore

    records = {r.id: r for r in read_manifest(mpath)} if mpath.exists() else {}
    with EmbeddingStore(store_path) as store:
        # A run predicts exactly the store's dim; a native tower reads a mean [D] or stats [3 D] row
        # (audio_for_retrieval refuses any other width with its own hint).
        if text.audio_dim is not None and store.dim != text.audio_dim:
            raise MtxError(f"store {store_path.name} has dim {store.dim}, the run's audio tower reads "
                           f"{text.audio_dim}",
                           hint="index a library embedded with the run's audio encoder")
        if text.run is not None:
            from .families import family_for

            family_for(text.run).check_library(text.run, dict(store.attrs), store_path, mpath.stem)
        n, dim = len(store), text.dim
        with atomic_path(d / "vectors.npy") as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
            with progress.task("Indexing", total=n, unit="tracks") as task:
                for start, chunk in store.iter_chunks():   # sized in bytes, whatever the dim
                    progress.check_interrupt()
                    mm[start:start + len(chunk)] = text.audio_side.audio_for_retrieval(chunk)
                    task.advance(len(chunk))
            mm.flush()
            del mm
        ids = list(store.ids)
        hashes = store.hashes
    atomic_write_text(d / HASHES_FILE, json.dumps(hashes or []))
    atomic_write_text(d / "ids.json", json.dumps(ids))
    atomic_write_text(d / "items.json", json.dumps({i: _item(records.get(i), root) for i in ids}, ensure_ascii=False))


_CHANGES = {"weights": "the run's weights changed", "tower": "the text tower changed",
            "store": "the embedding store changed", "manifest": "the library manifest changed"}


def _meta_paths(state: StateDir, meta: dict[str, Any]) -> tuple[Path, Path | None]:
    store_path = Path(from_state_dir(str(meta.get("store", "")), state.root))
    mpath = Path(from_state_dir(str(meta["manifest_path"]), state.root)) if meta.get("manifest_path") else None
    return store_path, mpath


def _stale_reason(state: StateDir, text: QueryModel, meta: dict[str, Any],
                  options: dict[str, Any] | None = None) -> str | None:
    if meta.get("format") != INDEX_FORMAT:
        return "it predates memory-mapped indexes"
    for key, value in (options or {}).items():
        if meta.get("backend_options", {}).get(key) != value:
            return f"its {key} changed"
    store_path, mpath = _meta_paths(state, meta)
    if not store_path.exists():
        return "its embedding store is gone"
    current = _identity(text, store_path, mpath)
    old = meta.get("identity", {})
    for key in [*_CHANGES, *sorted((set(current) | set(old)) - set(_CHANGES))]:
        if old.get(key) != current.get(key):
            return _CHANGES.get(key, f"its {key} changed")
    return None


def backend_options(backend: str, dtype: str = "float16", uri: str | None = None) -> dict[str, Any]:
    """What a backend's build depends on besides the vectors (recorded; a change rebuilds)."""
    if backend == "exact":
        return {"dtype": dtype}
    if backend == "milvus":
        from .index_backends.milvus import without_credentials

        return {"uri": without_credentials(uri)} if uri else {}
    return {}


def _default_name(state: StateDir, text: QueryModel, manifest: str, backend: str) -> tuple[str, str]:
    """(index name, concrete backend): ``<label>--<manifest>`` for exact, ``--ann`` / ``--milvus`` suffixed."""
    base = f"{text.label}--{manifest}"
    if backend == "auto":
        # An index that already exists decides, so a cold search never has to open the store to count.
        for b, name in (("exact", base), ("ann", f"{base}--ann")):
            recover_index(state, name)
            if (state.index_dir(name) / "meta.json").exists():
                return name, b
        from .store import EmbeddingStore

        with EmbeddingStore(state.embeddings_path(text.encoder, manifest)) as store:
            backend = resolve_backend("auto", len(store))
        if backend == "ann":
            log.info("the library has more than %d tracks: building an approximate (ANN) index", ANN_THRESHOLD)
    return (base if backend == "exact" else f"{base}--{backend}"), backend


@stage_function
def open_index(state: StateDir, text: QueryModel, index: str | None = None, rebuild: bool = False,
               manifest: str | None = None, progress: Progress | None = None,
               resume: Resume = Resume.FRESH, backend: str = "auto", uri: str | None = None,
               dtype: str = "float16") -> tuple[Index, str]:
    """The requested (or default) index for a text model, rebuilt when asked or stale, or updated in place
    when only some rows changed. Returns (index, how): how is "" (used as it was), "built" or "updated"."""
    if backend not in BACKEND_CHOICES:
        raise unknown_choice("search backend", backend, BACKEND_CHOICES)
    if index is not None:
        meta = read_index_meta(state, index)
        if not text.owns(meta):
            raise MtxError(f"index {index!r} was built for {_owner(meta)}, not {_owner_of(text)}",
                           hint=f"search it with {_owner_flags(meta)}, or pick another index")
        name = index
        recorded = Path(from_state_dir(str(meta["manifest_path"]), state.root)) if meta.get("manifest_path") else None
        manifest = str(recorded) if recorded is not None and recorded.is_file() \
            and recorded.resolve() != state.manifest_path(str(meta.get("manifest"))).resolve() \
            else meta.get("manifest")
        if backend == "auto":
            backend = str(meta.get("backend", "exact"))
            uri = uri or meta.get("backend_options", {}).get("uri")
    else:
        mname, mpath, _ = library_store(state, text.encoder, manifest)
        name, backend = _default_name(state, text, mname, backend)
        manifest = mname if Path(mpath).resolve() == state.manifest_path(mname).resolve() else str(mpath)   # `--manifest /abs/lib.json`
        recover_index(state, name)
        d = state.index_dir(name)
        meta = _absolute_paths(state, read_json(d / "meta.json")) if (d / "meta.json").exists() else None
    options = backend_options(backend, dtype, uri)
    update = False
    if meta is not None and not rebuild:
        reason = _stale_reason(state, text, meta, options) or (
            f"it was built for the {meta.get('backend', 'exact')} backend" if meta.get("backend", "exact") != backend
            else None)
        if reason is None:
            return load_index(state, name), ""
        update = _updatable(state, text, meta, options, backend)
        log.info("index %s is out of date (%s); %s", name, reason, "updating it in place" if update else "rebuilding")
    stage_config = {"text_model": text.kind, "manifest": manifest, "backend": backend, "options": options}
    stage_config.update({"run": text.run.name, "checkpoint": text.checkpoint} if text.run is not None
                        else {"encoder": text.encoder, "model_id": text.model_id})
    if meta is not None and (backend != "milvus" or update):
        # A working index is replaced only once its successor is complete: the new one is written
        # beside it (an update reuses every unchanged row, a rebuild starts over) and swapped in.
        stage = begin_stage(state, "search", f"index:{name}", stage_config, Resume.FORCE,
                            discard=lambda: shutil.rmtree(_next_dir(state, name), ignore_errors=True))
        built = (update_index(state, text, name, meta, progress, backend, options) if update
                 else _rebuild_beside(state, text, manifest, name, progress, backend, options))
        stage.complete({"index": name, "count": len(built), "updated": update})
        return built, "updated" if update else "built"
    # Building the index is this stage's unit of work. A stale or explicitly rebuilt index starts over;
    # a build that was interrupted before meta.json landed must be resumed (--continue) or forced.
    mode = Resume.FORCE if (meta is not None or rebuild) else resume
    stage = begin_stage(state, "search", f"index:{name}", stage_config, mode, outputs={"index": state.index_dir(name)})
    built = build_index(state, text, manifest, name, progress=progress, backend=backend, options=options,
                        stage=stage)
    stage.complete({"index": name, "count": len(built)})
    return built, "built"


# --------------------------------------------------------------------------- updating in place
HASHES_FILE = "hashes.json"   # the content hash of each row (the store's), so an update knows what changed
SPARSE_LIMIT = 0.5            # an ANN index whose labels are more than half dead is rebuilt (compacted)


def _next_dir(state: StateDir, name: str) -> Path:
    return state.index_dir(name).parent / f".{name}.next"


def _old_dir(state: StateDir, name: str) -> Path:
    return state.index_dir(name).parent / f".{name}.old"


def _swap_in(state: StateDir, name: str) -> None:
    """Replace the index folder by its complete successor (two renames; :func:`recover_index` finishes
    a swap cut between them)."""
    d, nxt, old = state.index_dir(name), _next_dir(state, name), _old_dir(state, name)
    shutil.rmtree(old, ignore_errors=True)
    if d.exists():
        os.replace(d, old)
    os.replace(nxt, d)
    shutil.rmtree(old, ignore_errors=True)


def recover_index(state: StateDir, name: str) -> None:
    """Finish or undo a swap that a crash cut short; never leaves the name without an index it had."""
    d, nxt, old = state.index_dir(name), _next_dir(state, name), _old_dir(state, name)
    if not d.exists():
        if (nxt / "meta.json").exists():
            os.replace(nxt, d)
        elif old.exists():
            os.replace(old, d)
    if d.exists() and old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _updatable(state: StateDir, text: QueryModel, meta: dict[str, Any], options: dict[str, Any],
               backend: str) -> bool:
    """Only the library changed (same text model, backend and options; the store keys rows by content)."""
    if meta.get("format") != INDEX_FORMAT or meta.get("backend", "exact") != backend:
        return False
    if meta.get("backend_options", {}) != options:
        return False
    old, current = meta.get("identity", {}), text.identity()
    if any(old.get(k) != v for k, v in current.items()):
        return False
    store_path, _ = _meta_paths(state, meta)
    if not (state.index_dir(meta["name"]) / HASHES_FILE).is_file() or not store_path.is_file():
        return False
    from .store import EmbeddingStore

    try:
        with EmbeddingStore(store_path) as st:
            return st.hashes is not None
    except MtxError:
        return False


def _rebuild_beside(state: StateDir, text: QueryModel, manifest: str | None, name: str, progress: Progress,
                    backend: str, options: dict[str, Any]) -> Index:
    nxt = _next_dir(state, name)
    shutil.rmtree(nxt, ignore_errors=True)
    build_index(state, text, manifest, name, progress=progress, backend=backend, options=options, target=nxt)
    _swap_in(state, name)
    return load_index(state, name)


def update_index(state: StateDir, text: QueryModel, name: str, meta: dict[str, Any], progress: Progress | None,
                 backend: str, options: dict[str, Any]) -> Index:
    """Bring an index up to date with its changed store without rebuilding it.

    Rows whose (id, content hash) the index holds are copied (no text model runs on them), new and
    changed rows are mapped by the text model, removed ones are dropped; the backend updates its own
    files (the ANN index removes and adds vectors, it is not retrained). Everything is written beside
    the working index and swapped in at the end, so a crash leaves the old index working and the
    next search or sync simply updates again.
    """
    from .manifest import read_manifest
    from .store import EmbeddingStore

    progress = progress or NullProgress()
    d, nxt = state.index_dir(name), _next_dir(state, name)
    ref = meta.get("manifest_path") if meta.get("manifest_path") and Path(meta["manifest_path"]).is_file() \
        else meta.get("manifest")
    mname, mpath, store_path = library_store(state, text.encoder, ref)
    shutil.rmtree(nxt, ignore_errors=True)
    nxt.mkdir(parents=True)
    old_ids, old_hashes = read_json(d / "ids.json"), read_json(d / HASHES_FILE)
    old_vectors = np.load(d / "vectors.npy", mmap_mode="r")
    old_rows = {(i, h): k for k, (i, h) in enumerate(zip(old_ids, old_hashes))}
    records = {r.id: r for r in read_manifest(mpath)} if mpath.exists() else {}
    with EmbeddingStore(store_path) as st:
        ids, hashes = list(st.ids), list(st.hashes or [])
        source = np.array([old_rows.get(key, -1) for key in zip(ids, hashes)], dtype=np.int64)
        fresh = np.flatnonzero(source < 0)
        with atomic_path(nxt / "vectors.npy") as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(ids), text.dim))
            for a, b, first in _copy_runs(source):
                mm[a:b] = old_vectors[first:first + b - a]
            block = max(1, 65536 // max(1, st.dim))
            with progress.task("Updating index", total=len(fresh), unit="tracks") as task:
                for s0 in range(0, len(fresh), block):
                    progress.check_interrupt()
                    rows = fresh[s0:s0 + block]
                    mm[rows] = text.audio_side.audio_for_retrieval(st.rows(rows))
                    task.advance(len(rows))
            mm.flush()
            del mm
    atomic_write_text(nxt / HASHES_FILE, json.dumps(hashes))
    atomic_write_text(nxt / "ids.json", json.dumps(ids))
    atomic_write_text(nxt / "items.json",
                      json.dumps({i: _item(records.get(i), state.root) for i in ids}, ensure_ascii=False))
    vectors = np.load(nxt / "vectors.npy", mmap_mode="r")
    module = get_backend(backend)
    opts = {**options, "index_name": name}
    if hasattr(module, "update"):
        backend_meta = module.update(nxt, d, vectors, source, meta, opts, progress)
    else:
        backend_meta = module.build(nxt, vectors, opts, progress, lambda **_: None, {}, ids, {})
    del vectors
    log.info("index %s updated: %d row(s) kept, %d new, %d dropped", name, len(ids) - len(fresh), len(fresh),
             len(old_ids) - (len(ids) - len(fresh)))
    atomic_write_json(nxt / "meta.json", _meta(state, name, text, mname, mpath, store_path, len(ids), backend,
                                               options, backend_meta))
    _swap_in(state, name)
    return load_index(state, name)


def _copy_runs(source: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, first source row) runs of consecutive kept rows (source[k] = row in the old index, -1 new)."""
    out: list[list[int]] = []
    for k, s in enumerate(source.tolist()):
        if s < 0:
            continue
        if out and out[-1][1] == k and out[-1][2] + (k - out[-1][0]) == s:
            out[-1][1] = k + 1
        else:
            out.append([k, k + 1, s])
    return [(a, b, f) for a, b, f in out]


def _owner(meta: dict[str, Any]) -> str:
    if meta.get("text_model", "run") == "native":
        return f"the native {meta.get('encoder')} text tower"
    return f"run {meta.get('run')!r}"


def _owner_of(text: QueryModel) -> str:
    return f"run {text.run.name!r}" if text.run is not None else f"the native {text.encoder} text tower"


def _owner_flags(meta: dict[str, Any]) -> str:
    if meta.get("text_model", "run") == "native":
        return f"--text-model native --audio-encoder {meta.get('encoder')}"
    return f"--run {meta.get('run')}"


# --------------------------------------------------------------------------- querying
def query_model(state: StateDir, cfg: SearchConfig) -> QueryModel:
    """The text model ``cfg`` asks for: a run's (named, the --index's, or the newest) or a native tower."""
    if cfg.text_model not in TEXT_MODELS:
        raise unknown_choice("text model", cfg.text_model, TEXT_MODELS)
    if cfg.query_runtime not in QUERY_RUNTIMES:
        raise unknown_choice("query runtime", cfg.query_runtime, QUERY_RUNTIMES)
    meta = read_index_meta(state, cfg.index) if cfg.index is not None else None
    if meta is not None and meta.get("text_model", "run") != cfg.text_model:
        raise MtxError(f"index {cfg.index!r} was built for {_owner(meta)}",
                       hint=f"search it with {_owner_flags(meta)}, or pick another index")
    if cfg.checkpoint is not None and cfg.text_model == "native":
        raise MtxError("--checkpoint chooses one of a run's checkpoints",
                       hint="drop it with --text-model native (use --model for the tower)")
    text_model = cfg.text_model
    why = None
    if text_model == "run" and cfg.run is None and meta is None and cfg.checkpoint is None:
        fallback = _native_fallback(state, cfg)
        if fallback is not None:
            cfg = replace(cfg, text_model="native", audio_encoder=fallback[0], manifest=cfg.manifest or fallback[1])
            text_model, why = "native", fallback[2]
    if text_model == "native":
        encoder = cfg.audio_encoder or (meta or {}).get("encoder")
        if not encoder:
            raise MtxError("--text-model native needs --audio-encoder",
                           hint="e.g. mtx search \"calm piano\" --text-model native --audio-encoder clap")
        require_native_tower(encoder)
        from .runtime import select_runtime

        manifest = meta.get("manifest") if meta is not None else cfg.manifest
        device = select_runtime(cfg.device, "fp32").device
        text = native_query_model(encoder, library_store(state, encoder, manifest)[2], cfg.model, device,
                                  cfg.allow_degenerate_text)
        text.note = why
        return text
    if cfg.model is not None:
        raise MtxError("--model chooses a native text tower's checkpoint",
                       hint="use it with --text-model native; a run's text model is its own checkpoint")
    run = cfg.run
    if run is None and meta is not None and meta.get("text_model", "run") == "run":
        run = meta.get("run")   # an index belongs to one run: searching it with that run needs no --run
    info = resolve_run(state, run, announce=False)   # the caller reports "using run X, index Y"
    if cfg.audio_encoder is not None and cfg.audio_encoder != info.audio_encoder:
        raise MtxError(f"run {info.name!r} was trained on {info.audio_encoder} embeddings, not {cfg.audio_encoder}",
                       hint=f"drop --audio-encoder, or search with --text-model native --audio-encoder "
                            f"{cfg.audio_encoder}")
    onnx_dir = export_dir(state, info.name, cfg.checkpoint or info.default_checkpoint()) / "onnx"
    return run_query_model(info, cfg.device, cfg.checkpoint, onnx_dir, cfg.query_runtime)


def _native_fallback(state: StateDir, cfg: SearchConfig) -> tuple[str, str, str | None] | None:
    """(encoder, manifest, why) to search with an encoder's own text tower instead of the default run:

    - there is no trained run: the newest library embedded with an encoder that has a tower (what
      `mtx sync` leaves);
    - the newest run did not beat that tower on held-out tracks (``mtx eval``'s ``lift``): a run that
      does not help must not replace what worked, so the tower keeps answering, and the note says why.

    None when the default run is used (it has a lift, or no measurement) or no such library exists."""
    if cfg.model is not None:
        return None
    if state.list_runs(complete_only=True):
        return _no_lift_fallback(state, cfg)   # (reads JSON only: a cold search with a run must not import torch)
    from .encoders.native_text import TEXT_TOWERS

    manifests = [cfg.manifest] if cfg.manifest else state.list_manifests()
    for name in manifests:
        for encoder in state.list_encoders_with_embeddings(name):
            if encoder in TEXT_TOWERS and (cfg.audio_encoder in (None, encoder)):
                log.info("no trained run: searching %s with the native %s text tower", name, encoder)
                return encoder, name, None
    return None


def _no_lift_fallback(state: StateDir, cfg: SearchConfig) -> tuple[str, str, str] | None:
    from .runs import held_out_lift

    info = resolve_run(state, None, announce=False)
    lifted = held_out_lift(info)
    if (not lifted or lifted.get("beats_baseline") or lifted.get("baseline") != "native"
            or cfg.audio_encoder not in (None, info.audio_encoder)):
        return None
    m = lifted["metrics"]

    def pair(key: str) -> str:
        e = m.get(key) or {}
        return "-" if e.get("lift") is None else f"{e['model']:.3f} vs {e['baseline']:.3f}"

    why = (f"run {info.name!r} did not beat the native {info.audio_encoder} text tower on held-out tracks "
           f"(tag ROC-AUC {pair('tag_roc_auc')}, tag AP {pair('tag_ap')}), so the native tower answers; "
           f"pass --run {info.name} to search with the run anyway")
    log.info("%s", why)
    return str(info.audio_encoder), cfg.manifest or str(info.meta.manifest), why


def _check(cfg: SearchConfig) -> bool:
    """Validate the query options; returns whether there is a text query."""
    if cfg.k < 1:
        raise MtxError(f"-k must be at least 1 (got {cfg.k})")
    has_text = bool(cfg.query and cfg.query.strip())
    if not has_text and cfg.like is None:
        raise MtxError("empty query", hint='pass a description, e.g. mtx search "dark ambient drone", '
                                           "or --like TRACK_ID|FILE")
    if not 0.0 <= cfg.mix <= 1.0:
        raise MtxError(f"--mix must be between 0 and 1 (got {cfg.mix})",
                       hint="0 = only --like, 1 = only the text query")
    if cfg.max_per_artist is not None and cfg.max_per_artist < 1:
        raise MtxError(f"--max-per-artist must be at least 1 (got {cfg.max_per_artist})")
    return has_text


def _unit_vec(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def like_vector(index: Index, text: QueryModel, like: str, device: str = "cpu") -> np.ndarray:
    """The retrieval-space vector of ``like``: a track of the index, or an audio file embedded with
    the store's encoder (then mapped by the run's audio side, like every library row)."""
    row = index.row_of(like)
    if row is not None:
        return _unit_vec(index.vectors[row])
    path = Path(like).expanduser()
    if not path.is_file():
        raise MtxError(f"--like {like!r} is neither a track id of index {index.name!r} nor an audio file",
                       hint="pass a track id shown by `mtx search --json`, or the path of an audio file")
    from .encoders.single import embed_file
    from .store import EmbeddingStore

    with EmbeddingStore(Path(index.meta["store"])) as store:
        attrs = dict(store.attrs)
    raw = embed_file(path, attrs, device=device)
    return _unit_vec(text.audio_side.audio_for_retrieval(raw[None, :])[0])


def _artist_key(item: dict[str, Any]) -> str | None:
    a = item.get("artist")
    return " ".join(str(a).lower().split()) or None if a else None


def allowed_rows(index: Index, where: str | None, exclude_artists: list[str]) -> np.ndarray | None:
    """Rows of the index that pass ``--where`` and ``--exclude-artist`` (None: no filter)."""
    if not where and not exclude_artists:
        return None
    from .filters import ItemTable, exclude_artists_mask, where_mask

    table = ItemTable.build(index.ids, index.items)
    mask = np.ones(len(index), dtype=bool)
    if where:
        mask &= where_mask(where, table)
    if exclude_artists:
        mask &= exclude_artists_mask(exclude_artists, table)
    return np.flatnonzero(mask)


def _filtered_search(index: Index, allowed: np.ndarray):
    """A searcher over the allowed rows only: exact float32 scores of those rows (O(allowed x D)), so a
    narrow filter never depends on how deep an approximate backend would have to dig."""
    def search_rows(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(index.vectors[allowed], dtype=np.float32) @ q
        local = top_k(scores, k)
        return allowed[local], scores[local]
    return search_rows


def rank_capped(index: Index, q: np.ndarray, k: int, max_per_artist: int | None,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The backend's top ``k`` (among ``allowed`` rows when given), with at most ``max_per_artist``
    tracks of one artist (no artist: no cap).

    Asks the backend for a widening pool until ``k`` survive the cap or the library is exhausted.
    """
    search_fn = index.searcher.search if allowed is None else _filtered_search(index, allowed)
    if max_per_artist is None:
        return search_fn(q, k)
    n = len(index) if allowed is None else len(allowed)
    pool = min(n, max(5 * k, 50))
    while True:
        rows, scores = search_fn(q, pool)
        keep, counts = [], {}
        for i, row in enumerate(rows.tolist()):
            a = _artist_key(index.items.get(index.ids[row], {}))
            if a is not None and counts.get(a, 0) >= max_per_artist:
                continue
            counts[a] = counts.get(a, 0) + 1
            keep.append(i)
            if len(keep) == k:
                break
        if len(keep) == k or pool >= n:
            return rows[keep], scores[keep]
        pool = min(n, pool * 4)


def search(state: StateDir, cfg: SearchConfig, progress: Progress | None = None) -> SearchResult:
    has_text = _check(cfg)
    text = query_model(state, cfg)
    index, how = open_index(state, text, cfg.index, cfg.rebuild, manifest=cfg.manifest, progress=progress,
                                resume=cfg.resume, backend=cfg.backend, uri=cfg.uri, dtype=cfg.index_dtype)
    log.debug("using %s, index %s (%d tracks, %s)", _owner_of(text), index.name, len(index), index.backend)
    warnings = [w for w in [_provenance_warning(text, index)] if w]
    parts = []
    if has_text:
        q = np.asarray(text.model.encode([cfg.query])[0], dtype=np.float32)
        if q.shape[0] != index.vectors.shape[1]:
            raise MtxError(f"the text model gives {q.shape[0]}-d queries, index {index.name!r} holds "
                           f"{index.vectors.shape[1]}-d vectors", hint="rebuild the index with `mtx search --force`")
        parts.append((cfg.mix if cfg.like is not None else 1.0, _unit_vec(q)))
    if cfg.like is not None:
        parts.append((1.0 - cfg.mix if has_text else 1.0, like_vector(index, text, cfg.like, cfg.device)))
    q = _unit_vec(sum(w * v for w, v in parts))
    if cfg.negative:
        from .filters import negative_query

        q = negative_query(q, np.asarray(text.model.encode([cfg.negative])[0], dtype=np.float32), cfg.not_weight)
    allowed = allowed_rows(index, cfg.where, cfg.exclude_artists)
    if allowed is not None and len(allowed) == 0:
        raise MtxError("no track of the library passes the filters",
                       hint="loosen --where / --exclude-artist (fields: artist, album, title, genre, year, duration)")
    t0 = time.perf_counter()   # the ranking alone; encoding cost depends on the text model
    rows, scores = rank_capped(index, q, cfg.k, cfg.max_per_artist, allowed)
    ms = (time.perf_counter() - t0) * 1000.0
    hits = []
    for rank, (row, score) in enumerate(zip(rows.tolist(), scores.tolist()), start=1):
        id_ = index.ids[row]
        item = index.items.get(id_, {})
        hits.append({"rank": rank, "score": float(score), "id": id_, "title": item.get("title"),
                     "artist": item.get("artist"), "dataset": item.get("dataset"), "tags": item.get("tags") or [],
                     "audio_path": _abs_audio(state, item.get("audio_path")), "duration": item.get("duration"),
                     **({"server_path": item["server_path"]} if item.get("server_path") else {})})
    playlist = None
    if cfg.playlist is not None:
        from dataclasses import asdict

        from .playlists import save_playlist

        playlist = asdict(save_playlist(state, index.name, hits, cfg.playlist, cfg.server))
    return SearchResult(query=cfg.query or "", run=text.run.name if text.run is not None else None, index=index.name,
                        hits=hits, rebuilt=bool(how), index_updated=how == "updated", search_ms=ms,
                        text_model=text.kind, encoder=text.encoder, model_id=text.model_id, query_runtime=text.runtime,
                        notes=[text.note] if text.note else [], like=cfg.like, backend=index.backend,
                        warnings=warnings, playlist=playlist)


def _provenance_warning(text: QueryModel, index: Index) -> str | None:
    """The run-met-other-music line, when a run ranks a library of sources it was not trained on.
    (Returned, not logged: the CLI prints it once, and only in human mode.)"""
    from .provenance import run_training_data, source_counts, unseen_sources_warning

    if text.run is None:
        return None  # a native tower was not trained by us on anything
    return unseen_sources_warning(text.run.name, run_training_data(text.run.meta), source_counts(index.items.values()))
