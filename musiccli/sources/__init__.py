"""Source registry. Adding a dataset = one module + one import line here."""

from __future__ import annotations

from ..errors import unknown_choice
from .base import SOURCES, DownloadConfig, ExpectedFile, Source, SourceInfo
from . import synth  # noqa: F401  (registers "synth")
from . import song_describer  # noqa: F401  (registers "song-describer")
from . import musiccaps  # noqa: F401  (registers "musiccaps")
from . import fma  # noqa: F401  (registers "fma")
from . import mtg_jamendo  # noqa: F401  (registers "mtg-jamendo")
from . import musicbench  # noqa: F401  (registers "musicbench")
from . import jamendo_maxcaps  # noqa: F401  (registers "jamendo-maxcaps")
from . import suno  # noqa: F401  (registers "suno")
from . import folder  # noqa: F401  (registers "folder")
from . import audiomuse  # noqa: F401  (registers "audiomuse")


def source_names() -> list[str]:
    return sorted(SOURCES)


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise unknown_choice("dataset source", name, SOURCES)
    return SOURCES[name]()


__all__ = ["DownloadConfig", "ExpectedFile", "Source", "SourceInfo", "get_source", "source_names"]
