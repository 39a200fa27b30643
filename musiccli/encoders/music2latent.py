"""Music2Latent (SonyCSLParis/music2latent): consistency-autoencoder features, time-pooled.

Loading goes through the ``music2latent`` package (``pip install 'musiccli[music2latent]'``):
``EncoderDecoder()`` fetches its checkpoint from the Hub into the package folder on
first use. ``--model /path/to/music2latent.pt`` (or a folder holding one) loads a local
checkpoint through the same ``EncoderDecoder.get_models`` code; only the package's
unconditional Hub download in ``__init__`` is skipped, so a local checkpoint also
works offline.

Windows are 10 s at 44.1 kHz with a 10 s hop (the codec is fully convolutional; 10 s
bounds memory and matches the other encoders' windows). Per window the encoder
output is averaged over its ~10.8 Hz frames (44,100 / 4,096 samples per frame).

Two representations (``EncoderOptions.extra["representation"]``), dims read off the
package's hyper-parameters (verified against a forward pass in the tests):

- ``features`` (default; ``encode(..., extract_features=True)``, the representation the
  authors recommend for downstream tasks): the encoder's last 2-D feature map before
  the bottleneck, flattened channels x frequency = 256 x 32 = **8,192**;
  ``stats`` -> 24,576.
- ``latent`` (``extract_features=False``): the 64-channel compressed latent
  (divided by the package's ``sigma_rescale``); ``stats`` -> 64 x 3 = 192.

Neither matches a 576-d recipe (192 x 3 would need 192 channels); no
configuration of the released package yields 192 channels, so mtx does not
claim one.

Reference compared against (tests/test_encoders_optional.py, the ``music2latent`` package
installed as the optional extra): on a randomly initialised ``music2latent.models.UNet``
checkpoint loaded through this module, a window's vector equals the package's own
``EncoderDecoder.encode(wave, extract_features=True)`` averaged over frames, within 1e-5.
The released checkpoint itself cannot be downloaded here, so only the code path is compared.
"""

from __future__ import annotations

import logging
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..errors import MtxError
from ..hub import load_error, require, stdout_to_log
from .base import AudioEncoder, EncoderSpec, register

log = logging.getLogger(__name__)

REPRESENTATIONS = ("features", "latent")
CHECKPOINT_NAME = "music2latent.pt"

SPEC = EncoderSpec(
    name="music2latent",
    description="Music2Latent consistency-autoencoder features, time-pooled (8192-d, or 64-d latent)",
    sample_rate=44_100,
    window_s=10.0,
    hop_s=10.0,
    default_aggregation="stats",
    default_model="SonyCSLParis/music2latent",
    version="1",
    license="CC-BY-NC-4.0 (model weights)",
    citation="Pasini et al., Music2Latent: Consistency Autoencoders for Latent Audio Compression, ISMIR 2024",
    options=("representation",),
)


def feature_dims() -> dict[str, int]:
    """Channel counts of both representations, from the package's hyper-parameters (no weights)."""
    hp = require("music2latent.hparams", "music2latent")
    freq = (hp.hop * 2) // (4 ** hp.freq_downsample_list.count(1)) // (2 ** hp.freq_downsample_list.count(0))
    return {"features": hp.base_channels * hp.multipliers_list[-1] * freq, "latent": hp.bottleneck_channels}


def local_checkpoint(model: str | None) -> Path | None:
    if not model:
        return None
    path = Path(model)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if path.suffix == ".pt" or path.exists():
        if not path.is_file():
            raise MtxError(f"no music2latent checkpoint at {path}",
                           hint="pass --model with a music2latent .pt file, or leave it out for the default")
        return path
    return None


@register(SPEC)
class Music2LatentEncoder(AudioEncoder):
    @cached_property
    def representation(self) -> str:
        rep = str(self.options.extra.get("representation", "features"))
        if rep not in REPRESENTATIONS:
            raise MtxError(f"unknown music2latent representation {rep!r}",
                           hint=f"choose one of: {', '.join(REPRESENTATIONS)}")
        return rep

    @property
    def window_dim(self) -> int:
        return feature_dims()[self.representation]

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident["representation"] = self.representation
        return ident

    @cached_property
    def _model(self) -> Any:
        m2l = require("music2latent", "music2latent")
        ckpt = local_checkpoint(self.options.model)
        try:
            with stdout_to_log(log):   # the package prints "Downloading model..."
                if ckpt is None:
                    if self.options.model not in (None, SPEC.default_model):
                        raise MtxError(f"music2latent loads its own checkpoint or a local .pt file, "
                                       f"not {self.options.model!r}", hint="pass a path to music2latent.pt")
                    model = m2l.EncoderDecoder(device=self.runtime.device)
                else:
                    # EncoderDecoder.__init__ minus its unconditional Hub download.
                    model = m2l.EncoderDecoder.__new__(m2l.EncoderDecoder)
                    model.device = self.runtime.device
                    model.load_path_inference = str(ckpt)
                    model.get_models()
        except (OSError, RuntimeError, KeyError) as e:
            raise load_error("music2latent checkpoint", str(ckpt or SPEC.default_model), e) from None
        model.gen.eval()
        log.info("loaded music2latent %s (%s, %d-d)", ckpt or SPEC.default_model, self.representation,
                 self.window_dim)
        return model

    @torch.inference_mode()
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        model = self._model
        x = windows.to(self.runtime.device, torch.float32)
        # The package treats dim 0 as channels and returns [channels, C, frames]; passing the
        # windows as "channels" with max_batch_size = B encodes them in one batch.
        with warnings.catch_warnings():
            # The package always requests CUDA fp16 autocast; on other devices torch warns that it is off.
            warnings.filterwarnings("ignore", message="CUDA is not available", category=UserWarning)
            z = model.encode(x, max_batch_size=x.shape[0], extract_features=self.representation == "features")
        return z.float().mean(dim=-1)
