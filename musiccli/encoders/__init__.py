"""Audio encoder registry. Adding an encoder = one module + one import line here."""

from __future__ import annotations

from ..errors import MtxError, unknown_choice
from ..runtime import Runtime
from .base import AGGREGATIONS, AUDIO_ENCODERS, AudioEncoder, EncoderOptions, EncoderSpec, aggregate
from . import dsp  # noqa: F401  (registers "dsp")
from . import mert  # noqa: F401  (registers "mert")
from . import clap  # noqa: F401  (registers "clap")
from . import musicgen  # noqa: F401  (registers "musicgen")
from . import muq  # noqa: F401  (registers "muq"; the package loads lazily)
from . import music2latent  # noqa: F401  (registers "music2latent"; the package loads lazily)
from . import musicnn  # noqa: F401  (registers "musicnn"; weights convert on first use)
from ..families.student import encoder as _student  # noqa: F401  (registers "student": a student run's music tower)
from . import imported  # noqa: F401  (registers "audiomuse-clap", ...: imported vectors, no audio model)


def encoder_names() -> list[str]:
    return sorted(AUDIO_ENCODERS)


def get_spec(name: str) -> EncoderSpec:
    if name not in AUDIO_ENCODERS:
        raise unknown_choice("audio encoder", name, AUDIO_ENCODERS)
    return AUDIO_ENCODERS[name][0]


def build_encoder(name: str, options: EncoderOptions, runtime: Runtime) -> AudioEncoder:
    spec = get_spec(name)
    unknown = sorted(set(options.extra) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise MtxError(f"encoder {name} has no option {unknown[0]!r}", hint=f"options of {name}: {accepted}")
    return AUDIO_ENCODERS[name][1](options, runtime)


__all__ = ["AGGREGATIONS", "AudioEncoder", "EncoderOptions", "EncoderSpec", "aggregate",
           "build_encoder", "encoder_names", "get_spec"]
