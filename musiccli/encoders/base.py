"""The audio-encoder interface, aggregation, and the registry.

An encoder is declared as data (:class:`EncoderSpec`: rate, window, hop, default
aggregation, default model id) plus a class that embeds a batch of windows.
Long audio is cut into windows at the encoder's rate; per-window vectors are
aggregated per track:

- ``mean``: [D]
- ``stats``: [mean, robust_sigma, dmean] = [3 D], where robust_sigma = 1.4826 * MAD
  and dmean = mean |x[t+1] - x[t]| over consecutive windows (0 for one window);
- ``none``: keeps the per-window vectors (stored separately) and the mean as the track vector.

Dimensionality arithmetic per encoder is stated in each encoder module.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MtxError, unknown_choice
from ..runtime import Runtime

AGGREGATIONS = ("mean", "stats", "none")


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    description: str
    sample_rate: int
    window_s: float
    hop_s: float
    default_aggregation: str = "stats"
    default_model: str | None = None
    version: str = "1"
    license: str | None = None
    citation: str | None = None
    # Declared as data so `--tags` can be refused (with the list of taggers) before building anything.
    tagger: bool = False
    # Keys accepted by `--encoder-option KEY=VALUE` (EncoderOptions.extra); anything else is refused.
    options: tuple[str, ...] = ()
    # Set for spaces whose vectors are imported (``mtx download <source>``), never computed from audio.
    imported_from: str | None = None
    # How windows cover the end of a track (``audio.TAILS``), as the encoder's reference cuts it:
    # "flush" adds a last window flush with the end (a track shorter than a window is repeat-padded);
    # "wrap" (MuQ-MuLan) places windows on the hop grid while they fit, then one more at the next
    # hop start that continues from the track's start.
    tail: str = "flush"
    # The reference's audio front end (``audio.RESAMPLERS`` / ``audio.EDGE_PADS``): "kaiser_best" and
    # "reflect" for encoders whose reference loads audio with librosa <= 0.9 (musicnn).
    resampler: str = "sinc"
    edge_pad: str = "zeros"


@dataclass
class EncoderOptions:
    """What a user can choose about an encoder (``mtx embed`` flags)."""

    model: str | None = None          # hub id or local path; None -> spec default
    layers: list[int] | None = None   # for multi-layer encoders (MERT)
    cache_dir: Path | None = None     # where converted weights live (state dir)
    trust_remote_code: bool = False   # allow models whose code lives in their repo (MERT); --trust-remote-code
    extra: dict[str, Any] = field(default_factory=dict)


class AudioEncoder(abc.ABC):
    """A frozen audio encoder: windows in, per-window vectors out."""

    spec: EncoderSpec
    #: Samples of audio *before* each window that ``embed_windows`` also receives (zeros at the start
    #: of a file): [B, context_samples + window]. For encoders whose framing reaches back before the
    #: window start (musicnn's centered STFT), so that stage-cut windows equal the model's own framing.
    context_samples: int = 0
    #: Drop-the-tail framing, for encoders whose reference cuts fixed patches and drops the rest
    #: (musicnn): when > 0, the samples a window needs to be complete. The stage then plans a window
    #: at every hop start ``s`` with ``s + patch_samples <= n`` only (no window flush with the end),
    #: and zero-pads (instead of repeat-padding) where a window runs past the end of a track.
    patch_samples: int = 0

    def __init__(self, options: EncoderOptions, runtime: Runtime) -> None:
        self.options = options
        self.runtime = runtime

    @property
    def model_id(self) -> str:
        return self.options.model or self.spec.default_model or self.spec.name

    @property
    @abc.abstractmethod
    def window_dim(self) -> int:
        """Dimension of one window's vector."""

    @abc.abstractmethod
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """[B, samples] float32 at ``spec.sample_rate`` on the runtime device -> [B, window_dim] float32."""

    @property
    def tag_names(self) -> tuple[str, ...] | None:
        """Names of the tags ``embed_windows_with_tags`` scores (None: the encoder has no tagger)."""
        return None

    def embed_windows_with_tags(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``embed_windows``, plus tag probabilities [B, len(tag_names)] in [0, 1] (``spec.tagger``)."""
        raise MtxError(f"the {self.spec.name} encoder has no tagger")

    def identity(self) -> dict[str, Any]:
        """Everything about the encoder that changes its output (goes into stage keys and store attrs)."""
        ident = {"encoder": self.spec.name, "encoder_version": self.spec.version, "model_id": self.model_id,
                 "layers": self.options.layers}
        if self.options.extra:
            ident["options"] = dict(sorted(self.options.extra.items()))
        return ident

    def default_window(self) -> tuple[float, float]:
        """(window, hop) in seconds when ``mtx embed`` gets no --window/--hop; a trained model may differ
        from its spec (a student's crop length)."""
        return self.spec.window_s, self.spec.hop_s

    def dim(self, aggregation: str) -> int:
        return self.window_dim * (3 if aggregation == "stats" else 1)


def robust_sigma(x: np.ndarray, axis: int = 0) -> np.ndarray:
    med = np.median(x, axis=axis, keepdims=True)
    return 1.4826 * np.median(np.abs(x - med), axis=axis)


def aggregate(windows: np.ndarray, how: str) -> np.ndarray:
    """Aggregate [W, D] window vectors into one track vector."""
    if windows.ndim != 2 or windows.shape[0] == 0:
        raise MtxError("aggregate needs a non-empty [windows, dim] array")
    w = windows.astype(np.float32, copy=False)
    if how in ("mean", "none"):
        return w.mean(0)
    if how == "stats":
        dmean = np.abs(np.diff(w, axis=0)).mean(0) if len(w) > 1 else np.zeros(w.shape[1], np.float32)
        return np.concatenate([w.mean(0), robust_sigma(w, 0), dmean]).astype(np.float32)
    raise unknown_choice("aggregation", how, AGGREGATIONS)


# --------------------------------------------------------------------------- registry
EncoderFactory = Callable[[EncoderOptions, Runtime], AudioEncoder]
AUDIO_ENCODERS: dict[str, tuple[EncoderSpec, EncoderFactory]] = {}


def register(spec: EncoderSpec) -> Callable[[type[AudioEncoder]], type[AudioEncoder]]:
    def deco(cls: type[AudioEncoder]) -> type[AudioEncoder]:
        cls.spec = spec
        AUDIO_ENCODERS[spec.name] = (spec, cls)
        return cls

    return deco
