"""The run folder: the contract between `mtx train` and everything that reads a run.

``runs/<run>/`` holds ``run.json`` (what was trained on what), one folder per checkpoint
(``best/``, ``latest/``) and the eval reports. Eval reports and exports name the checkpoint
they were made from, so evaluating best, then latest, then best again never returns one
checkpoint's numbers for the other::

    runs/<run>/eval-<split>-<checkpoint>.json
    exports/<run>/<checkpoint>/{hf,onnx}/

``eval``, ``export`` and ``search`` import these helpers; none reads another's module.
:class:`RunMeta` is the one schema, reader and writer of ``run.json`` (every family's trainer writes
it, every stage reads it). Loading a checkpoint is its model family's business
(``musiccli.families``), never this module's: the run folder does not know any model.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import MtxError, unknown_choice
from .manifest import resolve_manifest
from .state import StateDir, atomic_write_json, file_sha256, read_json

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
CHECKPOINTS = ("best", "latest")
WEIGHTS = "model.safetensors"
AUDIO_TOWER_DIR = "audio_tower"   # beside the text tower in a joint run's checkpoint (and in hf/ exports)


@dataclass
class RunMeta:
    """``run.json``: what a run was trained on, how, and how far it got.

    Every key any ``mtx`` version wrote is a field; a run written before a key existed reads it as
    None, and keys this version does not know are kept in ``extra`` and written back unchanged.
    The keys in ``ALWAYS`` are written even when None; the others (each family's own) only when set.
    """

    run: str = ""
    objective: str = "align"               # musiccli.families.OBJECTIVES
    audio_encoder: str | None = None       # the store it trained on ("student" for student runs)
    manifest: str | None = None
    manifest_path: str | None = None
    manifest_hash: str | None = None
    embeddings: str | None = None          # the store path (towers); None for student runs
    loss: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    created: float | None = None
    status: str = "running"                # running | complete
    best: dict[str, Any] | None = None
    training_data: dict[str, Any] | None = None   # provenance.training_data
    # towers (align, joint)
    text_backbone: str | None = None
    space_dim: int | None = None
    text_rep: str | None = None
    teacher: str | None = None
    init_from: dict[str, Any] | None = None
    # student
    teachers: dict[str, Any] | None = None
    mel_cache: str | None = None
    text_teacher: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    ALWAYS = ("run", "objective", "audio_encoder", "manifest", "manifest_path", "manifest_hash", "embeddings",
              "loss", "config", "created", "status", "best", "training_data")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunMeta":
        known = {f.name for f in fields(cls)} - {"extra"}
        meta = cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known})
        meta.objective = meta.objective or "align"   # runs from before objectives existed
        return meta

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "extra" and (f.name in self.ALWAYS or getattr(self, f.name) is not None)}
        return {**out, **self.extra}

    # Read like the JSON mapping it is (``meta.get("manifest")``, ``meta["status"]``), for callers that
    # take any mapping (``provenance.run_training_data``).
    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    @classmethod
    def read(cls, run_dir: Path) -> "RunMeta | None":
        path = Path(run_dir) / RUN_JSON
        return cls.from_dict(read_json(path)) if path.exists() else None

    def write(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / RUN_JSON, self.to_dict())


@dataclass
class RunInfo:
    """A trained run as described by its ``run.json``."""

    name: str
    dir: Path
    meta: RunMeta

    @property
    def audio_encoder(self) -> str:
        return str(self.meta.audio_encoder or "")

    @property
    def objective(self) -> str:
        """What trained it; ``musiccli.families.family_for(info)`` is the family that loads it."""
        return self.meta.objective

    def has_checkpoint(self, checkpoint: str) -> bool:
        return (self.dir / checkpoint / WEIGHTS).exists()

    def checkpoint_dir(self, checkpoint: str) -> Path:
        check_checkpoint(checkpoint)
        if not self.has_checkpoint(checkpoint):
            have = [c for c in CHECKPOINTS if self.has_checkpoint(c)]
            raise MtxError(f"run {self.name!r} has no {checkpoint} checkpoint",
                           hint=f"use --checkpoint {have[0]}" if have else "train it first with `mtx train`")
        return self.dir / checkpoint

    def default_checkpoint(self) -> str:
        return next((c for c in CHECKPOINTS if self.has_checkpoint(c)), "best")


def check_checkpoint(checkpoint: str) -> str:
    if checkpoint not in CHECKPOINTS:
        raise unknown_choice("checkpoint", checkpoint, CHECKPOINTS)
    return checkpoint


def resolve_run(state: StateDir, run: str | None, announce: bool = True) -> RunInfo:
    """The named run, or the newest run with saved weights; says which one it picked."""
    if run is None:
        name = state.newest_run()
        if announce:
            log.info("using run %s", name)
    else:
        name = run
        if not (state.root / "runs" / name / RUN_JSON).exists():
            raise unknown_choice("run", name, state.list_runs() or ["(none: run `mtx train` first)"])
    path = state.run_dir(name)
    meta_path = path / RUN_JSON
    if not meta_path.exists():
        raise MtxError(f"run {name!r} has no run.json", hint=f"{path} is incomplete: retrain it with --force")
    return RunInfo(name=name, dir=path, meta=RunMeta.from_dict(read_json(meta_path)))


# --------------------------------------------------------------------------- per-checkpoint outputs
# A stage key and its output path are built from the same parts, side by side, so they cannot disagree.
def eval_key(run: str, split: str, checkpoint: str) -> str:
    return f"eval:{run}:{split}:{check_checkpoint(checkpoint)}"


def eval_report_path(state: StateDir, run: str, split: str, checkpoint: str) -> Path:
    return state.run_dir(run) / f"eval-{split}-{check_checkpoint(checkpoint)}.json"


def eval_reports(run_dir: Path, checkpoint: str | None = None) -> list[Path]:
    """The run's eval reports (of one checkpoint, if given), newest first."""
    pattern = f"eval-*-{checkpoint}.json" if checkpoint else "eval-*.json"
    found = [p for p in run_dir.glob(pattern) if not p.name.startswith(".")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def held_out_lift(info: "RunInfo", checkpoint: str | None = None) -> dict[str, Any] | None:
    """The lift over zero-shot that `mtx eval` measured on the test split for the current weights of
    ``checkpoint`` (default: the run's), or None when there is no such report or the weights are newer."""
    ckpt = checkpoint or info.default_checkpoint()
    path = info.dir / f"eval-test-{check_checkpoint(ckpt)}.json"
    weights = info.checkpoint_dir(ckpt) / "model.safetensors"
    try:
        if weights.exists() and weights.stat().st_mtime > path.stat().st_mtime:
            return None   # trained again since: the report speaks of other weights
        return read_json(path).get("lift") or None
    except (OSError, ValueError, AttributeError):
        return None


def latest_eval_report(run_dir: Path, checkpoint: str) -> dict[str, Any] | None:
    """The newest eval report of ``checkpoint``: a model card quotes the numbers of the weights it ships."""
    reports = eval_reports(run_dir, checkpoint)
    return read_json(reports[0]) if reports else None


def export_dir(state: StateDir, run: str, checkpoint: str, out: Path | None = None) -> Path:
    """Where an export of ``checkpoint`` goes: ``exports/<run>/<checkpoint>``, or ``out`` when given."""
    check_checkpoint(checkpoint)
    return Path(out).expanduser().resolve() if out else state.export_dir(run) / checkpoint


def export_key(run: str, checkpoint: str, out: Path | None = None) -> str:
    """The export stage key; a custom ``--out`` is part of it, so two folders are two outputs."""
    key = f"export:{run}:{check_checkpoint(checkpoint)}"
    if out:
        key += ":" + hashlib.sha256(str(Path(out).expanduser().resolve()).encode()).hexdigest()[:12]
    return key


# --------------------------------------------------------------------------- identities
def weights_identity(ckpt_dir: Path) -> dict[str, Any]:
    """Identity of saved weights: the sha of the (small) head file plus size/mtime of the backbone.

    Hashing the head is cheap and the head changes at every save; the backbone file
    can be hundreds of MB, so its stat stands in for a hash.
    """
    head = ckpt_dir / WEIGHTS
    ident: dict[str, Any] = {"head_sha256": file_sha256(head)[:16]}
    audio_tower = ckpt_dir / AUDIO_TOWER_DIR / WEIGHTS   # joint runs' trained audio tower
    if audio_tower.exists():
        ident["audio_tower_sha256"] = file_sha256(audio_tower)[:16]
    backbone = ckpt_dir / "backbone" / WEIGHTS
    if backbone.exists():
        st = backbone.stat()
        ident["backbone"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return ident


def store_identity(path: Path) -> dict[str, Any]:
    st = Path(path).stat()
    # The path within the state dir (embeddings/<encoder>/<manifest>.h5), not where the state dir is.
    return {"path": "/".join(Path(path).parts[-3:]), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def run_manifest_and_store(state: StateDir, info: RunInfo, manifest: str | None) -> tuple[str, Path, Path]:
    """(manifest name, manifest path, embeddings path): the run's own, or the given manifest's."""
    if manifest is None:
        mpath = Path(info.meta.manifest_path or "")
        name = str(info.meta.manifest or mpath.stem)
        if not mpath.is_file() or state.manifest_path(name).is_file():   # this state dir's own first (it may have moved)
            name, mpath = resolve_manifest(state, name)
        own = state.embeddings_path(info.audio_encoder, name)
        emb = own if own.exists() else Path(info.meta.embeddings or own)
    else:
        name, mpath = resolve_manifest(state, manifest)
        emb = state.embeddings_path(info.audio_encoder, name)
    if not emb.exists():
        raise MtxError(f"no {info.audio_encoder} embeddings for manifest {name!r} ({emb})",
                       hint=f"run `mtx embed --audio-encoder {info.audio_encoder} --manifest {name}` first")
    return name, mpath, emb


def find_checkpoint(state: StateDir, name: str, checkpoint: str | None = None) -> Path | None:
    """A run's saved checkpoint folder: the named one, or best then latest; None when it has neither."""
    run_dir = state.run_dir(name)
    for sub in ([check_checkpoint(checkpoint)] if checkpoint else list(CHECKPOINTS)):
        if (run_dir / sub / WEIGHTS).exists():
            return run_dir / sub
    return None
