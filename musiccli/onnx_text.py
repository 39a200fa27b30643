"""The exported ONNX text tower: building it (needs torch) and running it (needs only onnxruntime).

Both `mtx export` and the end of `mtx train` write the same folder through
:func:`export_text_onnx`; `mtx search` reads it through :class:`OnnxTextModel`
without importing torch or transformers, which is what makes a cold search fast.

Folder layout (``exports/<run>/<checkpoint>/onnx/``, ``runs.export_dir``)::

    model.onnx              input_ids, attention_mask -> embedding (unit, retrieval space), audio_space
    tokenizer.json ...      the fast tokenizer (plus the transformers files, for AutoTokenizer)
    audio_stats.safetensors audio_mean / audio_std (numpy): maps store rows into the retrieval space
    meta.json               dims, max_length, pad token, the checkpoint's weights identity, parity

``meta.json`` is written inside a temporary folder that is renamed into place, so a
present folder is always complete. The weights identity lets a reader tell whether
the export belongs to the checkpoint it is about to use.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MtxError
from .state import TMP_PREFIX, atomic_write_json, read_json

log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4
MODEL_FILE = "model.onnx"
STATS_FILE = "audio_stats.safetensors"
# Queries of different lengths, so the check exercises padding and the dynamic axes.
CHECK_QUERIES = ["dark metal", "a calm piano piece for a rainy sunday afternoon with soft strings",
                 "upbeat 80s synth pop with female vocals", "jazz"]


# --------------------------------------------------------------------------- folders
def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place (the old one, if any, is removed first)."""
    if final.exists():
        old = final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def tmp_dir(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}.", dir=parent))


# --------------------------------------------------------------------------- export (torch)
class _Wrapper:
    """Built lazily (needs torch): returns (normalised retrieval vector, native audio-space vector)."""

    @staticmethod
    def build(model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, m) -> None:
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                z = self.m(input_ids, attention_mask)
                emb = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                return emb, z * self.m.audio_std + self.m.audio_mean

        return Wrapper(model).eval()


