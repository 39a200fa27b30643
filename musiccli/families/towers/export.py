"""The towers family's ``mtx export`` formats: ``hf/`` (save_pretrained layout + model card) and ``onnx/``.

``hf/`` loads with ``musiccli.TextEmbedder.from_pretrained`` and its ``backbone/`` with plain
``transformers.AutoModel``; a joint run's ``hf/`` also holds ``audio_tower/``. ``onnx/`` is :mod:`.onnx`'s
folder. Both keep what the run was trained on (``training_data`` of its ``run.json``): the model card's
"Training data" section and ``hf/training_data.json``, and ``onnx/meta.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ...onnxio import replace_dir, tmp_dir
from ...runs import RunInfo, latest_eval_report, weights_identity
from ..base import lift_card_lines
from ...state import atomic_write_json, atomic_write_text
from .onnx import export_towers_onnx

log = logging.getLogger(__name__)

TRAINING_DATA = "training_data.json"  # in hf/: what the run was trained on (run.json's training_data)


# --------------------------------------------------------------------------- helpers
def training_data_summary(info: RunInfo) -> dict[str, Any]:
    """What the run was trained on, as its run.json recorded it (not the manifest as it is now)."""
    from ...provenance import run_training_data

    trained = run_training_data(info.meta.to_dict()) or {}
    return {"manifest": trained.get("manifest", info.meta.manifest),
            "manifest_hash": trained.get("manifest_hash", info.meta.manifest_hash), **trained}


def _health_line(model) -> str:
    """The text-tower health figure (musiccli.text_health): a collapsed tower scores near 1."""
    from ...text_health import THRESHOLD, text_tower_health

    figure = text_tower_health(model.encode)
    verdict = "collapsed" if figure > THRESHOLD else "healthy"
    return (f"- text-tower health: mean pairwise cosine of 12 unrelated prompts = {figure:.4f} "
            f"({verdict}; threshold {THRESHOLD})")


def model_card(info: RunInfo, model, checkpoint: str, onnx_diff: float | None) -> str:
    c = model.config
    data = training_data_summary(info)
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
        f"- text backbone: `{info.meta.text_backbone or c.backbone}` ({c.pooling} pooling, "
        f"max length {c.max_length} tokens)",
        f"- head: Linear -> GELU -> Dropout({c.dropout}) -> Linear, hidden {c.hidden_dim}"
        + (f", added to the native {c.native} tower's output (a residual that started at zero)" if c.native else ""),
        f"- checkpoint: `{checkpoint}` of run `{info.name}`",
        _health_line(model),
        "",
        "## Training data",
        "",
        f"- manifest: `{data.get('manifest')}` (hash `{data.get('manifest_hash')}`)",
    ]
    if data.get("sources"):
        from ...provenance import describe

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
        systems = [s for s in ("model", "native", "untrained", "random") if s in res]
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
        lines += lift_card_lines(report)
    else:
        lines.append(f"No evaluation report of these weights yet: run "
                     f"`mtx eval --run {info.name} --checkpoint {checkpoint}`.")
    if c.space == "joint":
        lines += ["", "## Joint space", "",
                  f"This run was trained with the `joint` objective: text and audio both pass through trained "
                  f"heads into a shared {c.out_dim}-d space. Map stored audio vectors with the audio tower in "
                  f"`audio_tower/` (`musiccli.load_towers(\"hf\")`, or "
                  f"`onnx/audio_tower.onnx`), never by standardising them alone."]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from musiccli import load_towers",
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
        atomic_write_json(tmp / TRAINING_DATA, training_data_summary(info))
        final = out / "hf"
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def export_onnx(towers, out: Path, opset: int, training: dict[str, Any] | None = None,
                weights: dict[str, Any] | None = None) -> tuple[Path, float]:
    """``model.onnx`` (text tower) and ``audio_tower.onnx``, each checked against PyTorch, written by
    the code that `mtx train` also uses (:mod:`.onnx`)."""
    return export_towers_onnx(towers, out, opset, weights=weights, training=training)
