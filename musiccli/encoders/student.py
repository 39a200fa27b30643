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

Front end (what ``preprocessing.json`` describes and a client must reproduce): mono audio at
``sample_rate``; STFT with a periodic Hann window of ``n_fft``, hop ``hop``, centred (reflect padding);
power spectrum; HTK-mel triangles (peak 1, no area normalisation) from ``fmin`` to ``fmax``;
``10 log10(max(mel, amin))``; minus the clip's maximum (ref = max); floored at ``-top_db``; then per-clip
min-max to [0, 1] (a constant clip gives zeros). The features are computed in the data loaders and in
``mtx embed``; they are not part of the ONNX graph.

Checkpoint layout (``save_pretrained``): ``student.json`` (config), ``model.safetensors`` (both towers,
the teacher projections and the teachers' standardisation statistics), ``tokenizer.json``.

The ``student`` audio encoder (``mtx embed --audio-encoder student --model RUN``) runs the music tower
over 30 s windows and stores the mean of the window vectors: the 256-d shared space, searched with the
run's text tower.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..audio import repeat_pad
from ..errors import MtxError, unknown_choice
from ..runtime import Runtime
from .base import AudioEncoder, EncoderOptions, EncoderSpec, register

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


# --------------------------------------------------------------------------- front end
def mel_filters(cfg: StudentConfig) -> torch.Tensor:
    """HTK-mel triangles [n_fft // 2 + 1, n_mels], peak 1 (float64)."""
    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    freqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    mels = np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2)
    pts = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    lo, mid, hi = pts[:-2], pts[1:-1], pts[2:]
    up = (freqs[:, None] - lo) / (mid - lo)
    down = (hi - freqs[:, None]) / (hi - mid)
    return torch.from_numpy(np.clip(np.minimum(up, down), 0.0, None))


