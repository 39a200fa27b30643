"""The exported ONNX text tower: building it (needs torch) and running it (needs only onnxruntime).

Both `mtx export` and the end of `mtx train` write the same folder through
:func:`export_text_onnx` (graphs made and checked by ``musiccli.onnxio``); `mtx search` reads it
through :class:`OnnxTextModel`
without importing torch or transformers, which is what makes a cold search fast.

Folder layout (``exports/<run>/<checkpoint>/onnx/``, ``runs.export_dir``)::

    model.onnx              input_ids, attention_mask -> embedding (unit, retrieval space)[, audio_space]
    audio_tower.onnx        audio (raw stored vectors) -> embedding (unit, retrieval space): the
                            standardisation, plus a joint run's trained audio head
    tokenizer.json ...      the fast tokenizer (plus the transformers files, for AutoTokenizer)
    audio_stats.safetensors audio_mean / audio_std (numpy): maps store rows into the retrieval space
    meta.json               dims, max_length, pad token, the checkpoint's weights identity, parity

``meta.json`` is written inside a temporary folder that is renamed into place, so a
present folder is always complete. The weights identity lets a reader tell whether
the export belongs to the checkpoint it is about to use.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import MtxError
from ...onnxio import ONNX_TOLERANCE, check_parity, export_graph, replace_dir, tmp_dir
from ...state import atomic_write_json, read_json

log = logging.getLogger(__name__)

__all__ = ["ONNX_TOLERANCE", "OnnxTextModel", "export_checkpoint_onnx", "export_text_onnx", "export_towers_onnx",
           "onnx_mismatch", "replace_dir", "tmp_dir"]
MODEL_FILE = "model.onnx"
STATS_FILE = "audio_stats.safetensors"
AUDIO_FILE = "audio_tower.onnx"
# Queries of different lengths, so the check exercises padding and the dynamic axes.
CHECK_QUERIES = ["dark metal", "a calm piano piece for a rainy sunday afternoon with soft strings",
                 "upbeat 80s synth pop with female vocals", "jazz"]


# --------------------------------------------------------------------------- export (torch)
class _Wrapper:
    """Built lazily (needs torch): the text tower returns (normalised retrieval vector[, native
    audio-space vector]); the audio tower maps raw stored vectors to unit retrieval vectors."""

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
                if self.m.config.space != "audio":   # a joint space has no native audio-space reading
                    return (emb,)
                return emb, z * self.m.audio_std + self.m.audio_mean

        return Wrapper(model).eval()

    @staticmethod
    def build_audio(tower):
        import torch

        class AudioWrapper(torch.nn.Module):
            def __init__(self, t) -> None:
                super().__init__()
                self.t = t

            def forward(self, audio):
                z = self.t((audio - self.t.audio_mean) / self.t.audio_std)
                return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)

        return AudioWrapper(tower).eval()


def output_names(model) -> list[str]:
    """The text graph's outputs: ``audio_space`` only where the retrieval space is the audio space."""
    return ["embedding", "audio_space"] if model.config.space == "audio" else ["embedding"]


def _torch_reference(model, feeds: dict[str, Any]) -> tuple[np.ndarray, ...]:
    import torch

    wrapper = _Wrapper.build(model)
    with torch.inference_mode():
        outs = wrapper(torch.as_tensor(feeds["input_ids"]), torch.as_tensor(feeds["attention_mask"]))
    return tuple(o.numpy() for o in outs)


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
        got = sess.run(output_names(model), feeds)
        ref = _torch_reference(model, feeds)
        worst = max([worst, *(float(np.abs(g - r).max()) for g, r in zip(got, ref))])
    return worst


