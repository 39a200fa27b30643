"""The run folder: the contract between `mtx train` and everything that reads a run.

``runs/<run>/`` holds ``run.json`` (what was trained on what), one folder per checkpoint
(``best/``, ``latest/``) and the eval reports. Eval reports and exports name the checkpoint
they were made from, so evaluating best, then latest, then best again never returns one
checkpoint's numbers for the other::

    runs/<run>/eval-<split>-<checkpoint>.json
    exports/<run>/<checkpoint>/{hf,onnx}/

``eval``, ``export`` and ``search`` import these helpers; none reads another's module.
:func:`load_towers` is the one way any of them (and ``--init-from``) gets a checkpoint's two
towers: the text embedder, and the audio tower its vectors are compared with (the identity
after standardising for ``align`` runs, the trained head in ``audio_tower/`` for ``joint`` runs).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MtxError, unknown_choice
from .manifest import resolve_manifest
from .state import StateDir, file_sha256, read_json

if TYPE_CHECKING:
    from .encoders.towers import Towers

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
CHECKPOINTS = ("best", "latest")
WEIGHTS = "model.safetensors"
AUDIO_TOWER_DIR = "audio_tower"   # beside the text tower in a joint run's checkpoint (and in hf/ exports)


@dataclass
class RunInfo:
    """A trained run as described by its ``run.json``."""

    name: str
    dir: Path
    meta: dict[str, Any]

    @property
    def audio_encoder(self) -> str:
        return str(self.meta.get("audio_encoder", ""))

    @property
    def objective(self) -> str:
        """What trained it (``training.objectives``): align and joint runs load through :func:`load_towers`;
        a ``student`` run holds its own two towers (``encoders.student.StudentModel``)."""
        return str(self.meta.get("objective") or "align")

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
    return RunInfo(name=name, dir=path, meta=read_json(meta_path))


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
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def run_manifest_and_store(state: StateDir, info: RunInfo, manifest: str | None) -> tuple[str, Path, Path]:
    """(manifest name, manifest path, embeddings path): the run's own, or the given manifest's."""
    if manifest is None:
        mpath = Path(info.meta.get("manifest_path") or "")
        name = str(info.meta.get("manifest") or mpath.stem)
        if not mpath.is_file():
            name, mpath = resolve_manifest(state, name)
        emb = Path(info.meta.get("embeddings") or state.embeddings_path(info.audio_encoder, name))
    else:
        name, mpath = resolve_manifest(state, manifest)
        emb = state.embeddings_path(info.audio_encoder, name)
    if not emb.exists():
        raise MtxError(f"no {info.audio_encoder} embeddings for manifest {name!r} ({emb})",
                       hint=f"run `mtx embed --audio-encoder {info.audio_encoder} --manifest {name}` first")
    return name, mpath, emb


# --------------------------------------------------------------------------- the run's towers
def load_towers(ckpt_dir: str | Path, device: Any = "cpu") -> "Towers":
    """The text embedder and audio tower saved in ``ckpt_dir`` (a run checkpoint or an export's hf/)."""
    from .encoders.text import CONFIG_NAME, TextEmbedder
    from .encoders.towers import AudioTower, Towers

    ckpt_dir = Path(ckpt_dir)
    text = TextEmbedder.from_pretrained(ckpt_dir, device=device)
    if (ckpt_dir / AUDIO_TOWER_DIR / CONFIG_NAME).exists():
        audio = AudioTower.from_pretrained(ckpt_dir / AUDIO_TOWER_DIR, device=device)
    else:
        if text.config.space == "joint":
            raise MtxError(f"{ckpt_dir} holds a joint-space text tower but no {AUDIO_TOWER_DIR}/",
                           hint="the checkpoint is incomplete: retrain or re-export it")
        audio = AudioTower.identity(text.audio_mean, text.audio_std).to(device).eval()
    if audio.dim != text.config.out_dim:
        raise MtxError(f"{ckpt_dir}: the text tower outputs {text.config.out_dim} dims, the audio tower "
                       f"{audio.dim}", hint="the checkpoint is inconsistent: retrain it")
    return Towers(text, audio)
