"""MERT (m-a-p/MERT-v1-330M, -95M): every hidden layer, time-pooled.

Loading is what the model card does: ``AutoModel.from_pretrained(model,
trust_remote_code=True)`` and ``Wav2Vec2FeatureExtractor.from_pretrained(model,
trust_remote_code=True)``; a local directory (``--model /path``) takes the same path.
Remote code runs only with ``--trust-remote-code`` (``EncoderOptions.trust_remote_code``):
the official m-a-p/MERT-v1 checkpoints need it, and without the flag loading stops with a
line that says so. A checkpoint in a plain transformers architecture loads without it.

Windows are 5 s at 24 kHz with a 5 s hop (no overlap). MERT was pre-trained on 5 s
crops, so a 5 s window is the longest context that matches its training, and
non-overlapping windows keep the cost linear in the track length.
Reference windowing: 5 s at 24 kHz (MERT-v1's pre-training crops at its
feature extractor's ``sampling_rate``); the stage's windows follow it.

Per window, ``output_hidden_states=True`` gives the CNN-feature projection plus one
state per transformer layer: (n_layers + 1) tensors of [frames, hidden]. Each is
averaged over frames and the results are concatenated layer-major
(``[layer0 | layer1 | ...]``):

- MERT-v1-330M: (24 + 1) x 1024 = 25,600 per window; ``stats`` -> 3 x 25,600 = 76,800
- MERT-v1-95M:  (12 + 1) x 768  =  9,984 per window; ``stats`` -> 29,952

``--layers 0,12,24`` keeps a subset (in the order given): len(layers) x hidden.

Hidden states are collected by :func:`hidden_states`, which walks the loaded
module tree (CNN features -> projection -> positional conv -> each layer) with the
semantics MERT was trained and published under (transformers 4.x ``HubertEncoder``:
the state before every layer, plus the final one). MERT's remote code calls
``self.encoder(..., output_hidden_states=True)``, and transformers 5 encoders no
longer return per-layer states (nor accept MERT's custom layers' tuple outputs), so
relying on ``model(...).hidden_states`` would break with the installed transformers.

Reference compared against (tests/test_encoders_hf.py): the model card's recipe,
``Wav2Vec2FeatureExtractor`` + ``AutoModel(..., output_hidden_states=True)`` with each state
averaged over frames, on a tiny HuBERT built from a config (MERT-v1 is HuBERT-shaped),
within 1e-4; and :func:`hidden_states` against transformers' ``HubertModel`` states, for
both layer-norm variants. MERT's own remote code (``MERTModel`` in the m-a-p Hub repos)
cannot be fetched here (no Hub access), so it is not compared, and nothing here claims
to match it beyond those HuBERT-shaped modules.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

import torch

from ..errors import MtxError
from ..hub import load_error, resolve_layers, stdout_to_log
from .base import AudioEncoder, EncoderSpec, register

log = logging.getLogger(__name__)

SPEC = EncoderSpec(
    name="mert",
    description="MERT-v1 self-supervised music model, all layers time-pooled ((L+1) x hidden)",
    sample_rate=24_000,
    window_s=5.0,
    hop_s=5.0,
    default_aggregation="stats",
    default_model="m-a-p/MERT-v1-330M",
    version="1",
    license="CC-BY-NC-4.0 (model weights)",
    citation="Li et al., MERT: Acoustic Music Understanding Model with Large-Scale "
             "Self-supervised Training, ICLR 2024",
)


def zero_mean_unit_var(x: torch.Tensor) -> torch.Tensor:
    """Per-window normalisation, identical to ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``
    (population variance, eps 1e-7) but batched on the model's device."""
    x = x.float()
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-7)