class LogMel:
    """Waveforms [B, S] -> normalised log-mel [B, 1, n_mels, T] (float32), per the module docstring."""

    def __init__(self, cfg: StudentConfig) -> None:
        self.cfg = cfg
        self.fb = mel_filters(cfg).float()
        self.window = torch.hann_window(cfg.n_fft, periodic=True)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return scale_db(self.db(wave), self.cfg.top_db).unsqueeze(1)

    def db(self, wave: torch.Tensor, center: bool = True) -> torch.Tensor:
        """Waveforms [B, S] -> ``10 log10(max(mel, amin))`` [B, n_mels, T], before the per-clip scaling.

        ``center=False`` frames without padding (frame t starts at sample t * hop): the mel cache
        computes a long track block by block on the reflect-padded track this way.
        """
        c = self.cfg
        wave = wave.float()
        if center and wave.shape[-1] <= c.n_fft // 2:   # reflect padding needs more samples than the pad
            wave = F.pad(wave, (0, c.n_fft // 2 + 1 - wave.shape[-1]))
        spec = torch.stft(wave, c.n_fft, hop_length=c.hop, win_length=c.n_fft,
                          window=self.window.to(wave.device), center=center, pad_mode="reflect",
                          return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2                          # [B, F, T]
        mel = torch.einsum("bft,fm->bmt", power, self.fb.to(wave.device))
        return power_to_db(mel, c.amin)


def power_to_db(mel: torch.Tensor, amin: float) -> torch.Tensor:
    return 10.0 * torch.log10(mel.clamp_min(amin))


def normalise_db(mel: torch.Tensor, amin: float, top_db: float) -> torch.Tensor:
    """[B, M, T] power mel -> dB re the clip max, floored at -top_db, min-max scaled to [0, 1] per clip."""
    return scale_db(power_to_db(mel, amin), top_db)


def scale_db(db: torch.Tensor, top_db: float) -> torch.Tensor:
    """[B, M, T] dB -> re the clip max (ref = max), floored at -top_db, min-max scaled to [0, 1] per clip."""
    db = db - db.amax(dim=(1, 2), keepdim=True)
    db = db.clamp_min(-top_db)
    lo = db.amin(dim=(1, 2), keepdim=True)
    span = -lo   # the max is 0 after ref = max
    return torch.where(span > 0, (db - lo) / span.clamp_min(1e-12), torch.zeros_like(db))


def crop_offset(n_samples: int, crop: int, key: int | None) -> int:
    """Start of a crop: uniform over the valid range from ``key`` (a hash), the centre when ``key`` is None."""
    room = n_samples - crop
    if room <= 0:
        return 0
    return room // 2 if key is None else int(key % (room + 1))


def take_crop(wave: np.ndarray, crop: int, key: int | None) -> np.ndarray:
    """A ``crop``-sample window of ``wave`` (repeated when the clip is shorter)."""
    if wave.shape[-1] < crop:
        return repeat_pad(wave, crop)
    s = crop_offset(wave.shape[-1], crop, key)
    return wave[s:s + crop]


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
        from ..safe_read import load_safetensors as load_file, load_tokenizer, read_json

        path = Path(path)
        if not (path / CONFIG_FILE).exists():
            raise MtxError(f"{path} is not a student checkpoint (no {CONFIG_FILE})",
                           hint="train one with `mtx train --objective student`")
        raw = read_json(path / CONFIG_FILE)
        known = set(StudentConfig.__dataclass_fields__)
        cfg = StudentConfig(**{k: v for k, v in raw.items() if k in known})
        tok = load_tokenizer(path / TOKENIZER_FILE)
        model = cls(cfg, tok)
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return model.to(device).eval()


def is_student_checkpoint(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


# --------------------------------------------------------------------------- the audio encoder
def resolve_student_checkpoint(model: str | None, state_root: Path | None) -> Path:
    """``--model``: a run name in the state dir, a run folder or a checkpoint folder -> checkpoint folder."""
    if not model:
        raise MtxError("the student encoder needs a trained student run",
                       hint="pass --model RUN (a run trained with `mtx train --objective student`)")
    candidates = []
    p = Path(model).expanduser()
    if p.exists():
        candidates.append(p)
    if state_root is not None:
        candidates.append(state_root / "runs" / model)
    for c in candidates:
        for sub in (c, c / "best", c / "latest"):
            if is_student_checkpoint(sub) and (sub / WEIGHTS_FILE).exists():
                return sub.resolve()
    raise MtxError(f"no student checkpoint found for --model {model!r}",
                   hint="train one with `mtx train --objective student --run NAME`, then pass --model NAME")


RUNTIMES = ("auto", "onnx", "torch")
ONNX_TOLERANCE = 1e-4


@register(EncoderSpec(
    name="student",
    description="the music tower of a trained student run (--model RUN): 256-d shared music-text space",
    sample_rate=SAMPLE_RATE, window_s=30.0, hop_s=30.0, default_aggregation="mean", version="1",
    options=("runtime",),
))
class StudentEncoder(AudioEncoder):
    """``-O runtime=auto|onnx|torch``: on the CPU, ``auto`` runs the music tower through onnxruntime (the
    tower exported once into the models cache and checked against PyTorch) with the NumPy client front
    end, about 1.3-2x the PyTorch path's speed per clip; on a GPU, or when onnxruntime or onnx is missing,
    PyTorch. The two agree to 1e-4 (checked at load), and the runtime used is part of the store's identity."""

    def __init__(self, options: EncoderOptions, runtime: Runtime) -> None:
        super().__init__(options, runtime)
        state_root = options.cache_dir.parent if options.cache_dir is not None else None
        self.checkpoint = resolve_student_checkpoint(options.model, state_root)
        self.model = StudentModel.from_pretrained(self.checkpoint, device=runtime.device).eval()
        from ..state import file_sha256

        # Retrained weights change every vector: their hash keys the stage config and the ONNX cache.
        self.weights_sha = file_sha256(self.checkpoint / WEIGHTS_FILE)[:16]
        want = str(options.extra.get("runtime", "auto"))
        if want not in RUNTIMES:
            raise unknown_choice("student runtime", want, RUNTIMES)
        self._session = self._front = None
        if want == "onnx" or (want == "auto" and runtime.device.type == "cpu"):
            self._open_onnx(required=want == "onnx")
        self.runtime_name = "onnx" if self._session is not None else "torch"

    def _open_onnx(self, required: bool) -> None:
        try:
            from ..export_student import ClientLogMel, client_session, export_music_graph
            from ..safe_read import onnx_file_loads

            cache = (self.options.cache_dir or self.checkpoint) / "student-onnx" / self.weights_sha
            path = cache / "student_music_encoder.onnx"
            if not path.exists() or not onnx_file_loads(path):   # a damaged cache is rebuilt, never used
                cache.mkdir(parents=True, exist_ok=True)
                tmp = cache / f".{path.name}.{os.getpid()}.tmp"   # shards may export at the same time
                cfg = self.model.student_config
                export_music_graph(self.model.music.cpu(), tmp, 17, cfg.n_mels, cfg.blocks)
                self.model.music.to(self.runtime.device)
                tmp.replace(path)
            session = client_session(path)
            probe = np.random.default_rng(0).random((2, 1, self.model.student_config.n_mels, 101), np.float32)
            got = session.run(["music_embedding"], {"mel_spectrogram": probe})[0]
            with torch.inference_mode():
                ref = self.model.music(torch.from_numpy(probe).to(self.runtime.device)).float().cpu().numpy()
            diff = float(np.abs(got - ref).max())
            if diff > ONNX_TOLERANCE:
                raise MtxError(f"the ONNX music tower differs from PyTorch by {diff:.2g}")
        except (ImportError, MtxError, RuntimeError, OSError) as e:
            if required:
                raise MtxError(f"cannot run the student music tower in onnxruntime: {e}",
                               hint="pip install 'musiccli[onnx]', or use -O runtime=torch") from None
            log.info("student encoder: PyTorch runtime (onnxruntime path unavailable: %s)", e)
            return
        self._session = session
        self._front = ClientLogMel(self.model.student_config.preprocessing())
        log.info("student encoder: onnxruntime music tower (%s), max abs diff to PyTorch %.1g", path, diff)

    @property
    def model_id(self) -> str:
        return str(self.options.model)

    @property
    def window_dim(self) -> int:
        return self.model.student_config.dim

    def default_window(self) -> tuple[float, float]:
        crop = self.model.student_config.crop_s
        return crop, crop

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "weights_sha256": self.weights_sha, "runtime": self.runtime_name}

    @torch.inference_mode()
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        if self._session is None:
            return self.model.embed_waves(windows).float()
        waves = windows.detach().cpu().float().numpy()
        mel = np.concatenate([self._front(w) for w in waves])
        out = self._session.run(["music_embedding"], {"mel_spectrogram": mel})[0]
        return torch.from_numpy(out).to(windows.device)
