"""The source interface: each dataset is one module declared as data plus download/parse functions.

A source module defines a :class:`SourceInfo` (urls, licence, citation, ...) and a
subclass of :class:`Source`, registered with :func:`register`. ``download`` writes
the dataset in its native layout under ``root`` and records every item in the
ledger; ``records`` parses the native layout into unified manifest records;
``expected_files`` tells ``verify`` what should be on disk.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..manifest import Record, RecordTable
from ..progress import Progress
from .ledger import Ledger


@dataclass(frozen=True)
class SourceInfo:
    name: str
    description: str
    license: str
    citation: str = ""
    homepage: str = ""
    phase: int | None = None          # 1: short clips, 2: full songs (Navidrome plan); None: neither
    downloadable: bool = True         # False for sources with nothing to fetch (folder)
    synthetic: bool = False           # generated audio: a run trained only on it knows no real music
    options: tuple[str, ...] = ()     # DownloadConfig fields this source reads
    urls: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass
class DownloadConfig:
    """Options of `mtx download`. Generic ones first; source-specific ones are listed in SourceInfo.options."""

    source: str
    max_items: int | None = None
    subset: str | None = None
    mirror: str | None = None
    workers: int | None = None        # None: min(4, CPU count), see n_workers
    rate_limit: float = 0.0
    keep_archives: bool = False
    seed: int = 0
    # synth
    n: int = 1000
    duration: float = 10.0
    sample_rate: int = 24000
    # fma / mtg-jamendo / jamendo-maxcaps / folder
    size: str = "small"
    quality: str = "low"
    max_shards: int | None = None
    path: Path | None = None
    # audiomuse: the database (None: DATABASE_URL / POSTGRES_*) and the media server to fetch audio from
    dsn: str | None = None
    server: str | None = None

    @property
    def n_workers(self) -> int:
        return self.workers or min(4, os.cpu_count() or 1)


# Options that change how a download runs, never what it produces: a resumed run may change them.
HOW_NOT_WHAT = frozenset({"workers", "rate_limit", "mirror", "keep_archives", "dsn"})


@dataclass(frozen=True)
class ExpectedFile:
    """What verify checks for one item."""

    id: str
    path: Path
    duration: float | None = None          # expected seconds, None = unknown
    duration_tolerance: float = 1.0        # seconds
    sample_rate: int | None = None
    checksum: tuple[str, str] | None = None  # (algorithm, hex digest)


class Source(abc.ABC):
    info: SourceInfo

    def identity(self, cfg: DownloadConfig) -> dict[str, Any]:
        """The config fields that change what gets downloaded (the stage compares them on --continue)."""
        generic = {"max_items": cfg.max_items, "subset": cfg.subset}
        return {**generic, **{k: getattr(cfg, k) for k in self.info.options if k not in HOW_NOT_WHAT}}

    def check(self, cfg: DownloadConfig) -> None:
        """Refuse a config that cannot work (raise MtxError) before any stage record is written."""

    @abc.abstractmethod
    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        """Fetch/generate into ``root``; record each item in ``ledger``; skip items already ok."""

    @abc.abstractmethod
    def records(self, root: Path) -> list[Record]:
        """Parse the native layout under ``root`` into unified records (absolute audio paths)."""

    def table(self, root: Path) -> RecordTable:
        """The same records as columns, which is what unify reads. A source whose native layout is already
        a table (a CSV, say) makes it directly, without a :class:`Record` per row."""
        return RecordTable.from_records(self.records(root))

    @abc.abstractmethod
    def expected_files(self, root: Path) -> list[ExpectedFile]:
        """The audio files that should exist under ``root``."""


SOURCES: dict[str, Callable[[], Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    SOURCES[cls.info.name] = cls
    return cls
