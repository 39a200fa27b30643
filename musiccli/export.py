"""Export a trained run: ``hf/`` (save_pretrained layout + model card) and ``onnx/``.

``hf/`` loads with ``musiccli.TextEmbedder.from_pretrained`` and its ``backbone/``
with plain ``transformers.AutoModel``. ``onnx/model.onnx`` takes ``input_ids`` and
``attention_mask`` (dynamic batch and sequence axes) and returns ``embedding``
(L2-normalised retrieval-space vector) and ``audio_space`` (the prediction in the
audio encoder's native space; align runs only); the tokenizer files sit next to it.
``onnx/audio_tower.onnx`` maps raw stored vectors to unit vectors in the same space (the
standardisation, plus the trained audio head of joint runs, whose ``hf/`` also holds
``audio_tower/``). Both graphs are checked against PyTorch with onnxruntime and the export
fails above 1e-4.

Both keep what the run was trained on (``training_data`` of its ``run.json``): the model
card's "Training data" section and ``hf/training_data.json``, and ``onnx/meta.json``.

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
from .onnx_text import export_towers_onnx, replace_dir, tmp_dir
from .progress import NullProgress, Progress
from .runs import RunInfo, export_dir, export_key, latest_eval_report, resolve_run, weights_identity
from .state import Resume, StateDir, atomic_write_json, atomic_write_text, begin_stage, stage_function

log = logging.getLogger(__name__)

FORMATS = ("hf", "onnx")
TARGETS = ("mtx", "audiomuse")
TRAINING_DATA = "training_data.json"  # in hf/: what the run was trained on (run.json's training_data)


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


# --------------------------------------------------------------------------- helpers
def _training_data_summary(info: RunInfo) -> dict[str, Any]:
    """What the run was trained on, as its run.json recorded it (not the manifest as it is now)."""
    from .provenance import run_training_data

    trained = run_training_data(info.meta) or {}
    return {"manifest": trained.get("manifest", info.meta.get("manifest")),
            "manifest_hash": trained.get("manifest_hash", info.meta.get("manifest_hash")), **trained}


def model_card(info: RunInfo, model, checkpoint: str, onnx_diff: float | None) -> str:
    c = model.config
    data = _training_data_summary(info)
    lines = [
        f"# mtx text embedder: {info.name}",
        "",
        f"Text-to-music retrieval model trained with `mtx`. It maps text into the embedding space of the "
        f"**{c.audio_encoder or info.audio_encoder}** audio encoder, so text queries can be compared with "
        f"stored audio embeddings.",
        "",
        "## Model",
        "",
        f"- audio encoder: `{c.audio_encoder or info.audio_encoder}` (aggregation: `{c.aggregation or 'unknown'}`)",
        f"- output dim: {c.out_dim} (every dimension comes from the learned head)",
        f"- text backbone: `{info.meta.get('text_backbone') or c.backbone}` ({c.pooling} pooling, "
        f"max length {c.max_length} tokens)",
        f"- head: Linear -> GELU -> Dropout({c.dropout}) -> Linear, hidden {c.hidden_dim}",
        f"- checkpoint: `{checkpoint}` of run `{info.name}`",
        "",
        "## Training data",
        "",
        f"- manifest: `{data.get('manifest')}` (hash `{data.get('manifest_hash')}`)",
    ]
    if data.get("sources"):
        from .provenance import describe

        synthetic = set(data.get("synthetic") or ())
        lines.append(f"- trained on: the `{data.get('split', 'train')}` split, {data.get('tracks')} tracks")
        lines.append("- sources: " + describe(data["sources"], synthetic))
        if set(data["sources"]) <= synthetic:
            lines += ["", "**Trained only on synthetic clips.** This model shows the pipeline and its resume "
                          "contract; it is not a search model for real music, where its results are near chance."]
        else:
            lines += ["", "Expect weaker results on music unlike these sources; `mtx search` and `mtx eval` "
                          "say so when a library holds other sources."]
    else:
        lines.append("- sources: not recorded (trained before `mtx` recorded them, and the manifest has changed)")
    report = latest_eval_report(info.dir, checkpoint)
    if report and report.get("inputs", {}).get("weights") != weights_identity(info.dir / checkpoint):
        log.info("the %s eval report of run %s is of older weights; the model card leaves it out", checkpoint,
                 info.name)
        report = None
    lines += ["", "## Evaluation", ""]
    if report:
        res = report.get("results", {})
        systems = [s for s in ("model", "untrained", "random") if s in res]
        lines.append(f"Split `{report.get('split')}` of `{report.get('manifest')}`, "
                     f"{report.get('counts', {}).get('tracks')} tracks; median rank is 1-based.")
        lines += ["", "| metric | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
        for task in ("text_to_music", "music_to_text"):
            for m in ("R@1", "R@5", "R@10", "mAP@10", "MRR", "MedR"):
                vals = [res[s][task][m] for s in systems]
                lines.append(f"| {task.replace('_', ' ')} {m} | " + " | ".join(f"{v:.4g}" for v in vals) + " |")
        for m in ("roc_auc", "pr_auc"):
            vals = [res[s].get("tags", {}).get(m) for s in systems]
            lines.append(f"| tags {m} | " + " | ".join("" if v is None else f"{v:.4g}" for v in vals) + " |")
    else:
        lines.append(f"No evaluation report of these weights yet: run "
                     f"`mtx eval --run {info.name} --checkpoint {checkpoint}`.")
    if c.space == "joint":
        lines += ["", "## Joint space", "",
                  f"This run was trained with the `joint` objective: text and audio both pass through trained "
                  f"heads into a shared {c.out_dim}-d space. Map stored audio vectors with the audio tower in "
                  f"`audio_tower/` (`musiccli.runs.load_towers(\"hf\")`, or "
                  f"`onnx/audio_tower.onnx`), never by standardising them alone."]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from musiccli.runs import load_towers",
        "",
        'towers = load_towers("hf")                         # text tower + audio tower',
        'q = towers.text.encode(["dark metal"])            # unit vectors, retrieval space',
        "scores = towers.audio.audio_for_retrieval(stored_audio_vectors) @ q[0]",
        "```",
        "",
        "ONNX (no PyTorch needed):",
        "",
        "```python",
        "import onnxruntime as ort",
        "from transformers import AutoTokenizer",
        "",
        'tok = AutoTokenizer.from_pretrained("onnx")',
        'sess = ort.InferenceSession("onnx/model.onnx")',
        f'enc = tok(["dark metal"], padding=True, truncation=True, max_length={c.max_length}, return_tensors="np")',
        'emb = sess.run(["embedding"], {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]',
        'audio = ort.InferenceSession("onnx/audio_tower.onnx").run(None, {"audio": stored_audio_vectors})[0]',
        "scores = audio @ emb[0]",
        "```",
        "",
        "`onnx/audio_tower.onnx` maps raw stored audio vectors to unit vectors in the same space "
        "(standardised with the run's audio statistics, then through the audio head of joint runs).",
    ]
    if onnx_diff is not None:
        lines += ["", f"ONNX max abs diff vs PyTorch: {onnx_diff:.2g}"]
    lines += [
        "",
        "## Licence",
        "",
        "The weights inherit the licence of the text backbone. The training audio and captions come from "
        "the datasets listed above, each under its own licence (see each record's `license` field); check "
        "them before using this model commercially.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- formats
def export_hf(info: RunInfo, towers, checkpoint: str, out: Path, onnx_diff: float | None) -> Path:
    """``towers.save_pretrained``: the text embedder, plus ``audio_tower/`` for joint runs."""
    tmp = tmp_dir(out, "hf")
    try:
        towers.save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", model_card(info, towers.text, checkpoint, onnx_diff))
        atomic_write_json(tmp / TRAINING_DATA, _training_data_summary(info))
        final = out / "hf"
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def export_onnx(towers, out: Path, opset: int, training: dict[str, Any] | None = None,
                weights: dict[str, Any] | None = None) -> tuple[Path, float]:
    """``model.onnx`` (text tower) and ``audio_tower.onnx``, each checked against PyTorch, written by
    the building block that `mtx train` also uses (``onnx_text``)."""
    return export_towers_onnx(towers, out, opset, weights=weights, training=training)


# --------------------------------------------------------------------------- the stage
def onnx_available() -> bool:
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@stage_function
def run_export(state: StateDir, cfg: ExportConfig, progress: Progress | None = None) -> ExportResult:
    from .runs import load_towers

    progress = progress or NullProgress()
    if cfg.target not in TARGETS:
        raise unknown_choice("export target", cfg.target, TARGETS)
    if cfg.target == "audiomuse":
        if not onnx_available():
            raise MtxError("the AudioMuse-AI export is ONNX and needs the onnx and onnxruntime packages",
                           hint="pip install 'musiccli[onnx]'")
        from .export_audiomuse import export_for_audiomuse

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
    if info.objective == "student":
        return _export_student(state, cfg, info, formats, progress)
    ckpt = info.checkpoint_dir(cfg.checkpoint)
    out = export_dir(state, info.name, cfg.checkpoint, cfg.out)
    key = export_key(info.name, cfg.checkpoint, cfg.out)
    config = {"weights": weights_identity(ckpt), "formats": list(formats), "opset": cfg.opset, "out": str(out)}

    def discard() -> None:
        for f in formats:
            shutil.rmtree(out / f, ignore_errors=True)

    # An export of older weights (or to another folder) is simply redone: exporting is deterministic
    # and cheap, and refusing would make "train more, export again" need --force.
    stage = begin_stage(state, "export", key, config=config, mode=cfg.resume, discard=discard, redo_changed=True,
                        outputs={f: out / f for f in formats})
    if stage.already_complete and all((out / f).exists() for f in formats):
        r = stage.record.result
        return ExportResult(info.name, cfg.checkpoint, out, dict(r.get("paths", {})), r.get("onnx_max_abs_diff"),
                            skipped=True)
    done: dict[str, str] = dict(stage.record.counters.get("paths", {})) if stage.resumed else {}
    diff: float | None = stage.record.counters.get("onnx_max_abs_diff") if stage.resumed else None
    towers = load_towers(ckpt)
    log.info("exporting run %s (%s checkpoint) to %s", info.name, cfg.checkpoint, out)
    # ONNX first, so the model card in hf/ can quote the verified difference.
    order = [f for f in ("onnx", "hf") if f in formats]
    with progress.task("Exporting", total=len(order), unit="formats", completed=len(done)) as task:
        for f in order:
            progress.check_interrupt()
            if f in done and Path(done[f]).exists():
                continue
            if f == "onnx":
                path, diff = export_onnx(towers, out, cfg.opset, _training_data_summary(info), config["weights"])
                log.info("ONNX max abs diff vs PyTorch: %.2g", diff)
            else:
                path = export_hf(info, towers, cfg.checkpoint, out, diff)
            done[f] = str(path)
            stage.update(paths=done, onnx_max_abs_diff=diff)
            task.advance()
    stage.complete(result={"paths": done, "onnx_max_abs_diff": diff})
    return ExportResult(info.name, cfg.checkpoint, out, done, diff)



def _export_student(state: StateDir, cfg: ExportConfig, info: RunInfo, formats: tuple[str, ...],
                    progress: Progress) -> ExportResult:
    """A student run: onnx/ (both towers, tokenizer, preprocessing.json, verified) and hf/ (the checkpoint)."""
    from . import export_student as es
    from .encoders.student import StudentModel

    ckpt = info.checkpoint_dir(cfg.checkpoint)
    out = export_dir(state, info.name, cfg.checkpoint, cfg.out)
    config = {"weights": weights_identity(ckpt), "formats": list(formats), "opset": cfg.opset, "out": str(out),
              "allow_large": cfg.allow_large}

    def discard() -> None:
        for f in formats:
            shutil.rmtree(out / f, ignore_errors=True)

    stage = begin_stage(state, "export", export_key(info.name, cfg.checkpoint, cfg.out), config=config,
                        mode=cfg.resume, discard=discard, redo_changed=True, outputs={f: out / f for f in formats})
    if stage.already_complete and all((out / f).exists() for f in formats):
        r = stage.record.result
        return ExportResult(info.name, cfg.checkpoint, out, dict(r.get("paths", {})), r.get("onnx_max_abs_diff"),
                            skipped=True, details=dict(r.get("details", {})))
    done: dict[str, str] = dict(stage.record.counters.get("paths", {})) if stage.resumed else {}
    checks: dict[str, Any] = dict(stage.record.counters.get("details", {})) if stage.resumed else {}
    model = StudentModel.from_pretrained(ckpt)
    report = latest_eval_report(info.dir, cfg.checkpoint)
    order = [f for f in ("onnx", "hf") if f in formats]
    log.info("exporting student run %s (%s checkpoint) to %s", info.name, cfg.checkpoint, out)
    with progress.task("Exporting", total=len(order), unit="formats", completed=len(done)) as task:
        for f in order:
            progress.check_interrupt()
            if f in done and Path(done[f]).exists():
                continue
            tmp = tmp_dir(out, f)
            try:
                if f == "onnx":
                    checks = es.build_onnx_dir(model, tmp, cfg.opset, cfg.allow_large)
                    atomic_write_json(tmp / "meta.json", {**checks, "opset": cfg.opset, "run": info.name,
                                                          "checkpoint": cfg.checkpoint})
                else:
                    model.save_pretrained(tmp)
                if checks:
                    es.write_card(tmp, es.model_card(info.name, cfg.checkpoint, model, info.meta, checks, report))
                replace_dir(tmp, out / f)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            done[f] = str(out / f)
            stage.update(paths=done, details=checks)
            task.advance()
    diff = max(checks["parity"].values()) if checks else None
    stage.complete(result={"paths": done, "onnx_max_abs_diff": diff, "details": checks})
    return ExportResult(info.name, cfg.checkpoint, out, done, diff, details=checks)