def prepare_for_states(model: torch.nn.Module) -> None:
    """Make MERT's custom layers callable one by one under transformers 5.

    MERT's ``HubertEncoderLayerExtend`` (deepnorm checkpoints) may hold a stock
    ``HubertAttention`` built without a config and unpacks three outputs from it; the
    5.x attention needs its config and returns two.
    """
    from transformers.models.hubert.modeling_hubert import HubertAttention

    for layer in getattr(model.encoder, "layers", []):
        attn = getattr(layer, "attention", None)
        if not isinstance(attn, HubertAttention) or not hasattr(layer, "residual_connection"):
            continue
        if getattr(attn, "config", "absent") is None:
            attn.config = model.config
        original = attn.forward

        def three_outputs(*args: Any, _f: Any = original, **kwargs: Any) -> tuple[Any, ...]:
            out = _f(*args, **kwargs)
            return (*out, None) if isinstance(out, tuple) and len(out) == 2 else out

        attn.forward = three_outputs


def hidden_states(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """(n_layers + 1) states [B, frames, H] of a HuBERT-style model (MERT or ``HubertModel``), eval mode."""
    feats = model.feature_extractor(x).transpose(1, 2)
    if getattr(model.config, "feature_extractor_cqt", False):   # MERT variants with CQT input features
        cqt = model.feature_extractor_cqt(x).transpose(1, 2)[:, : feats.shape[1]]
        feats = torch.cat([feats, cqt], dim=2)
    h = model.feature_projection(feats)
    h = h[0] if isinstance(h, tuple) else h
    enc = model.encoder
    stable = bool(getattr(model.config, "do_stable_layer_norm", False))
    h = h + enc.pos_conv_embed(h).to(h.dtype)
    if not stable:
        h = enc.layer_norm(h)
    h = enc.dropout(h)
    states = []
    for layer in enc.layers:
        states.append(h)
        out = layer(h)
        h = out[0] if isinstance(out, tuple) else out
    states.append(enc.layer_norm(h) if stable else h)
    return states


@register(SPEC)
class MertEncoder(AudioEncoder):
    @cached_property
    def config(self) -> Any:
        # Only the config: listing dims must not load weights.
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.model_id, trust_remote_code=self.options.trust_remote_code)
        except (OSError, ValueError) as e:
            raise load_error("MERT config", self.model_id, e) from None

    @cached_property
    def layers(self) -> list[int]:
        return resolve_layers(self.options.layers, int(self.config.num_hidden_layers) + 1)

    @property
    def window_dim(self) -> int:
        return len(self.layers) * int(self.config.hidden_size)

    @cached_property
    def _model(self) -> tuple[Any, Any]:
        from transformers import AutoModel, Wav2Vec2FeatureExtractor

        try:
            trust = self.options.trust_remote_code
            extractor = Wav2Vec2FeatureExtractor.from_pretrained(self.model_id, trust_remote_code=trust)
            with stdout_to_log(log):   # MERT's remote code prints warnings on import
                model = AutoModel.from_pretrained(self.model_id, trust_remote_code=trust)
        except (OSError, ValueError) as e:
            raise load_error("MERT model", self.model_id, e) from None
        if int(extractor.sampling_rate) != SPEC.sample_rate:
            raise MtxError(f"{self.model_id} expects {extractor.sampling_rate} Hz audio, mtx feeds MERT "
                           f"{SPEC.sample_rate} Hz", hint="use a MERT-v1 checkpoint (24 kHz)")
        prepare_for_states(model)
        log.info("loaded MERT %s (%d layers x %d)", self.model_id, self.config.num_hidden_layers + 1,
                 self.config.hidden_size)
        return extractor, model.to(self.runtime.device).eval()

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident["layers"] = self.layers if self.options.layers else None
        return ident

    @torch.inference_mode()
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        extractor, model = self._model
        x = windows.to(self.runtime.device, torch.float32)
        if getattr(extractor, "do_normalize", False):
            x = zero_mean_unit_var(x)
        with self.runtime.autocast():
            states = hidden_states(model, x)
        # Each state [B, frames, H] -> [B, H], stacked layer-major [B, L, H] -> [B, L*H].
        pooled = torch.stack([states[i].float().mean(dim=1) for i in self.layers], dim=1)
        return pooled.flatten(1)
