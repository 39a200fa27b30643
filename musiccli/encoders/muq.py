"""MuQ-MuLan (OpenMuQ/MuQ-MuLan-large): the joint music-text space's audio latent.

Loading goes through the ``muq`` package exactly as its model card shows:
``MuQMuLan.from_pretrained(model)`` then ``model(wavs=...)``. The package is an
optional extra (``pip install 'musiccli[muq]'``).

Windows are the package's clips: ``clip_secs`` (10 s for the released model, read from
the checkpoint's config) at 24 kHz with a hop of one clip. ``MuQMuLan(wavs=...)`` cuts
audio into such clips itself (``_get_all_clips``) and averages their latents, so feeding
it exactly one clip per window lets us batch windows and aggregate them ourselves. The
package's last clip is the remainder of the track followed by the track's start, not
padding: the spec's ``tail="wrap"`` makes the stage cut the same clip (encoder version 2;
version 1 stores, whose last window was flush with the end, are refused). Only a track
shorter than half a clip differs: the package embeds it repeated once (a shorter clip),
the stage repeats it until the clip is full.

Per window: the unit-norm audio latent, ``dim_latent`` = 512. ``stats`` -> 512 x 3 =
1,536 ([mean | robust_sigma | dmean]); the first 512 dims (the mean) are what the
MuLan text tower is compared against (:mod:`musiccli.encoders.native_text`).

Compatibility: muq 0.1.0 drives transformers' ``Wav2Vec2ConformerEncoder`` with a
plain dict config and reads ``out["hidden_states"]`` from it. transformers 5 no
longer returns per-layer states from that encoder and needs
``config._attn_implementation``; :func:`patch_conformers` restores the 4.x
behaviour (states before every layer plus the final layer-normed state) on the
loaded instance, leaving the package itself untouched.

Reference compared against (tests/test_encoders_optional.py, the ``muq`` package 0.1.0
installed as the optional extra): on tiny MuQ-MuLan models built from configs, the stage's
windows equal the package's ``MuQMuLan._get_all_clips`` clips exactly, and ``run_embed``'s
stored vector equals ``MuQMuLan(wavs=...)`` on the whole track within 1e-5; the native text
tower is ``MuQMuLan(texts=...)`` itself.
"""

from __future__ import annotations

import inspect
import json
import logging
import types
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..errors import MtxError
from ..hub import load_error, require, stdout_to_log
from .base import AudioEncoder, EncoderSpec, register

log = logging.getLogger(__name__)

SPEC = EncoderSpec(
    name="muq",
    description="MuQ-MuLan music-text joint embedding, audio tower (512-d unit vectors)",
    sample_rate=24_000,
    window_s=10.0,
    hop_s=10.0,
    default_aggregation="stats",
    default_model="OpenMuQ/MuQ-MuLan-large",
    version="2",
    tail="wrap",
    license="CC-BY-NC-4.0 (model weights)",
    citation="Zhu et al., MuQ: Self-Supervised Music Representation Learning with Mel Residual "
             "Vector Quantization, 2025",
)


def read_hub_config(model: str) -> dict[str, Any]:
    """config.json of a local directory or a Hub repo (small file; no weights)."""
    local = Path(model)
    if local.is_dir():
        path = local / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(model, "config.json"))
        except Exception as e:  # offline, unknown repo, auth: all mean "cannot load"
            raise load_error("model config", model, e) from None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise load_error("model config", model, e) from None


def _conformer_forward_with_states(self: Any, hidden_states: torch.Tensor, attention_mask: Any = None,
                                   output_hidden_states: bool = True, **kwargs: Any) -> Any:
    """transformers 4.x ``Wav2Vec2ConformerEncoder.forward`` semantics on a 5.x module."""
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.modeling_outputs import BaseModelOutput

    if attention_mask is not None:
        hidden_states = hidden_states.masked_fill(~attention_mask.bool().unsqueeze(-1), 0.0)
    attention_mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states,
                                               attention_mask=attention_mask)
    hidden_states = self.dropout(hidden_states)
    rel = self.embed_positions(hidden_states) if self.embed_positions is not None else None
    states = []
    for layer in self.layers:
        states.append(hidden_states)
        out = layer(hidden_states, attention_mask=attention_mask, relative_position_embeddings=rel)
        hidden_states = out[0] if isinstance(out, tuple) else out
    hidden_states = self.layer_norm(hidden_states)
    states.append(hidden_states)
    return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=tuple(states))


def patch_conformers(model: torch.nn.Module) -> int:
    """Make muq's conformer encoders work under transformers 5 (see module docstring). Returns #patched."""
    from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

    if "output_hidden_states" in inspect.signature(Wav2Vec2ConformerEncoder.forward).parameters:
        return 0   # transformers 4.x: the package works as written
    n = 0
    for module in model.modules():
        if isinstance(module, Wav2Vec2ConformerEncoder):
            if isinstance(module.config, dict) and "_attn_implementation" not in module.config:
                module.config._attn_implementation = "eager"
            module.forward = types.MethodType(_conformer_forward_with_states, module)
            n += 1
    return n


def load_muq_mulan(model_id: str, device: torch.device) -> Any:
    muq = require("muq", "muq")
    try:
        # The standard Hub cache (HF_HOME), shared with every other transformers model.
        with stdout_to_log(log):
            model = muq.MuQMuLan.from_pretrained(model_id)
    except (OSError, ValueError) as e:
        raise load_error("MuQ-MuLan model", model_id, e) from None
    patched = patch_conformers(model)
    if patched:
        log.debug("patched %d MuQ conformer encoder(s) for transformers 5", patched)
    return model.to(device).eval()


@register(SPEC)
class MuqEncoder(AudioEncoder):
    @cached_property
    def config(self) -> dict[str, Any]:
        return read_hub_config(self.model_id)

    @property
    def window_dim(self) -> int:
        try:
            return int(self.config["mulan"]["dim_latent"])
        except (KeyError, TypeError):
            raise MtxError(f"{self.model_id} has no mulan.dim_latent in its config.json",
                           hint="pass --model with a MuQ-MuLan checkpoint") from None

    def default_window(self) -> tuple[float, float]:
        """One of the checkpoint's clips per window, clip after clip (``mulan.clip_secs``; 10 s released)."""
        mulan = self.config.get("mulan") if isinstance(self.config, dict) else None
        clip = mulan.get("clip_secs") if isinstance(mulan, dict) else None
        return (float(clip), float(clip)) if clip else (self.spec.window_s, self.spec.hop_s)

    @cached_property
    def _model(self) -> Any:
        model = load_muq_mulan(self.model_id, self.runtime.device)
        log.info("loaded MuQ-MuLan %s (%d-d, %s s clips)", self.model_id, self.window_dim, model.clip_secs)
        return model

    @torch.inference_mode()
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        model = self._model
        x = windows.to(self.runtime.device, torch.float32)
        clip = int(model.sr * model.clip_secs)
        with self.runtime.autocast(), stdout_to_log(log):   # the package prints spectrogram-crop notices
            if x.shape[1] == clip:
                # One clip per window: batch the windows through the audio tower directly.
                z = model.mulan_module.get_audio_latents(x)
            else:
                # Other --window lengths: the package's own clip-and-average path.
                z = model(wavs=x, parallel_processing=True)
        return z.float()
