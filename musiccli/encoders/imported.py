"""Imported teacher spaces: vectors an external system already computed (AudioMuse-AI's tables).

``audiomuse-musicnn`` (200-d), ``audiomuse-clap`` (512-d), ``audiomuse-lyrics`` (768-d) and
``audiomuse-mulan`` are registered like any encoder, so ``mtx embed`` / ``mtx train
--audio-encoder audiomuse-clap`` accept them, but they cannot embed audio: ``mtx embed`` copies
the vectors imported by ``mtx download audiomuse`` into the manifest's store instead
(``embed.run_embed``, no audio decoded, nothing recomputed).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MtxError
from .base import AudioEncoder, EncoderSpec, register

# name -> (source, teacher, dim or None when the width is taken from the imported store)
IMPORTED: dict[str, tuple[str, str, int | None]] = {}


def imported_store(state_root: Path, encoder: str) -> Path:
    """The teacher store ``mtx download`` wrote for an imported encoder."""
    from ..sources.audiomuse import teacher_store_path

    source, teacher, _ = IMPORTED[encoder]
    return teacher_store_path(Path(state_root) / "datasets" / source, teacher)


def _declare(name: str, teacher: str, dim: int | None, rate: int, window: float, description: str) -> None:
    spec = EncoderSpec(name=name, description=description, sample_rate=rate, window_s=window, hop_s=window,
                       default_aggregation="mean", default_model=f"audiomuse:{teacher}", version="imported",
                       imported_from="audiomuse")
    IMPORTED[name] = ("audiomuse", teacher, dim)

    class Imported(AudioEncoder):
        @property
        def window_dim(self) -> int:
            if dim is None:
                raise MtxError(f"the width of {name} is known only from its imported store")
            return dim

        def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
            raise MtxError(f"{name} vectors are imported from AudioMuse-AI, not computed from audio",
                           hint=f"run `mtx download audiomuse`, then `mtx embed --audio-encoder {name}`")

    Imported.__name__ = f"Imported_{teacher}"
    register(spec)(Imported)


_declare("audiomuse-musicnn", "musicnn", 200, 16000, 3.0, "AudioMuse-AI's stored MusiCNN vectors (imported, 200-d)")
_declare("audiomuse-clap", "clap", 512, 48000, 10.0, "AudioMuse-AI's stored CLAP/DCLAP vectors (imported, 512-d)")
_declare("audiomuse-lyrics", "lyrics", 768, 16000, 30.0, "AudioMuse-AI's stored lyrics vectors (imported, 768-d)")
_declare("audiomuse-mulan", "mulan", None, 24000, 10.0, "AudioMuse-AI's stored MuQ-MuLan vectors (imported)")
