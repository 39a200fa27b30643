"""Zero-shot tagging with encoders that carry a tagger head (``mtx embed --tags``).

The embed stage stores the per-track mean of the window tag probabilities as
``tag_probs`` [N, T] in the embedding store (column names in its ``tag_names``
attribute), or, when tags are asked for a store that already exists, in the side
file ``<manifest>.tags.h5`` next to it. This module says which encoders can tag and
summarises a store's tags for display: the top tags of the first tracks (named by
artist and title where the manifest knows them, as ``search`` does) and the most
frequent top-1 tags.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .encoders.base import AUDIO_ENCODERS
from .errors import MtxError
from .manifest import Record


def tagging_encoders() -> list[str]:
    """Registered audio encoders whose spec declares a tagger."""
    return sorted(name for name, (spec, _) in AUDIO_ENCODERS.items() if spec.tagger)


def check_tagger(encoder: str) -> None:
    """Refuse ``--tags`` for an encoder without a tagger, naming those that have one."""
    spec = AUDIO_ENCODERS[encoder][0] if encoder in AUDIO_ENCODERS else None
    if spec is None or not spec.tagger:
        taggers = tagging_encoders()
        raise MtxError(f"the {encoder} encoder has no tagger, so --tags is not available with it",
                       hint="encoders with tags: " + (", ".join(taggers) if taggers else "none installed")
                            + f" (e.g. --audio-encoder {taggers[0] if taggers else 'musicnn'} --tags)")


@dataclass
class TrackTags:
    id: str
    top: list[tuple[str, float]]  # (tag, probability), most probable first
    artist: str | None = None
    title: str | None = None

    @property
    def label(self) -> str:
        """"artist - title" as ``search`` shows a hit; the id when the manifest has neither."""
        return " - ".join(x for x in (self.artist, self.title) if x) or self.id


@dataclass
class TagSummary:
    tracks: list[TrackTags] = field(default_factory=list)         # the first tracks of the store
    top1_counts: list[tuple[str, int]] = field(default_factory=list)  # most frequent top-1 tags
    n_tracks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"tracks": [{"id": t.id, "artist": t.artist, "title": t.title, "top": [[n, p] for n, p in t.top]}
                           for t in self.tracks],
                "top1_counts": [[n, c] for n, c in self.top1_counts], "n_tracks": self.n_tracks}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TagSummary":
        return cls(tracks=[TrackTags(str(t["id"]), [(str(n), float(p)) for n, p in t["top"]],
                                     artist=t.get("artist"), title=t.get("title")) for t in d["tracks"]],
                   top1_counts=[(str(n), int(c)) for n, c in d["top1_counts"]], n_tracks=int(d["n_tracks"]))


def summarize_tags(path: Path, records: Iterable[Record] = (), top_k: int = 3, first_tracks: int = 10,
                   most_common: int = 10) -> TagSummary:
    """Stream the tags of the store at ``path`` into a :class:`TagSummary`; ``records`` (the manifest)
    supply each track's artist and title."""
    from .store import TagTable

    with TagTable(path) as table:
        names = table.tag_names
        shown = set(table.ids[:first_tracks])
        wanted = {r.id: r for r in records if r.id in shown}
        counts: Counter[str] = Counter()
        tracks: list[TrackTags] = []
        for start, probs in table.iter_chunks():
            counts.update(names[i] for i in probs.argmax(axis=1))
            for row in range(min(len(probs), max(0, first_tracks - start))):
                order = np.argsort(-probs[row], kind="stable")[:top_k]
                id_ = table.ids[start + row]
                rec = wanted.get(id_)
                tracks.append(TrackTags(id_, [(names[i], round(float(probs[row, i]), 4)) for i in order],
                                        artist=rec.artist if rec else None, title=rec.title if rec else None))
        return TagSummary(tracks=tracks, top1_counts=counts.most_common(most_common), n_tracks=len(table))


__all__ = ["TagSummary", "TrackTags", "check_tagger", "summarize_tags", "tagging_encoders"]
