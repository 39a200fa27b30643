"""`mtx export --target audiomuse`: a text tower AudioMuse-AI loads in place of its CLAP text model.

AudioMuse-AI's CLAP text model is an ONNX graph with inputs ``input_ids`` and ``attention_mask``
(int64, [batch, sequence]) and one 512-d output, compared by cosine with the stored
``clap_embedding`` vectors. A run trained with ``--audio-encoder audiomuse-clap`` predicts
exactly those vectors, so its export is a drop-in replacement:

    exports/<run>/<checkpoint>/audiomuse/   (or <--out>/audiomuse/)
        clap_text_model.onnx   one output ``text_embedding`` [batch, 512], L2-normalised, in the stored
                               (native, not standardised) CLAP space
        tokenizer files        the run's own tokenizer
        README.md              what to set, the tokenizer note, what was verified
        meta.json

AudioMuse-AI tokenizes queries with the roberta-base tokenizer, padded to 77 tokens. The
export is checked the same way (padding to 77, batch 1 and 4) against PyTorch. The README
says whether the run's tokenizer produces roberta-base's ids (a ``--text-backbone roberta`` run:
nothing to change) or what the user must change (any other backbone).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import MtxError
from ...onnxio import ONNX_TOLERANCE, export_graph, replace_dir, tmp_dir
from ...progress import NullProgress, Progress
from ...runs import RunInfo, export_dir, export_key, resolve_run, weights_identity
from ...state import StateDir, atomic_write_json, atomic_write_text, begin_stage
from .onnx import set_eager_attention

log = logging.getLogger(__name__)

SPACE = "audiomuse-clap"
DIM = 512
AUDIOMUSE_MAX_LENGTH = 77
ONNX_NAME = "clap_text_model.onnx"
OUTPUT = "text_embedding"
ROBERTA_VOCAB = 50265
CHECK = ["calm piano", "an energetic, danceable rock track in A minor at 128 BPM",
         "dark ambient drone with a slow choir and distant bells", "jazz"]


class _Tower:
    """The run's model mapped into AudioMuse-AI's space: native prediction, then L2."""

    @staticmethod
    def build(model):
        import torch

        class Tower(torch.nn.Module):
            def __init__(self, m) -> None:
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                native = self.m(input_ids, attention_mask) * self.m.audio_std + self.m.audio_mean
                return native / native.norm(dim=-1, keepdim=True).clamp_min(1e-12)

        return Tower(model).eval()


def tokenizer_matches_roberta(tokenizer) -> bool:
    """True when the tokenizer gives roberta-base's ids (what AudioMuse-AI feeds the model)."""
    probe = "An energetic rock track"
    name = type(tokenizer).__name__.lower()
    ids = tokenizer(probe)["input_ids"]
    # roberta-base: <s>=0 ... </s>=2, 50265 tokens; a byte-level BPE ("Ġ" prefixed) vocabulary.
    return "roberta" in name and len(tokenizer) == ROBERTA_VOCAB and ids[0] == 0 and ids[-1] == 2


