"""The student: a small two-tower music-text model (the AudioMuse-AI student design), in PyTorch.

Music tower (``mel_spectrogram`` [N, 1, n_mels, T] -> ``music_embedding`` [N, dim], T free)::

    blocks x (Conv 3x3 "same" -> BatchNorm -> ReLU [-> residual add] -> MaxPool 2x2)
    channels base * 2^i (defaults 32 / 64 / 128) -> global average pool -> Dropout -> Dense dim -> L2

The residual variant makes each block conv-BN-ReLU-conv-BN plus a 1x1 conv-BN shortcut, then ReLU.

Text tower (``input_ids``, ``attention_mask`` [N, L] -> ``text_embedding`` [N, dim])::

    token embedding [vocab, width] (+ learned positions and a pre-norm transformer when
    ``text_encoder == "transformer"``: layers x (MHA heads + FFN 2 x width)) -> masked mean -> Dense dim -> L2

The tokenizer is a ``tokenizers`` WordPiece tokenizer with a vocabulary built from the training captions
(characters + the most frequent words, see :func:`train_tokenizer`), not MiniLM's 30,522 pieces: at 256-d
tokens that matrix alone is 31 MB of float32, four times the 8 MB budget, and music captions need a few
thousand pieces. Padding and truncation are set inside ``tokenizer.json`` so any
client that loads that one file tokenizes exactly as training did.

Front end: :mod:`.frontend` (what ``preprocessing.json`` describes and a client must reproduce). The
features are computed in the data loaders and in ``mtx embed``; they are not part of the ONNX graph.

Checkpoint layout (``save_pretrained``): ``student.json`` (config), ``model.safetensors`` (both towers,
the teacher projections and the teachers' standardisation statistics), ``tokenizer.json``.

The ``student`` audio encoder (``mtx embed --audio-encoder student --model RUN``, :mod:`.encoder`) runs
the music tower over 30 s windows and stores the mean of the window vectors: the 256-d shared space,
searched with the run's text tower.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import MtxError, unknown_choice
from .frontend import LogMel

CONFIG_FILE = "student.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TEXT_ENCODERS = ("mean", "transformer")
PAD, UNK = "[PAD]", "[UNK]"
SAMPLE_RATE = 48000

log = logging.getLogger(__name__)


@dataclass
class StudentConfig:
    # front end (preprocessing.json)
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 2048
    hop: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = SAMPLE_RATE / 2
    amin: float = 1e-10
    top_db: float = 80.0
    crop_s: float = 30.0
    # music tower
    blocks: int = 3
    base_channels: int = 32
    residual: bool = False
    dim: int = 256
    dropout: float = 0.1
    # text tower
    vocab_size: int = 3072
    text_width: int = 256
    text_encoder: str = "mean"
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 64
    # teacher name -> dim (a learned projection dim -> teacher dim each)
    teachers: dict[str, int] = field(default_factory=dict)

    def validate(self) -> None:
        if self.text_encoder not in TEXT_ENCODERS:
            raise unknown_choice("student text encoder", self.text_encoder, TEXT_ENCODERS)
        if not 1 <= self.blocks <= 6:
            raise MtxError(f"--student-blocks must be 1..6, got {self.blocks}")
        if self.base_channels < 1 or self.dim < 1 or self.text_width < 1:
            raise MtxError("student widths must be positive")
        if self.text_encoder == "transformer" and self.text_width % self.text_heads:
            raise MtxError(f"text width {self.text_width} is not divisible by {self.text_heads} heads")
        if self.crop_s <= 0:
            raise MtxError(f"--crop must be positive, got {self.crop_s}")

    @property
    def channels(self) -> list[int]:
        return [self.base_channels * 2 ** i for i in range(self.blocks)]

    @property
    def crop_samples(self) -> int:
        return int(round(self.crop_s * self.sample_rate))

    def preprocessing(self) -> dict[str, Any]:
        """Everything a client needs to compute the music tower's input (written as preprocessing.json)."""
        return {
            "sample_rate": self.sample_rate, "mono": "mean of channels", "n_fft": self.n_fft,
            "hop_length": self.hop, "win_length": self.n_fft, "window": "hann (periodic)",
            "center": True, "pad_mode": "reflect", "power": 2.0, "n_mels": self.n_mels,
            "fmin": self.fmin, "fmax": self.fmax, "mel_scale": "htk", "mel_norm": None,
            "log": {"rule": "10*log10(max(mel, amin)) - max over the clip (ref = max), floored at -top_db",
                    "amin": self.amin, "top_db": self.top_db},
            "scale": {"rule": "per-clip min-max to [0, 1]: (db - min) / (max - min); 0 where max == min"},
            "crop_seconds": self.crop_s, "crop_samples": self.crop_samples,
            "long_audio": "windows of crop_seconds every crop_seconds; the track vector is the L2-normalised "
                          "mean of the window vectors",
            "short_audio": "repeated to crop_samples",
            "input": {"name": "mel_spectrogram", "shape": ["N", 1, self.n_mels, "T"], "dtype": "float32"},
        }


# --------------------------------------------------------------------------- towers
class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.residual = residual
        if residual:
            self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x)))
        if self.residual:
            y = F.relu(self.bn2(self.conv2(y)) + self.skip(x))
        return self.pool(y)