def verify_audio_onnx(tower, onnx_path: Path, seed: int = 0) -> float:
    """Max abs difference between onnxruntime and PyTorch for the audio tower, on seeded store-like rows."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    mean, std = tower.audio_mean.cpu().numpy(), tower.audio_std.cpu().numpy()
    worst = 0.0
    for n in (1, 7):
        raw = (mean + std * rng.standard_normal((n, tower.in_dim))).astype(np.float32)
        got = sess.run(["embedding"], {"audio": raw})[0]
        worst = max(worst, float(np.abs(got - tower.audio_for_retrieval(raw)).max()))
    return worst


def export_audio_onnx(tower, path: Path, opset: int) -> float:
    """``audio_tower.onnx``: raw stored vectors [batch, in_dim] -> unit retrieval-space vectors."""
    import torch

    tower = tower.cpu().eval()
    example = (tower.audio_mean + tower.audio_std * torch.randn(2, tower.in_dim)).float()
    export_graph(_Wrapper.build_audio(tower), (example,), path, ["audio"], ["embedding"],
                 {"audio": {0: "batch"}, "embedding": {0: "batch"}}, opset)
    return verify_audio_onnx(tower, path)


def set_eager_attention(backbone) -> None:
    setter = getattr(backbone, "set_attn_implementation", None)
    if callable(setter):
        try:
            setter("eager")
            return
        except (ValueError, TypeError, AttributeError):
            pass
    backbone.config._attn_implementation = "eager"


def export_text_onnx(model, out: Path, opset: int = 17, weights: dict[str, Any] | None = None,
                     training: dict[str, Any] | None = None, audio_tower=None) -> tuple[Path, float]:
    """Write ``out/onnx/`` for a ``TextEmbedder`` (plus ``audio_tower.onnx`` when ``audio_tower`` is
    given); returns (model.onnx path, max abs diff vs PyTorch over both graphs).

    ``weights`` is the checkpoint's identity (``weights_identity``), recorded so that search can
    tell whether the export matches the checkpoint an index was built for.
    """
    from safetensors.numpy import save_file

    tmp = tmp_dir(out, "onnx")
    try:
        model = model.cpu().eval()
        # The eager attention path traces into a plain graph; SDPA mask helpers trip the exporter.
        set_eager_attention(model.backbone)
        enc = model.tokenizer(["a short query", "a somewhat longer query about music"], padding=True,
                              return_tensors="pt")
        path = tmp / MODEL_FILE
        names = output_names(model)
        # The legacy exporter's deprecation and tracer notices are expected here: the trace is
        # checked numerically right below, on lengths and batch sizes other than the traced ones.
        export_graph(_Wrapper.build(model), (enc["input_ids"], enc["attention_mask"]), path,
                     ["input_ids", "attention_mask"], names,
                     {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                      **{n: {0: "batch"} for n in names}}, opset)
        diff = verify_onnx(model, path)
        if audio_tower is not None:
            diff = max(diff, export_audio_onnx(audio_tower, tmp / AUDIO_FILE, opset))
        check_parity(diff, "ONNX output", hint="try another --opset; the hf/ export is unaffected")
        tok = model.tokenizer
        tok.save_pretrained(tmp)
        if not (tmp / "tokenizer.json").exists():
            raise MtxError("the text backbone's tokenizer has no fast (tokenizer.json) version",
                           hint="use a backbone with a fast tokenizer (minilm, roberta, distilbert)")
        save_file({"audio_mean": model.audio_mean.detach().cpu().numpy().astype(np.float32),
                   "audio_std": model.audio_std.detach().cpu().numpy().astype(np.float32)}, str(tmp / STATS_FILE))
        c = model.config
        has_head = bool(audio_tower.has_head) if audio_tower is not None else c.space != "audio"
        atomic_write_json(tmp / "meta.json", {
            "inputs": ["input_ids", "attention_mask"], "outputs": {
                "embedding": "L2-normalised retrieval-space vector (compare with audio_tower.onnx's output)",
                **({"audio_space": "un-normalised prediction in the audio encoder's native space"}
                   if c.space == "audio" else {})},
            **({"audio_tower": {"file": AUDIO_FILE, "input": "audio: raw stored vectors [batch, "
                                f"{audio_tower.in_dim}]", "output": "embedding: unit vectors in the retrieval space",
                                "head": has_head}} if audio_tower is not None else {}),
            "space": c.space,
            "dim": c.out_dim, "audio_encoder": c.audio_encoder, "aggregation": c.aggregation,
            "backbone": c.backbone, "pooling": c.pooling, "max_length": c.max_length, "opset": opset,
            "pad_token": tok.pad_token, "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else 0),
            "audio_stats": f"audio_mean / audio_std in {STATS_FILE} (and inside {AUDIO_FILE}); "
                           "retrieval audio = normalize(audio_tower((audio - audio_mean) / audio_std))",
            # standardize: the audio side is the standardisation alone (numpy reproduces it);
            # head: a trained audio head, which only audio_tower.onnx (or torch) applies.
            "audio_side": "head" if has_head else "standardize",
            "weights": weights, "max_abs_diff_vs_pytorch": diff, "training_data": training or {},
        })
        final = out / "onnx"
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / MODEL_FILE, diff


def export_towers_onnx(towers, out: Path, opset: int = 17, weights: dict[str, Any] | None = None,
                       training: dict[str, Any] | None = None) -> tuple[Path, float]:
    """``model.onnx`` (text tower) and ``audio_tower.onnx`` of a ``runs.load_towers`` pair."""
    return export_text_onnx(towers.text, out, opset, weights=weights, training=training, audio_tower=towers.audio)


def export_checkpoint_onnx(ckpt_dir: Path, out: Path, opset: int = 17,
                           training: dict[str, Any] | None = None) -> tuple[Path, float]:
    """Load a saved checkpoint's towers and export both (what `mtx train` does at the end)."""
    from ...runs import weights_identity
    from .model import load_towers

    return export_towers_onnx(load_towers(ckpt_dir), out, opset, weights=weights_identity(ckpt_dir),
                              training=training)


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
    if meta.get("audio_side", "standardize") != "standardize" and not (Path(onnx_dir) / AUDIO_FILE).exists():
        return f"the run maps audio through a trained head and the ONNX export has no {AUDIO_FILE}"
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
        self.outputs = [o.name for o in self.session.get_outputs()]
        # A trained audio head (joint runs) is applied by audio_tower.onnx; the standardisation
        # alone (align runs) is reproduced in numpy.
        self.audio_session = None
        if self.meta.get("audio_side", "standardize") != "standardize":
            if not (self.dir / AUDIO_FILE).exists():
                raise MtxError(f"{self.dir} has no {AUDIO_FILE} for the run's trained audio head",
                               hint="re-export the run (`mtx export --format onnx`), or use --query-runtime torch")
            self.audio_session = ort.InferenceSession(str(self.dir / AUDIO_FILE), sess_options=opts,
                                                      providers=["CPUExecutionProvider"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def audio_in_dim(self) -> int:
        """The stored width the audio side reads (audio_tower.onnx's input, else the audio stats)."""
        if self.audio_session is not None:
            width = self.audio_session.get_inputs()[0].shape[-1]
            if isinstance(width, int):
                return width
        return int(len(self.audio_mean))

    def encode(self, texts: list[str], batch_size: int = 64, space: str = "retrieval") -> np.ndarray:
        if space not in ("retrieval", "audio"):
            raise MtxError(f"unknown space {space!r}", hint="use 'retrieval' or 'audio'")
        if space == "audio" and "audio_space" not in self.outputs:
            raise MtxError("this run's text tower has no audio-space reading (a joint space)",
                           hint="use the retrieval space")
        outs = []
        for s in range(0, len(texts), batch_size):
            encs = self.tokenizer.encode_batch(list(texts[s:s + batch_size]))
            feeds = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                     "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64)}
            name = "embedding" if space == "retrieval" else "audio_space"
            outs.append(self.session.run([name], feeds)[0])
        if not outs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(outs).astype(np.float32)

    def audio_for_retrieval(self, audio: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if self.audio_session is not None:
            if not len(audio):
                return np.zeros((0, self.dim), dtype=np.float32)
            return np.concatenate([self.audio_session.run(["embedding"], {"audio": audio[s:s + batch_size]})[0]
                                   for s in range(0, len(audio), batch_size)]).astype(np.float32)
        z = (audio - self.audio_mean) / self.audio_std
        return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
