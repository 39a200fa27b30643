"""Export a trained run: ``hf/`` (save_pretrained layout + model card) and ``onnx/`` (torch-free inference).

What each format holds is the run's model family's business (``families.<name>.export_format``:
the towers' ``model.onnx`` + ``audio_tower.onnx``, the student's two towers + ``preprocessing.json``);
every ONNX graph is checked against PyTorch with onnxruntime and the export fails above 1e-4
(``onnxio``). This stage owns the contract: the key and folder per checkpoint (``runs.export_dir``),
ONNX first (so the model card can quote the verified difference), one committed unit per format, and
``--target audiomuse`` (AudioMuse-AI's CLAP text-model interface, towers runs of the CLAP space).

Each format is built in a temporary folder and renamed into place, so an
interrupted export never leaves a half-written ``hf/`` or ``onnx/``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MtxError, unknown_choice
from .families import family_for
from .families.base import ExportJob
from .progress import NullProgress, Progress
from .runs import export_dir, export_key, resolve_run, weights_identity
from .state import Resume, StateDir, begin_stage, stage_function

log = logging.getLogger(__name__)

FORMATS = ("hf", "onnx")
TARGETS = ("mtx", "audiomuse")


@dataclass
class ExportConfig:
    run: str | None = None
    checkpoint: str = "best"
    formats: tuple[str, ...] = FORMATS
    opset: int = 17
    out: Path | None = None
    target: str = "mtx"               # mtx: hf/ + onnx/; audiomuse: AudioMuse-AI's CLAP text-model interface
    allow_large: bool = False   # student runs: allow ONNX files above 5 MB (music) / 8 MB (text)
    resume: Resume = Resume.FRESH


@dataclass
class ExportResult:
    run: str
    checkpoint: str
    out: Path
    paths: dict[str, str] = field(default_factory=dict)
    onnx_max_abs_diff: float | None = None
    skipped: bool = False
    details: dict[str, Any] = field(default_factory=dict)   # student: ONNX sizes and both checks


# --------------------------------------------------------------------------- the stage
def onnx_available() -> bool:
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@stage_function
def run_export(state: StateDir, cfg: ExportConfig, progress: Progress | None = None) -> ExportResult:
    progress = progress or NullProgress()
    if cfg.target not in TARGETS:
        raise unknown_choice("export target", cfg.target, TARGETS)
    _check_out(cfg.out)
    if cfg.target == "audiomuse":
        if not onnx_available():
            raise MtxError("the AudioMuse-AI export is ONNX and needs the onnx and onnxruntime packages",
                           hint="pip install 'musiccli[onnx]'")
        from .families.towers.audiomuse import export_for_audiomuse

        r = export_for_audiomuse(state, cfg, progress)
        return ExportResult(r.run, cfg.checkpoint, r.out, r.paths, r.onnx_max_abs_diff, skipped=r.skipped)
    for f in cfg.formats:
        if f not in FORMATS:
            raise unknown_choice("export format", f, FORMATS)
    formats = tuple(f for f in FORMATS if f in cfg.formats)
    if not formats:
        raise MtxError("no export format chosen", hint="use --format hf and/or --format onnx")
    if "onnx" in formats and not onnx_available():
        raise MtxError("ONNX export needs the onnx and onnxruntime packages",
                       hint="pip install 'musiccli[onnx]', or export only --format hf")
    info = resolve_run(state, cfg.run)
    family = family_for(info)
    ckpt = info.checkpoint_dir(cfg.checkpoint)
    out = export_dir(state, info.name, cfg.checkpoint, cfg.out)
    job = ExportJob(info, cfg.checkpoint, ckpt, out, cfg.opset, cfg.allow_large, weights_identity(ckpt))
    config = {"weights": job.weights, "formats": list(formats), "opset": cfg.opset, "out": str(out),
              **family.export_config(job)}

    def discard() -> None:
        for f in formats:
            shutil.rmtree(out / f, ignore_errors=True)

    # An export of older weights (or to another folder) is simply redone: exporting is deterministic
    # and cheap, and refusing would make "train more, export again" need --force.
    stage = begin_stage(state, "export", export_key(info.name, cfg.checkpoint, cfg.out), config=config,
                        mode=cfg.resume, discard=discard, redo_changed=True, outputs={f: out / f for f in formats})
    if stage.already_complete and all((out / f).exists() for f in formats):
        r = stage.record.result
        return ExportResult(info.name, cfg.checkpoint, out, dict(r.get("paths", {})), r.get("onnx_max_abs_diff"),
                            skipped=True, details=dict(r.get("details", {})))
    done: dict[str, str] = dict(stage.record.counters.get("paths", {})) if stage.resumed else {}
    if stage.resumed:
        job.diff = stage.record.counters.get("onnx_max_abs_diff")
        job.details = dict(stage.record.counters.get("details", {}))
    model = family.load(ckpt)
    log.info("exporting run %s (%s checkpoint) to %s", info.name, cfg.checkpoint, out)
    # ONNX first, so the model card in hf/ can quote the verified difference.
    order = [f for f in ("onnx", "hf") if f in formats]
    with progress.task("Exporting", total=len(order), unit="formats", completed=len(done)) as task:
        for f in order:
            progress.check_interrupt()
            if f in done and Path(done[f]).exists():
                continue
            done[f] = str(family.export_format(f, model, job))
            if f == "onnx" and job.diff is not None:
                log.info("ONNX max abs diff vs PyTorch: %.2g", job.diff)
            stage.update(paths=done, onnx_max_abs_diff=job.diff, details=job.details)
            task.advance()
    stage.complete(result={"paths": done, "onnx_max_abs_diff": job.diff, "details": job.details})
    return ExportResult(info.name, cfg.checkpoint, out, done, job.diff, details=job.details)


def _check_out(out: Path | None) -> None:
    """``--out`` names a folder: an existing file there is refused before any work."""
    if out is not None and Path(out).expanduser().exists() and not Path(out).expanduser().is_dir():
        raise MtxError(f"--out {out} is a file, not a folder", hint="pass a folder (new or existing) for the export")
