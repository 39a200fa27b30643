"""A run's two towers: the text embedder and the audio tower its vectors are compared with.

- ``align`` runs predict into the audio encoder's own (standardised) space, so their audio
  tower is the identity after standardising with the run's audio statistics.
- ``joint`` runs learn a projection head on the frozen audio vectors too; both towers
  meet in a shared ``joint_dim`` space. The head, with the audio statistics it was trained
  on, is saved in ``<checkpoint>/audio_tower/``.

:func:`load_towers` is the one way every consumer (eval, search, export, ``--init-from``) gets
both halves of a checkpoint; it needs no knowledge of which objective trained it.

Saved layout of ``audio_tower/``::

    config.json          AudioTowerConfig
    model.safetensors    head weights + audio_mean / audio_std
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...encoders.text import CONFIG_NAME, WEIGHTS_NAME, Head, TextEmbedder
from ...errors import MtxError
from ...runs import AUDIO_TOWER_DIR
from ...state import atomic_path, atomic_write_json

AUDIO_MODEL_TYPE = "mtx-audio-tower"
RETRIEVAL_CHUNK = 4096


@dataclass
class AudioTowerConfig:
    in_dim: int                   # the audio encoder's stored dim
    out_dim: int | None = None    # joint space dim; None = identity (align)
    hidden_dim: int = 1024
    dropout: float = 0.1
    model_type: str = AUDIO_MODEL_TYPE

    @property
    def dim(self) -> int:
        return self.in_dim if self.out_dim is None else self.out_dim


class AudioTower(nn.Module):
    """Raw stored audio vectors -> the run's retrieval space (standardise, then the head if any)."""

    def __init__(self, config: AudioTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.head = (Head(config.in_dim, config.hidden_dim, config.out_dim, config.dropout)
                     if config.out_dim is not None else None)
        self.register_buffer("audio_mean", torch.zeros(config.in_dim))
        self.register_buffer("audio_std", torch.ones(config.in_dim))

    @property
    def has_head(self) -> bool:
        return self.head is not None

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def dim(self) -> int:
        return self.config.dim

    @classmethod
    def identity(cls, mean: torch.Tensor | np.ndarray, std: torch.Tensor | np.ndarray) -> "AudioTower":
        mean_t = torch.as_tensor(mean, dtype=torch.float32).detach().cpu()
        tower = cls(AudioTowerConfig(in_dim=int(mean_t.shape[0])))
        tower.set_audio_stats(mean_t.numpy(), torch.as_tensor(std, dtype=torch.float32).detach().cpu().numpy())
        return tower

    def set_audio_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        std = np.where(std > 1e-8, std, 1.0)
        self.audio_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.audio_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, standardised: torch.Tensor) -> torch.Tensor:
        """Standardised audio vectors -> retrieval-space vectors (not normalised)."""
        return standardised if self.head is None else self.head(standardised)

    @torch.no_grad()
    def audio_for_retrieval(self, audio: np.ndarray) -> np.ndarray:
        """Raw stored vectors -> unit vectors in the space the run's text queries are compared in."""
        a = np.asarray(audio, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != self.in_dim:
            raise MtxError(f"audio vectors of width {a.shape[-1] if a.ndim else 0} do not fit this run's audio "
                           f"tower (dim {self.in_dim})", hint="use the store of the run's audio encoder")
        was_training = self.training
        self.eval()
        outs = []
        dev = self.audio_mean.device
        for s in range(0, len(a), RETRIEVAL_CHUNK):
            x = torch.from_numpy(a[s:s + RETRIEVAL_CHUNK]).to(dev)
            z = self((x - self.audio_mean) / self.audio_std).float()
            outs.append(nn.functional.normalize(z, dim=-1).cpu().numpy())
        self.train(was_training)
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), dtype=np.float32)

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        atomic_write_json(path / CONFIG_NAME, asdict(self.config))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "AudioTower":
        from safetensors.torch import load_file

        path = Path(path)
        cfg_path = path / CONFIG_NAME
        raw = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        if raw.get("model_type") != AUDIO_MODEL_TYPE:
            raise MtxError(f"{path} is not a saved mtx audio tower", hint="point at a checkpoint's audio_tower/ folder")
        known = set(AudioTowerConfig.__dataclass_fields__)
        tower = cls(AudioTowerConfig(**{k: v for k, v in raw.items() if k in known}))
        missing, unexpected = tower.load_state_dict(load_file(str(path / WEIGHTS_NAME)), strict=False)
        if missing or unexpected:
            raise MtxError(f"audio tower weights in {path} do not match its config", hint="re-export the model")
        return tower.to(device).eval()


@dataclass
class Towers:
    """Both halves of a checkpoint. For align runs ``audio`` is an identity tower (no parameters)."""

    text: TextEmbedder
    audio: AudioTower

    @property
    def dim(self) -> int:
        """The retrieval space's width (what an index stores)."""
        return int(self.text.config.out_dim)

    @property
    def audio_in_dim(self) -> int:
        """The stored width the audio tower reads."""
        return int(self.audio.in_dim)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit text vectors in the retrieval space."""
        return self.text.encode(list(texts), batch_size=batch_size)

    def audio_for_retrieval(self, rows: np.ndarray) -> np.ndarray:
        """Raw stored audio vectors -> unit vectors in the retrieval space."""
        return self.audio.audio_for_retrieval(rows)

    def save_pretrained(self, path: str | Path) -> None:
        self.text.save_pretrained(path)
        if self.audio.has_head:
            self.audio.save_pretrained(Path(path) / AUDIO_TOWER_DIR)

    def to(self, device: str | torch.device) -> "Towers":
        self.text.to(device)
        self.audio.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        self.text.train(mode)
        self.audio.train(mode)

    def eval(self) -> "Towers":
        self.train(False)
        return self



def load_towers(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> Towers:
    """The text embedder and audio tower saved in ``ckpt_dir`` (a run checkpoint or an export's hf/)."""
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
