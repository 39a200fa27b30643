"""Text representations of a training item (TTMR): which words stand for a track in a batch.

- ``caption``: the main caption, or one of the alternative captions when those are used;
- ``tag``: one of the track's tags;
- ``stochastic``: k ~ U{1..L} of its L tags, drawn without replacement, shuffled, joined;
- ``mixed``: per item, one of the sources the track has: a caption, an alternative caption,
  a stochastic tag subset, or the metadata sentence "<title> by <artist>" (TTMR++).

Items without tags (or metadata) fall back to the captions. Every draw is a pure function of
``key`` (the data module derives it from seed, epoch and item), so a resumed run draws
exactly the texts an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from ..errors import unknown_choice
from ..manifest import Record

TEXT_REPS = ("caption", "tag", "stochastic", "mixed")


def tag_text(tag: str) -> str:
    """The words of a stored tag: ``mood/theme---calm`` -> ``calm``, ``hip_hop`` -> ``hip hop``."""
    value = tag.rpartition("---")[2]
    return " ".join(value.replace("_", " ").split())


def _tags(record: Record) -> list[str]:
    out: list[str] = []
    for t in record.tags:
        words = tag_text(t)
        if words and words not in out:
            out.append(words)
    return out


def _captions(record: Record, use_alt: bool) -> list[str]:
    return record.captions if use_alt else [record.caption]


def _stochastic(tags: list[str], rng: np.random.Generator) -> str:
    k = int(rng.integers(1, len(tags) + 1))
    picked = rng.choice(len(tags), size=k, replace=False)
    return ", ".join(tags[i] for i in picked)


def metadata_sentence(record: Record) -> str | None:
    if record.title and record.artist:
        return f"{record.title} by {record.artist}"
    return None


def draw_text(record: Record, mode: str, key: int, use_alt: bool = True) -> str:
    """One text for ``record`` under representation ``mode``, determined by ``key``."""
    if mode not in TEXT_REPS:
        raise unknown_choice("text representation", mode, TEXT_REPS)
    rng = np.random.default_rng(key)
    caps = _captions(record, use_alt)
    tags = _tags(record)
    if mode == "caption" or (mode in ("tag", "stochastic") and not tags):
        return caps[int(rng.integers(len(caps)))] if len(caps) > 1 else caps[0]
    if mode == "tag":
        return tags[int(rng.integers(len(tags)))]
    if mode == "stochastic":
        return _stochastic(tags, rng)
    sources: list[str] = ["caption"]
    if use_alt and record.alt_captions:
        sources.append("alt")
    if tags:
        sources.append("tags")
    meta = metadata_sentence(record)
    if meta:
        sources.append("meta")
    source = sources[int(rng.integers(len(sources)))]
    if source == "caption":
        return record.caption
    if source == "alt":
        return record.alt_captions[int(rng.integers(len(record.alt_captions)))]
    if source == "tags":
        return _stochastic(tags, rng)
    return meta or record.caption
