"""Text representations of a training item (TTMR): which words stand for a track in a batch.

- ``caption``: the main caption, or one of the alternative captions when those are used;
- ``tag``: one of the track's tags;
- ``stochastic``: k ~ U{1..L} of its L tags, drawn without replacement, shuffled, joined;
- ``mixed``: per item, one of the sources the track has: a caption, an alternative caption,
  a stochastic tag subset, or the metadata sentence "<title> by <artist>" (TTMR++);
- ``blend``: per item, one of three kinds of text, each about the clip's own audio: a caption
  (main or alternative), a stochastic tag subset, or a sentence phrased from a stochastic subset
  of its own tags (plus its decade when the record has a year). No "<title> by <artist>": a
  name says nothing about the sound, and in synthetic or fictional corpora it is pure noise.
  Tags train tag queries, captions and attribute sentences train the sentences people type; a
  sentence about a *subset* of attributes matches how queries name one or two facets only.

Items without tags (or metadata) fall back to the captions. Every draw is a pure function of
``key`` (the data module derives it from seed, epoch and item), so a resumed run draws
exactly the texts an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from ..captions import classify_attributes, synthesize_captions
from ..errors import unknown_choice
from ..manifest import Record

TEXT_REPS = ("caption", "tag", "stochastic", "mixed", "blend")


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


def _decade(record: Record) -> int | None:
    for field in ("year", "date", "originaldate"):
        value = str(record.extra.get(field) or "")[:4]
        if value.isdigit() and 1000 <= int(value) <= 2999:
            return int(value) // 10 * 10
    return None


def attribute_sentence(record: Record, rng: np.random.Generator) -> str | None:
    """A sentence about a stochastic subset of the record's own tags (and decade), or None without tags."""
    tags = list(dict.fromkeys(tag_text(t) for t in record.tags if tag_text(t)))
    if not tags:
        return None
    k = int(rng.integers(1, len(tags) + 1))
    subset = [tags[i] for i in sorted(rng.choice(len(tags), size=k, replace=False))]
    texts = synthesize_captions(classify_attributes(subset), key=str(int(rng.integers(2**62))), n=4)
    if not texts:
        return None
    text = texts[int(rng.integers(len(texts)))]
    decade = _decade(record)
    if decade is not None and rng.random() < 0.5:
        text += f", from the {decade}s"
    return text


def _blend(record: Record, caps: list[str], rng: np.random.Generator) -> str:
    kinds = ["caption", "tags", "sentence"] if record.tags else ["caption"]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "tags":
        return _stochastic(_tags(record), rng)
    if kind == "sentence":
        text = attribute_sentence(record, rng)
        if text:
            return text
    return caps[int(rng.integers(len(caps)))]


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
    if mode == "blend":
        return _blend(record, caps, rng)
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
