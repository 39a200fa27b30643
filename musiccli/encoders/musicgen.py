"""MusicGen (facebook/musicgen-small): decoder hidden states over the track's own EnCodec tokens.

Loading: ``MusicgenForConditionalGeneration.from_pretrained(model)``; only its
``audio_encoder`` (EnCodec, 32 kHz) and its ``decoder`` (the audio-token language
model) are used. The T5 text encoder is never run, so the decoder sees the audio
unconditionally (no cross-attention input).

Per 10 s window at 32 kHz (10 s hop, MusicGen's training crops are 30 s, 10 s keeps
memory modest):

1. EnCodec encodes the waveform to K codebooks x T frames (K = 4, 50 Hz for -small).
2. The codes are laid out as the decoder was trained to read them: the *delay
   pattern* (codebook k shifted right by k steps, pad tokens in the gaps) after one
   decoder start token, giving K x (T + K) ids.
3. The decoder runs with ``output_hidden_states=True``; the last hidden layer (or the
   layers chosen with ``--layers``, 0 = embeddings) is averaged over time.

Dims: decoder width x number of layers used. musicgen-small: 1024 (last layer),
``--layers`` with n entries: n x 1024; -medium 1536, -large 2048. Default aggregation
``mean`` -> 1024 for small.

Reference compared against (tests/test_encoders_hf.py): transformers' own MusicGen path on a
tiny ``MusicgenForConditionalGeneration`` built from a config: ``audio_encoder.encode``'s
codes, laid out by the decoder's ``build_delay_pattern_mask`` (what ``generate`` feeds the
decoder), decoder hidden states averaged over time, within 1e-5. Step 2 writes the start
token where that pattern writes its leading pads; the released checkpoints use one id
(2048) for both, which the test asserts for its model.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

import torch

from ..hub import load_error, resolve_layers
from .base import AudioEncoder, EncoderSpec, register

log = logging.getLogger(__name__)

SPEC = EncoderSpec(
    name="musicgen",
    description="MusicGen decoder states over EnCodec tokens, time-pooled (decoder width)",
    sample_rate=32_000,
    window_s=10.0,
    hop_s=10.0,
    default_aggregation="mean",
    default_model="facebook/musicgen-small",
    version="1",
    license="CC-BY-NC-4.0 (model weights)",
    citation="Copet et al., Simple and Controllable Music Generation, NeurIPS 2023",
)


def delay_pattern(codes: torch.Tensor, pad_id: int, start_id: int) -> torch.Tensor:
    """[B, K, T] codes -> [B, K, 1 + T + K - 1] decoder ids: start token, then codebook k delayed by k."""
    b, k, t = codes.shape
    ids = torch.full((b, k, t + k), pad_id, dtype=codes.dtype, device=codes.device)
    for i in range(k):
        ids[:, i, 1 + i: 1 + i + t] = codes[:, i]
    ids[:, :, 0] = start_id
    return ids


@register(SPEC)
class MusicgenEncoder(AudioEncoder):
    @cached_property
    def config(self) -> Any:
        from transformers import MusicgenConfig

        try:
            return MusicgenConfig.from_pretrained(self.model_id)
        except (OSError, ValueError) as e:
            raise load_error("MusicGen config", self.model_id, e) from None

    @cached_property
    def layers(self) -> list[int]:
        n_states = int(self.config.decoder.num_hidden_layers) + 1
        return resolve_layers(self.options.layers, n_states) if self.options.layers else [n_states - 1]

    @property
    def window_dim(self) -> int:
        return len(self.layers) * int(self.config.decoder.hidden_size)

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident["layers"] = self.layers
        return ident

    @cached_property
    def _model(self) -> Any:
        from transformers import MusicgenForConditionalGeneration

        try:
            model = MusicgenForConditionalGeneration.from_pretrained(self.model_id)
        except (OSError, ValueError) as e:
            raise load_error("MusicGen model", self.model_id, e) from None
        rate = int(model.config.audio_encoder.sampling_rate)
        if rate != SPEC.sample_rate:
            log.warning("%s's EnCodec runs at %d Hz; mtx feeds it %d Hz", self.model_id, rate, SPEC.sample_rate)
        log.info("loaded MusicGen %s (decoder %d layers x %d)", self.model_id,
                 self.config.decoder.num_hidden_layers, self.config.decoder.hidden_size)
        return model.to(self.runtime.device).eval()

    @torch.inference_mode()
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        model = self._model
        x = windows.to(self.runtime.device, torch.float32).unsqueeze(1)   # [B, 1 channel, samples]
        # EnCodec runs in fp32: its quantiser picks nearest codes, and reduced precision flips ties.
        with torch.autocast(device_type=x.device.type, enabled=False):
            enc = model.audio_encoder.encode(x, bandwidth=None, return_dict=True)
        codes = enc.audio_codes                                            # [chunks, B, K, T]
        codes = codes.permute(1, 2, 0, 3).reshape(codes.shape[1], codes.shape[2], -1)
        dec_cfg = model.config.decoder
        ids = delay_pattern(codes, int(dec_cfg.pad_token_id), int(model.config.decoder_start_token_id
                                                                  if model.config.decoder_start_token_id
                                                                  is not None else dec_cfg.bos_token_id))
        b, k, n = ids.shape
        with self.runtime.autocast():
            out = model.decoder(input_ids=ids.reshape(b * k, n), output_hidden_states=True, return_dict=True)
        pooled = torch.stack([out.hidden_states[i].float().mean(dim=1) for i in self.layers], dim=1)
        return pooled.flatten(1)