class MusicTower(nn.Module):
    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        chans = [1, *cfg.channels]
        self.blocks = nn.ModuleList(ConvBlock(a, b, cfg.residual) for a, b in zip(chans[:-1], chans[1:]))
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(chans[-1], cfg.dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))                       # global average pool: any T
        z = self.proj(self.dropout(x))
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class _Layer(nn.Module):
    """Pre-norm transformer layer with explicit attention (traces to plain ONNX ops)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(width // self.heads)
        att = att.masked_fill(mask[:, None, None, :] == 0, -1e4).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(n, length, width)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.ff(self.ln2(x)))


class TextTower(nn.Module):
    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.text_width, padding_idx=0)
        self.transformer = cfg.text_encoder == "transformer"
        if self.transformer:
            self.pos = nn.Embedding(cfg.max_length, cfg.text_width)
            self.layers = nn.ModuleList(_Layer(cfg.text_width, cfg.text_heads, cfg.dropout)
                                        for _ in range(cfg.text_layers))
            self.ln = nn.LayerNorm(cfg.text_width)
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.text_width, cfg.dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        mask = attention_mask.to(x.dtype)
        if self.transformer:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = x + self.pos(positions)[None]
            for layer in self.layers:
                x = layer(x, mask)
            x = self.ln(x)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        z = self.proj(self.dropout(pooled))
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# --------------------------------------------------------------------------- tokenizer
def train_tokenizer(captions: Sequence[str], vocab_size: int, max_length: int):
    """A lower-cased WordPiece tokenizer whose vocabulary (at most ``vocab_size`` pieces) comes from ``captions``.

    The vocabulary is built here rather than by ``tokenizers``' WordPiece trainer, whose output varies
    from run to run (ties are broken in hash order), which would break exact resume and reproducibility:
    [PAD], [UNK], every character seen (word-initial and ``##`` continuation, so any word can be spelled),
    then whole words by descending frequency (ties alphabetical).
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for c in captions:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(c)))
    chars = sorted({ch for w in words for ch in w})
    pieces = [PAD, UNK, *chars, *(f"##{ch}" for ch in chars)]
    taken = set(pieces)
    ranked = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if w not in taken]
    pieces += ranked[:max(0, vocab_size - len(pieces))]
    tok = Tokenizer(models.WordPiece(vocab={p: i for i, p in enumerate(pieces)}, unk_token=UNK,
                                     max_input_chars_per_word=100))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    configure_tokenizer(tok, max_length)
    return tok


def configure_tokenizer(tok, max_length: int) -> None:
    tok.enable_padding(pad_id=tok.token_to_id(PAD), pad_token=PAD)
    tok.enable_truncation(max_length=max_length)


def tokenize(tok, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    enc = tok.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    if ids.shape[1] == 0:   # only empty captions: one pad column keeps shapes valid
        ids = torch.zeros((len(texts), 1), dtype=torch.int64)
        mask = torch.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": mask}


# --------------------------------------------------------------------------- the model
class _OutDim:
    """``model.config.out_dim``: what search and eval read from any text model."""

    def __init__(self, dim: int) -> None:
        self.out_dim = dim


class StudentModel(nn.Module):
    """Both towers, the teacher projections and the teachers' train-split statistics."""

    def __init__(self, cfg: StudentConfig, tokenizer) -> None:
        super().__init__()
        cfg.validate()
        self.student_config = cfg
        self.tokenizer = tokenizer
        self.music = MusicTower(cfg)
        self.text = TextTower(cfg)
        self.heads = nn.ModuleDict({t: nn.Linear(cfg.dim, d) for t, d in sorted(cfg.teachers.items())})
        for t, d in sorted(cfg.teachers.items()):
            self.register_buffer(f"mean_{t}", torch.zeros(d))
            self.register_buffer(f"std_{t}", torch.ones(d))
        self.front = LogMel(cfg)

    @property
    def config(self) -> _OutDim:
        return _OutDim(self.student_config.dim)

    @property
    def dim(self) -> int:
        """The shared space's width (what an index stores)."""
        return int(self.student_config.dim)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- teachers
    def set_teacher_stats(self, name: str, mean: np.ndarray, std: np.ndarray) -> None:
        getattr(self, f"mean_{name}").copy_(torch.from_numpy(np.asarray(mean, np.float32)))
        std = np.where(np.asarray(std) > 1e-8, std, 1.0).astype(np.float32)
        getattr(self, f"std_{name}").copy_(torch.from_numpy(std))

    def standardise_teacher(self, name: str, raw: torch.Tensor) -> torch.Tensor:
        return (raw - getattr(self, f"mean_{name}")) / getattr(self, f"std_{name}")

    # -- towers
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts)

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenize(texts)
        return self.text(tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))

    def embed_waves(self, waves: torch.Tensor) -> torch.Tensor:
        return self.music(self.front(waves.to(self.device)))

    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """Unit text vectors [N, dim] (the interface search and eval use for every text model)."""
        was_training = self.training
        self.eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                out.append(self.embed_text(texts[s:s + batch_size]).float().cpu().numpy())
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.student_config.dim), np.float32)

    def audio_for_retrieval(self, audio: np.ndarray) -> np.ndarray:
        """Stored student vectors (window means) -> unit rows of the shared space."""
        a = np.asarray(audio, dtype=np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

    # -- persistence
    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.student_config), indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS_FILE))
        self.tokenizer.save(str(path / TOKENIZER_FILE))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "StudentModel":
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(path)
        if not (path / CONFIG_FILE).exists():
            raise MtxError(f"{path} is not a student checkpoint (no {CONFIG_FILE})",
                           hint="train one with `mtx train --objective student`")
        raw = json.loads((path / CONFIG_FILE).read_text())
        known = set(StudentConfig.__dataclass_fields__)
        cfg = StudentConfig(**{k: v for k, v in raw.items() if k in known})
        tok = Tokenizer.from_file(str(path / TOKENIZER_FILE))
        model = cls(cfg, tok)
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return model.to(device).eval()


def is_student_checkpoint(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()
