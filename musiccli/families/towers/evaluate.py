"""The towers family's evaluation baselines: the untrained model and the audio encoder's native text tower.

``untrained`` is the run's backbone with a freshly initialised head (seeded), with the same audio
statistics; a joint run's audio head is re-initialised too (an align run's identity tower has nothing
to train). ``native`` (clap, muq) is the audio encoder's own zero-shot text tower, loaded from the
checkpoint recorded in the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...errors import MtxError
from ...runs import RunInfo
from ..base import EvalVectors

SYSTEMS = ("model", "untrained", "random", "native")
Encode = Callable[[Sequence[str]], np.ndarray]


def eval_systems(audio_encoder: str, baselines: bool, native_start: bool = False) -> list[str]:
    """The systems an evaluation scores: the model, plus baselines (native only for encoders with a text
    tower; no untrained one for a run that started from the native tower, which *is* its untrained model)."""
    from ...encoders.native_text import TEXT_TOWERS

    if not baselines:
        return ["model"]
    return [s for s in SYSTEMS if (s != "native" or audio_encoder in TEXT_TOWERS)
            and not (s == "untrained" and native_start)]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def untrained_like(model, backbone: str, seed: int):
    """The run's backbone with a freshly initialised head (seeded), carrying the same audio stats."""
    import torch

    from ...encoders.text import TextEmbedder

    c = model.config
    torch.manual_seed(seed)
    fresh = TextEmbedder.from_backbone(backbone, out_dim=c.out_dim, hidden_dim=c.hidden_dim, dropout=c.dropout,
                                       pooling=c.pooling, max_length=c.max_length,
                                       audio_encoder=c.audio_encoder, aggregation=c.aggregation, space=c.space)
    fresh.audio_mean.copy_(model.audio_mean.cpu())
    fresh.audio_std.copy_(model.audio_std.cpu())
    return fresh.eval()


def untrained_audio(tower, seed: int):
    """A joint run's audio tower with a freshly initialised head (seeded), same audio stats; an
    align run's identity tower as is (it has nothing to train)."""
    import torch

    from .model import AudioTower

    if not tower.has_head:
        return tower
    torch.manual_seed(seed + 1)
    fresh = AudioTower(tower.config)
    fresh.audio_mean.copy_(tower.audio_mean.cpu())
    fresh.audio_std.copy_(tower.audio_std.cpu())
    return fresh.eval()


def eval_system(name: str, towers: Any, vecs: EvalVectors, info: RunInfo, runtime: Any,
                encoder: Callable[[Any], Encode], seed: int) -> tuple[np.ndarray, Encode]:
    """(audio rows, text encoder) of the ``untrained`` or ``native`` baseline; MtxError when it cannot be built."""
    if name == "native":
        from ...encoders.native_text import load_native_text_model

        native = load_native_text_model(info.audio_encoder, vecs.native_model, runtime.device)
        return native.audio_for_retrieval(vecs.raw), encoder(native)
    if name != "untrained":
        raise MtxError(f"the towers family has no {name!r} system")
    backbone = str(info.meta.text_backbone or towers.text.config.backbone)
    fresh = untrained_like(towers.text, backbone, seed).to(runtime.device)
    audio = _unit(untrained_audio(towers.audio, seed).audio_for_retrieval(vecs.raw)) if towers.audio.has_head \
        else vecs.audio
    return audio, encoder(fresh)