def _torch_reference(model, feeds: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    wrapper = _Wrapper.build(model)
    with torch.inference_mode():
        emb, audio = wrapper(torch.as_tensor(feeds["input_ids"]), torch.as_tensor(feeds["attention_mask"]))
    return emb.numpy(), audio.numpy()


def verify_onnx(model, onnx_path: Path, queries: list[str] = CHECK_QUERIES) -> float:
    """Max abs difference between onnxruntime and PyTorch, over single and padded batches."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in [[q] for q in queries] + [queries]:
        enc = model.tokenizer(batch, padding=True, truncation=True, max_length=model.config.max_length,
                              return_tensors="np")
        feeds = {"input_ids": enc["input_ids"].astype(np.int64),
                 "attention_mask": enc["attention_mask"].astype(np.int64)}
        got_emb, got_audio = sess.run(["embedding", "audio_space"], feeds)
        ref_emb, ref_audio = _torch_reference(model, feeds)
        worst = max(worst, float(np.abs(got_emb - ref_emb).max()), float(np.abs(got_audio - ref_audio).max()))
    return worst


def _set_eager_attention(backbone) -> None:
    setter = getattr(backbone, "set_attn_implementation", None)
    if callable(setter):
        try:
            setter("eager")
            return
        except (ValueError, TypeError, AttributeError):
            pass
    backbone.config._attn_implementation = "eager"


def export_text_onnx(model, out: Path, opset: int = 17, weights: dict[str, Any] | None = None,
                     training: dict[str, Any] | None = None) -> tuple[Path, float]:
    """Write ``out/onnx/`` for a ``TextEmbedder``; returns (model.onnx path, max abs diff vs PyTorch).

    ``weights`` is the checkpoint's identity (``weights_identity``), recorded so that search can
    tell whether the export matches the checkpoint an index was built for.
    """
    import torch
    from safetensors.numpy import save_file

    tmp = tmp_dir(out, "onnx")
    try:
        model = model.cpu().eval()
        # The eager attention path traces into a plain graph; SDPA mask helpers trip the exporter.
        _set_eager_attention(model.backbone)
        enc = model.tokenizer(["a short query", "a somewhat longer query about music"], padding=True,
                              return_tensors="pt")
        path = tmp / MODEL_FILE
        # The legacy exporter's deprecation and tracer notices are expected here: the trace is
        # checked numerically right below, on lengths and batch sizes other than the traced ones.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Wrapper.build(model), (enc["input_ids"], enc["attention_mask"]), str(path),
                input_names=["input_ids", "attention_mask"], output_names=["embedding", "audio_space"],
                dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                              "embedding": {0: "batch"}, "audio_space": {0: "batch"}},
                opset_version=opset, dynamo=False, do_constant_folding=True,
            )
        diff = verify_onnx(model, path)
        if diff > ONNX_TOLERANCE:
            raise MtxError(f"ONNX output differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE:g})",
                           hint="try another --opset; the hf/ export is unaffected")
        tok = model.tokenizer
        tok.save_pretrained(tmp)
        if not (tmp / "tokenizer.json").exists():
            raise MtxError("the text backbone's tokenizer has no fast (tokenizer.json) version",
                           hint="use a backbone with a fast tokenizer (minilm, roberta, distilbert)")
        save_file({"audio_mean": model.audio_mean.detach().cpu().numpy().astype(np.float32),
                   "audio_std": model.audio_std.detach().cpu().numpy().astype(np.float32)}, str(tmp / STATS_FILE))
        c = model.config
        # A run with a learned audio head (joint / student objectives) maps store rows through it;
        # this export carries the text tower only, so search must not use it to map audio.
        audio_heads = [n for n, _ in model.named_children() if "audio" in n.lower()]
        atomic_write_json(tmp / "meta.json", {
            "inputs": ["input_ids", "attention_mask"], "outputs": {
                "embedding": "L2-normalised retrieval-space vector (compare with standardised, normalised audio)",
                "audio_space": "un-normalised prediction in the audio encoder's native space"},
            "dim": c.out_dim, "audio_encoder": c.audio_encoder, "aggregation": c.aggregation,
            "backbone": c.backbone, "pooling": c.pooling, "max_length": c.max_length, "opset": opset,
            "pad_token": tok.pad_token, "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else 0),
            "audio_stats": f"audio_mean / audio_std in {STATS_FILE}; "
                           "retrieval audio = normalize((audio - audio_mean) / audio_std)",
            "audio_side": "head" if audio_heads else "standardize",
            "weights": weights, "max_abs_diff_vs_pytorch": diff, "training_data": training or {},
        })
        final = out / "onnx"
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / MODEL_FILE, diff


def export_checkpoint_onnx(ckpt_dir: Path, out: Path, opset: int = 17) -> tuple[Path, float]:
    """Load a saved checkpoint and export its text tower (what `mtx train` does at the end)."""
    from .encoders.text import TextEmbedder
    from .runs import weights_identity

    return export_text_onnx(TextEmbedder.from_pretrained(ckpt_dir), out, opset, weights=weights_identity(ckpt_dir))


# --------------------------------------------------------------------------- inference (no torch)
def onnx_mismatch(onnx_dir: Path, weights: dict[str, Any]) -> str | None:
    """Why ``onnx_dir`` cannot serve the checkpoint with identity ``weights`` (None: it can)."""
    meta_path = Path(onnx_dir) / "meta.json"
    if not (Path(onnx_dir) / MODEL_FILE).exists() or not meta_path.exists():
        return "no ONNX export"
    meta = read_json(meta_path)
    if not (Path(onnx_dir) / STATS_FILE).exists() or not (Path(onnx_dir) / "tokenizer.json").exists():
        return "the ONNX export predates the torch-free format"
    if meta.get("weights") != weights:
        return "the ONNX export is of other weights"
    if meta.get("audio_side", "standardize") != "standardize":
        return "the run maps audio through a learned head, which the ONNX text export does not carry"
    return None


class OnnxTextModel:
    """The exported text tower, run with onnxruntime and tokenized with ``tokenizers``.

    Same interface as ``TextEmbedder`` for search: ``encode`` (unit retrieval-space rows),
    ``audio_for_retrieval`` and ``dim``. Imports neither torch nor transformers.
    """

    def __init__(self, onnx_dir: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.dir = Path(onnx_dir)
        self.meta = read_json(self.dir / "meta.json")
        self.max_length = int(self.meta["max_length"])
        tok = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        tok.enable_truncation(max_length=self.max_length)
        pad = self.meta.get("pad_token")
        pad_id = int(self.meta.get("pad_id", 0))
        tok.enable_padding(pad_id=pad_id, pad_token=pad if pad is not None else "[PAD]")
        self.tokenizer = tok
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.dir / MODEL_FILE), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        stats = load_file(str(self.dir / STATS_FILE))
        self.audio_mean = stats["audio_mean"].astype(np.float32)
        self.audio_std = stats["audio_std"].astype(np.float32)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def encode(self, texts: list[str], batch_size: int = 64, space: str = "retrieval") -> np.ndarray:
        if space not in ("retrieval", "audio"):
            raise MtxError(f"unknown space {space!r}", hint="use 'retrieval' or 'audio'")
        outs = []
        for s in range(0, len(texts), batch_size):
            encs = self.tokenizer.encode_batch(list(texts[s:s + batch_size]))
            feeds = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                     "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64)}
            emb, audio = self.session.run(["embedding", "audio_space"], feeds)
            outs.append(emb if space == "retrieval" else audio)
        if not outs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(outs).astype(np.float32)

    def audio_for_retrieval(self, audio: np.ndarray) -> np.ndarray:
        z = (np.asarray(audio, dtype=np.float32) - self.audio_mean) / self.audio_std
        return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
