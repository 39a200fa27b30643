"""The student family's ONNX: the exported ``onnx/`` folder (``mtx export``, and ``mtx train`` at the end), and
:class:`OnnxStudentText`, its text tower in onnxruntime without torch (a cold ``mtx search``).

``onnx/`` holds::

    student_music_encoder.onnx   mel_spectrogram [N, 1, n_mels, T] (T dynamic) -> music_embedding [N, dim]
    student_text_encoder.onnx    input_ids, attention_mask [N, L] int64       -> text_embedding [N, dim]
    tokenizer.json               the run's WordPiece tokenizer (padding and truncation built in)
    preprocessing.json           sample rate, STFT, mel, log / scale rule and crop: all a client needs
    meta.json                    sizes, the verified differences, dim and the checkpoint's weights identity
    README.md                    the model card

Each graph is verified twice before anything is moved into place:

- parity: onnxruntime against PyTorch on the same inputs (several batch sizes, frame counts and query
  lengths), max abs diff <= 1e-4;
- a plain client check: features computed by :func:`numpy_log_mel` from ``preprocessing.json`` alone
  (the NumPy twin of the training front end, ``.frontend``) and tokens from ``tokenizer.json``
  with the bare ``tokenizers`` library, run through onnxruntime and compared with the PyTorch path
  (torch front end + towers) on a seeded test signal.

The music file must be <= 5 MB and the text file <= 8 MB (10^6 bytes), or the export fails unless
``--allow-large``. ``hf/`` is the checkpoint (``StudentModel.from_pretrained``) plus the model card.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import MtxError
from ...safe_read import load_tokenizer, onnx_session
from ...onnxio import ONNX_TOLERANCE, check_parity, export_graph
from ...state import atomic_write_json, atomic_write_text, read_json
from ..base import lift_card_lines

log = logging.getLogger(__name__)

MUSIC_ONNX = "student_music_encoder.onnx"
TEXT_ONNX = "student_text_encoder.onnx"
PREPROCESSING = "preprocessing.json"
LIMITS_MB = {"music": 5.0, "text": 8.0}
CHECK_QUERIES = ["dark metal", "a calm piano piece for a rainy sunday afternoon with soft strings",
                 "upbeat synth pop with female vocals", "jazz"]


def client_session(path: Path, threads: int | None = None):
    """The onnxruntime session of a plain client: CPU provider, every graph optimisation (ORT's default,
    set explicitly: its blocked NCHWc convolutions ran the music tower 1.4x faster than the basic level),
    ``threads`` intra-op threads (default: onnxruntime's choice)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return onnx_session(path, sess_options=opts, providers=["CPUExecutionProvider"])  # damaged: one line


def test_signal(sr: int, seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """A seeded chirp + chord + noise: broadband enough to exercise every mel band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    chirp = np.sin(2 * np.pi * (60.0 * t + 0.5 * (4000.0 / seconds) * t ** 2))
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    return (0.3 * chirp + 0.1 * chord + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


# --------------------------------------------------------------------------- export + checks
def export_music_graph(tower, path: Path, opset: int = 17, n_mels: int = 128, blocks: int = 3) -> None:
    """The music tower (eval mode) as ONNX: ``mel_spectrogram`` [N, 1, n_mels, T], N and T dynamic."""
    import torch

    mel = torch.rand(2, 1, n_mels, 4 * 2 ** blocks + 3)
    export_graph(tower, (mel,), path, ["mel_spectrogram"], ["music_embedding"],
                 {"mel_spectrogram": {0: "batch", 3: "frames"}, "music_embedding": {0: "batch"}}, opset)


def _export_graphs(model, tmp: Path, opset: int) -> None:
    import torch

    cfg = model.student_config
    export_music_graph(model.music, tmp / MUSIC_ONNX, opset, cfg.n_mels, cfg.blocks)
    tok = model.tokenize(["a short query", "a somewhat longer query about music"])

    class Text(torch.nn.Module):
        def __init__(self, tower) -> None:
            super().__init__()
            self.tower = tower

        def forward(self, input_ids, attention_mask):
            return self.tower(input_ids, attention_mask)

    export_graph(Text(model.text), (tok["input_ids"], tok["attention_mask"]), tmp / TEXT_ONNX,
                 ["input_ids", "attention_mask"], ["text_embedding"],
                 {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                  "text_embedding": {0: "batch"}}, opset)


def _sessions(tmp: Path):
    return client_session(tmp / MUSIC_ONNX), client_session(tmp / TEXT_ONNX)


def parity(model, tmp: Path) -> dict[str, float]:
    """Max abs diff onnxruntime vs PyTorch: mel batches of several frame counts; queries alone and padded."""
    import torch

    music_s, text_s = _sessions(tmp)
    cfg = model.student_config
    rng = np.random.default_rng(0)
    worst_m = worst_t = 0.0
    with torch.inference_mode():
        for n, frames in ((1, 2 ** cfg.blocks), (3, 101), (2, 938)):
            mel = rng.random((n, 1, cfg.n_mels, frames), dtype=np.float32)
            got = music_s.run(["music_embedding"], {"mel_spectrogram": mel})[0]
            ref = model.music(torch.from_numpy(mel)).numpy()
            worst_m = max(worst_m, float(np.abs(got - ref).max()))
        for batch in [[q] for q in CHECK_QUERIES] + [CHECK_QUERIES]:
            tok = model.tokenize(batch)
            feeds = {k: v.numpy() for k, v in tok.items()}
            got = text_s.run(["text_embedding"], feeds)[0]
            ref = model.text(tok["input_ids"], tok["attention_mask"]).numpy()
            worst_t = max(worst_t, float(np.abs(got - ref).max()))
    return {"music": worst_m, "text": worst_t}


def client_check(model, tmp: Path) -> dict[str, float]:
    """Plain-onnxruntime client: features from preprocessing.json (NumPy), tokens from tokenizer.json."""
    import torch
    from tokenizers import Tokenizer

    from .frontend import numpy_log_mel

    music_s, text_s = _sessions(tmp)
    pre = json.loads((tmp / PREPROCESSING).read_text())
    wave = test_signal(int(pre["sample_rate"]))
    got = music_s.run(["music_embedding"], {"mel_spectrogram": numpy_log_mel(wave, pre)})[0]
    tok = Tokenizer.from_file(str(tmp / "tokenizer.json"))
    enc = tok.encode_batch(CHECK_QUERIES)
    feeds = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
    got_t = text_s.run(["text_embedding"], feeds)[0]
    with torch.inference_mode():
        ref = model.embed_waves(torch.from_numpy(wave)[None]).numpy()
        ref_t = model.embed_text(CHECK_QUERIES).numpy()
    return {"music": float(np.abs(got - ref).max()), "text": float(np.abs(got_t - ref_t).max())}


def sizes_mb(tmp: Path) -> dict[str, float]:
    return {"music": (tmp / MUSIC_ONNX).stat().st_size / 1e6, "text": (tmp / TEXT_ONNX).stat().st_size / 1e6}


def check_sizes(sizes: dict[str, float], allow_large: bool) -> None:
    over = [f"{k} {v:.2f} MB > {LIMITS_MB[k]:g} MB" for k, v in sizes.items() if v > LIMITS_MB[k]]
    if over and not allow_large:
        raise MtxError("student ONNX too large: " + "; ".join(over),
                       hint="train a smaller student (--vocab-size, --student-blocks, --student-channels, "
                            "--text-tower mean) or pass --allow-large")


def model_card(run: str, checkpoint: str, model, info_meta: Any, checks: dict[str, Any],
               eval_report: dict[str, Any] | None) -> str:
    c = model.student_config
    teachers = info_meta.teachers or {}
    lines = [
        f"# mtx student: {run}", "",
        "A small two-tower music-text model (the AudioMuse-AI student design), trained by `mtx` from audio, "
        "distilled from teacher embedding stores and aligned with captions by InfoNCE.", "",
        "## Model", "",
        f"- music tower: {c.blocks} x (conv 3x3, BN, ReLU{', residual' if c.residual else ''}, max-pool 2x2), "
        f"channels {c.channels}, global average pool, Dense {c.dim}, L2",
        f"- text tower: WordPiece ({c.vocab_size} pieces, trained on the captions), token embedding "
        f"{c.text_width}, {'mean pooling' if c.text_encoder == 'mean' else f'{c.text_layers}-layer {c.text_heads}-head transformer + mean pooling'}, "
        f"Dense {c.dim}, L2 (max {c.max_length} tokens)",
        "- teachers: " + (", ".join(f"`{t}` (dim {v.get('dim')}, weight {v.get('weight')})" for t, v in teachers.items())
                          or "none"),
        f"- checkpoint: `{checkpoint}`; manifest `{info_meta.manifest}`", "",
        "## Files", "",
        f"- `{MUSIC_ONNX}` ({checks['sizes_mb']['music']:.2f} MB): `mel_spectrogram` [N, 1, {c.n_mels}, T] -> "
        f"`music_embedding` [N, {c.dim}]",
        f"- `{TEXT_ONNX}` ({checks['sizes_mb']['text']:.2f} MB): `input_ids`, `attention_mask` -> "
        f"`text_embedding` [N, {c.dim}]",
        "- `tokenizer.json`, `preprocessing.json` (features: see below)", "",
        "## Features", "",
        f"{c.sample_rate} Hz mono; STFT n_fft {c.n_fft}, hop {c.hop}, periodic Hann, centred (reflect); power; "
        f"{c.n_mels} HTK-mel bands {c.fmin:g}-{c.fmax:g} Hz (peak-1 triangles); 10 log10(max(mel, {c.amin:g})) "
        f"minus the clip max, floored at -{c.top_db:g} dB; per-clip min-max to [0, 1]. Crops of {c.crop_s:g} s; "
        "a long track is cut into crops and the L2-normalised mean of their vectors is its vector.", "",
        "## Verification", "",
        f"- onnxruntime vs PyTorch: music {checks['parity']['music']:.2g}, text {checks['parity']['text']:.2g} "
        f"(limit {ONNX_TOLERANCE:g})",
        f"- NumPy features from preprocessing.json + tokenizer.json, onnxruntime vs PyTorch: music "
        f"{checks['client']['music']:.2g}, text {checks['client']['text']:.2g}",
    ]
    if eval_report:
        res = eval_report.get("results", {})
        lines += ["", "## Evaluation", "", f"Split `{eval_report.get('split')}`:", ""]
        for sysname, r in res.items():
            lines.append(f"- {sysname}: text->music R@10 {r['text_to_music']['R@10']:.3f}, "
                         f"tag ROC-AUC {r.get('tags', {}).get('roc_auc', float('nan')):.3f}")
        for t, v in (eval_report.get("teacher_cosine") or {}).items():
            lines.append(f"- cosine to teacher `{t}`: {v:.3f}")
        lines += lift_card_lines(eval_report)
    else:
        lines += ["", f"No evaluation yet: run `mtx eval --run {run}`."]
    lines += ["", "## Usage (no PyTorch)", "", "```python", "import json, numpy as np, onnxruntime as ort",
              "from tokenizers import Tokenizer", "",
              'tok = Tokenizer.from_file("tokenizer.json")',
              'text = ort.InferenceSession("student_text_encoder.onnx")',
              'e = tok.encode_batch(["dark metal"])',
              'q = text.run(None, {"input_ids": np.array([x.ids for x in e]), '
              '"attention_mask": np.array([x.attention_mask for x in e])})[0]',
              "# music: compute mel_spectrogram as preprocessing.json says, then",
              '# ort.InferenceSession("student_music_encoder.onnx").run(None, {"mel_spectrogram": mel})',
              "```", "",
              "## Licence", "",
              "Trained from scratch; the training audio and captions come from the manifest's datasets, each "
              "under its own licence (see each record's `license`).", ""]
    return "\n".join(lines)


def build_onnx_dir(model, tmp: Path, opset: int, allow_large: bool) -> dict[str, Any]:
    """Write and verify the onnx/ folder's content into ``tmp``; returns the checks."""
    model = model.cpu().eval()
    _export_graphs(model, tmp, opset)
    sizes = sizes_mb(tmp)
    log.info("student ONNX sizes: music %.2f MB, text %.2f MB", sizes["music"], sizes["text"])
    check_sizes(sizes, allow_large)
    model.tokenizer.save(str(tmp / "tokenizer.json"))
    atomic_write_json(tmp / PREPROCESSING, model.student_config.preprocessing())
    par = parity(model, tmp)
    check_parity(max(par.values()), "the student ONNX")
    client = client_check(model, tmp)
    check_parity(max(client.values()), "a client following preprocessing.json",
                 hint="the front end and preprocessing.json disagree")
    return {"sizes_mb": sizes, "parity": par, "client": client}


def write_card(tmp: Path, text: str) -> None:
    atomic_write_text(tmp / "README.md", text)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def onnx_mismatch(onnx_dir: Path, weights: dict[str, Any]) -> str | None:
    """Why ``onnx_dir`` cannot serve the checkpoint with identity ``weights`` (None: it can)."""
    onnx_dir = Path(onnx_dir)
    if not all((onnx_dir / f).exists() for f in (TEXT_ONNX, "tokenizer.json", "meta.json")):
        return "no ONNX export"
    meta = read_json(onnx_dir / "meta.json")
    if "weights" not in meta:
        return "the ONNX export predates the torch-free format"
    if meta.get("weights") != weights:
        return "the ONNX export is of other weights"
    return None


class OnnxStudentText:
    """The student's text tower through onnxruntime and ``tokenizer.json`` alone (no torch): the cold search
    path. Stored student rows are window means of unit vectors; ``audio_for_retrieval`` normalises them,
    as ``StudentModel.audio_for_retrieval`` does."""

    def __init__(self, onnx_dir: Path) -> None:
        onnx_dir = Path(onnx_dir)
        self.session = client_session(onnx_dir / TEXT_ONNX)
        self.tokenizer = load_tokenizer(onnx_dir / "tokenizer.json")
        self.dim = int(read_json(onnx_dir / "meta.json")["dim"])

    def encode(self, texts: list[str], batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        out = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(list(texts[s:s + batch_size]))
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            if ids.shape[1] == 0:   # only empty texts: one pad column keeps shapes valid (as the torch path)
                ids, mask = np.zeros((len(enc), 1), np.int64), np.zeros((len(enc), 1), np.int64)
            out.append(self.session.run(["text_embedding"], {"input_ids": ids, "attention_mask": mask})[0])
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @property
    def audio_in_dim(self) -> int:
        """Stored student rows live in the shared space itself."""
        return self.dim

    def audio_for_retrieval(self, audio: np.ndarray) -> np.ndarray:
        a = np.asarray(audio, dtype=np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