def _encode(model, texts: list[str]) -> dict[str, np.ndarray]:
    enc = model.tokenizer(texts, padding="max_length", truncation=True, max_length=AUDIOMUSE_MAX_LENGTH,
                          return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def verify(model, path: Path) -> dict[str, Any]:
    """onnxruntime vs PyTorch at AudioMuse-AI's padding (77), one query and a batch of four."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tower = _Tower.build(model)
    worst, norms = 0.0, []
    for batch in [CHECK[:1], CHECK]:
        feeds = _encode(model, batch)
        (got,) = sess.run([OUTPUT], feeds)
        with torch.inference_mode():
            ref = tower(torch.as_tensor(feeds["input_ids"]), torch.as_tensor(feeds["attention_mask"])).numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
        norms.extend(np.linalg.norm(got, axis=1).tolist())
        if got.shape != (len(batch), DIM):
            raise MtxError(f"the exported model returns {got.shape}, expected ({len(batch)}, {DIM})")
    return {"max_abs_diff_vs_pytorch": worst, "norm_min": float(min(norms)), "norm_max": float(max(norms)),
            "inputs": [i.name for i in sess.get_inputs()], "outputs": [o.name for o in sess.get_outputs()]}


def _write_onnx(model, tmp: Path, opset: int) -> Path:
    import torch

    path = tmp / ONNX_NAME
    feeds = _encode(model, CHECK[:2])
    export_graph(_Tower.build(model), (torch.as_tensor(feeds["input_ids"]), torch.as_tensor(feeds["attention_mask"])),
                 path, ["input_ids", "attention_mask"], [OUTPUT],
                 {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                  OUTPUT: {0: "batch"}}, opset)
    return path


def readme(info: RunInfo, checkpoint: str, check: dict[str, Any], roberta: bool, max_positions: int | None) -> str:
    size_mb = check["bytes"] / 1e6
    tok = (["The run's tokenizer is roberta-base's (same vocabulary and special tokens), so AudioMuse-AI's own "
            "tokenization (roberta-base, padded to 77) feeds this model the ids it was trained on. Nothing else "
            "to change."] if roberta else
           ["**The tokenizer differs.** AudioMuse-AI tokenizes CLAP queries with `roberta-base` (padded to 77 "
            f"tokens); this model was trained with the tokenizer of `{info.meta.text_backbone}`, which is "
            "shipped in this folder. Fed roberta-base ids, the model returns meaningless vectors. Change the "
            "tokenizer AudioMuse-AI loads for the CLAP text model (`AutoTokenizer.from_pretrained(\"roberta-base\")`"
            " in its CLAP text code) to load this folder instead:",
            "", "```python", "AutoTokenizer.from_pretrained(\"/app/model/mtx-text\")  # this folder", "```", "",
            "and keep the rest as it is (padding to 77, `input_ids` + `attention_mask` as int64). "
            "Alternatively retrain with `--text-backbone roberta`, whose export needs no change."])
    length = [] if max_positions is None or max_positions >= AUDIOMUSE_MAX_LENGTH else [
        "", f"Warning: the backbone has only {max_positions} positions, fewer than the 77 AudioMuse-AI pads to."]
    return "\n".join([
        f"# {info.name}: a CLAP text tower for AudioMuse-AI",
        "",
        f"Trained by mtx (run `{info.name}`, {checkpoint} checkpoint) to predict AudioMuse-AI's stored "
        "`clap_embedding` vectors (audio encoder `audiomuse-clap`), so text queries land in the space your "
        "library was analysed in. No audio model changes: the stored CLAP/DCLAP vectors stay valid.",
        "",
        "## Use it",
        "",
        f"1. Copy this folder next to AudioMuse-AI's models, e.g. `/app/model/mtx-text/` ({size_mb:.1f} MB).",
        f"2. Set `CLAP_TEXT_MODEL_PATH=/app/model/mtx-text/{ONNX_NAME}` (default "
        "`/app/model/clap_text_model.onnx`) and restart AudioMuse-AI.",
        "3. Tokenizer: see below.",
        "",
        "## Tokenizer",
        "",
        *tok,
        *length,
        "",
        "## Interface",
        "",
        "- inputs: `input_ids` int64 [batch, sequence], `attention_mask` int64 [batch, sequence] (1 = token, "
        "0 = padding); any sequence length up to the backbone's limit",
        f"- output: `{OUTPUT}` float32 [batch, {DIM}], L2-normalised, compare by cosine (dot product) with "
        "`clap_embedding`",
        "",
        "## What was verified (at export time)",
        "",
        f"- onnxruntime against PyTorch, tokenized as AudioMuse-AI does (padding to 77), batch 1 and 4: max abs "
        f"difference {check['max_abs_diff_vs_pytorch']:.2g} (limit {ONNX_TOLERANCE:g})",
        f"- output width {DIM}; norms between {check['norm_min']:.6f} and {check['norm_max']:.6f}",
        f"- graph inputs {check['inputs']}, outputs {check['outputs']}",
        "- not verified here: loading inside a running AudioMuse-AI (no instance was available), and search "
        "quality on your library; run `mtx eval --run " + info.name + "` for retrieval metrics on held-out songs",
        "",
    ])


@dataclass
class AudiomuseExport:
    run: str
    out: Path
    paths: dict[str, str]
    onnx_max_abs_diff: float | None
    skipped: bool = False


def export_for_audiomuse(state: StateDir, cfg: Any, progress: Progress | None = None) -> AudiomuseExport:
    """The audiomuse target of `mtx export`; ``cfg`` is the export stage's config (run, checkpoint, out,
    opset, resume), passed in so this building block never imports the stage."""
    from ...encoders.text import TextEmbedder

    progress = progress or NullProgress()
    info = resolve_run(state, cfg.run)
    ckpt = info.checkpoint_dir(cfg.checkpoint)
    model = TextEmbedder.from_pretrained(ckpt).cpu().eval()
    if info.audio_encoder != SPACE or int(model.config.out_dim) != DIM:
        raise MtxError(f"run {info.name!r} predicts {info.audio_encoder} vectors ({model.config.out_dim}-d), "
                       f"not AudioMuse-AI's {DIM}-d CLAP space",
                       hint=f"train with `mtx train --audio-encoder {SPACE}` (after `mtx download audiomuse` and "
                            f"`mtx embed --audio-encoder {SPACE}`)")
    out = export_dir(state, info.name, cfg.checkpoint, cfg.out)
    final = out / "audiomuse"
    key = export_key(info.name, cfg.checkpoint, cfg.out) + ":audiomuse"
    config = {"weights": weights_identity(ckpt), "target": "audiomuse", "opset": cfg.opset, "out": str(out)}
    stage = begin_stage(state, "export", key, config=config, mode=cfg.resume,
                        discard=lambda: shutil.rmtree(final, ignore_errors=True), redo_changed=True,
                        outputs={"audiomuse": final})
    if stage.already_complete and final.exists():
        r = stage.record.result
        return AudiomuseExport(info.name, out, dict(r.get("paths", {})), r.get("onnx_max_abs_diff"), skipped=True)
    set_eager_attention(model.backbone)
    roberta = tokenizer_matches_roberta(model.tokenizer)
    tmp = tmp_dir(out, "audiomuse")
    try:
        with progress.task("Exporting for AudioMuse-AI", total=1, unit="models") as task:
            path = _write_onnx(model, tmp, cfg.opset)
            check = verify(model, path)
            if check["max_abs_diff_vs_pytorch"] > ONNX_TOLERANCE:
                raise MtxError(f"ONNX output differs from PyTorch by {check['max_abs_diff_vs_pytorch']:.3g}",
                               hint="try another --opset")
            check["bytes"] = path.stat().st_size
            model.tokenizer.save_pretrained(tmp)
            max_positions = getattr(model.backbone.config, "max_position_embeddings", None)
            atomic_write_text(tmp / "README.md", readme(info, cfg.checkpoint, check, roberta, max_positions))
            atomic_write_json(tmp / "meta.json", {
                "target": "audiomuse", "run": info.name, "checkpoint": cfg.checkpoint, "space": SPACE, "dim": DIM,
                "onnx": ONNX_NAME, "output": OUTPUT, "tokenizer_is_roberta_base": roberta,
                "audiomuse_max_length": AUDIOMUSE_MAX_LENGTH, "env": {"CLAP_TEXT_MODEL_PATH": ONNX_NAME}, **check})
            replace_dir(tmp, final)
            task.advance()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    paths = {"audiomuse": str(final / ONNX_NAME)}
    log.info("AudioMuse-AI text model: %s (tokenizer %s)", final / ONNX_NAME,
             "roberta-base compatible" if roberta else "differs from roberta-base: see README.md")
    stage.complete(result={"paths": paths, "onnx_max_abs_diff": check["max_abs_diff_vs_pytorch"]})
    return AudiomuseExport(info.name, out, paths, check["max_abs_diff_vs_pytorch"])


__all__ = ["export_for_audiomuse", "tokenizer_matches_roberta", "verify"]
