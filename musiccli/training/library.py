"""`mtx train --library`: a text tower adapted to the user's own synced library.

A self-hosted library carries its own supervision: the genre and mood tags in its files, AudioMuse-AI's
mood and feature scores (``download audiomuse``), and the playlists its owner made (a playlist name is a
caption its tracks share). ``--library`` turns those into a training run with defaults that fit:

- the manifest ``mtx sync`` keeps (``library``) and the encoder its store was embedded with (the one
  with a native text tower first, when there are several);
- ``--init-from native`` where the encoder's own text tower is a transformers module (CLAP): the run
  starts *as* the zero-shot search and learns a zero-initialised residual, so it adapts rather than
  starts over; for other encoders it trains from ``--text-backbone`` (MiniLM);
- ``--text-rep blend``: tag subsets, sentences phrased from a track's own tags, and its captions
  (playlist names among them);
- the manifest's splits, which keep every artist and every album whole (``manifest.recording_components``),
  so the held-out tracks that ``mtx eval`` proves the lift on share no artist or album with training.

Before any work the supervision is counted (:func:`check_supervision`) and a library that cannot train
or cannot prove anything is refused with the counts and what to add: too few labelled tracks, too few
labels with enough tracks, one artist only, or a held-out split where no label has enough tracks to
measure a lift. Explicit flags always win over these defaults.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import MtxError
from ..manifest import Record, artist_of, read_manifest
from ..names import LIBRARY_MANIFEST
from ..state import StateDir, check_name
from .config import TrainConfig
from .textrep import tag_text

log = logging.getLogger(__name__)

MIN_LABELLED_TRACKS = 20    # training tracks with at least one label
MIN_LABEL_TRACKS = 5        # tracks a label needs (in train, and in the held-out split) to count
MIN_LABELS = 3              # labels with MIN_LABEL_TRACKS training tracks
HELD_OUT = "test"


def labels_of(record: Record) -> list[str]:
    """A track's supervision: its tags' words (genre, mood, AudioMuse-AI labels) and its playlists' names."""
    words = [tag_text(t) for t in record.tags]
    words += [" ".join(str(p).split()) for p in record.extra.get("playlists") or ()]
    return list(dict.fromkeys(w.lower() for w in words if w))


@dataclass
class Supervision:
    labelled: int = 0                       # training tracks with a label
    artists: int = 0                        # distinct artists among training tracks
    labels: dict[str, int] = field(default_factory=dict)           # label -> training tracks
    held_out: dict[str, int] = field(default_factory=dict)         # label -> held-out tracks
    held_out_tracks: int = 0

    @property
    def usable(self) -> list[str]:
        return sorted(lab for lab, n in self.labels.items() if n >= MIN_LABEL_TRACKS)

    @property
    def measurable(self) -> list[str]:
        return sorted(lab for lab in self.usable if self.held_out.get(lab, 0) >= MIN_LABEL_TRACKS)


def count_supervision(records: Sequence[Record]) -> Supervision:
    sup = Supervision()
    train_labels: Counter[str] = Counter()
    held: Counter[str] = Counter()
    artists: set[str | None] = set()
    for r in records:
        labels = labels_of(r)
        if r.split == "train":
            artists.add(artist_of(r))
            sup.labelled += bool(labels)
            train_labels.update(labels)
        elif r.split == HELD_OUT:
            sup.held_out_tracks += 1
            held.update(labels)
    sup.artists = len(artists - {None})
    sup.labels, sup.held_out = dict(train_labels), dict(held)
    return sup


_HINT = ("tag the files' genre and mood, add .m3u playlists to the folder, or import AudioMuse-AI's moods "
         "(mtx download audiomuse), then `mtx sync` again; plain zero-shot search needs no training")


def check_supervision(records: Sequence[Record], manifest: str) -> Supervision:
    """Refuse a library too thinly labelled to train on, or whose held-out split could prove nothing."""
    sup = count_supervision(records)
    where = f"library {manifest!r}"
    if sup.artists < 2:
        raise MtxError(f"{where}: its training tracks are by {sup.artists} artist(s); held-out tracks must be by "
                       "other artists than training ones, so fewer than two leave nothing to prove a lift on",
                       hint="add music by more artists (or check the files' artist tags), then `mtx sync` again")
    if sup.labelled < MIN_LABELLED_TRACKS:
        raise MtxError(f"{where}: only {sup.labelled} training track(s) carry a tag or a playlist "
                       f"(needs {MIN_LABELLED_TRACKS})", hint=_HINT)
    if len(sup.usable) < MIN_LABELS:
        raise MtxError(f"{where}: only {len(sup.usable)} label(s) have {MIN_LABEL_TRACKS}+ training tracks "
                       f"({', '.join(sup.usable) or 'none'}; needs {MIN_LABELS})", hint=_HINT)
    if not sup.measurable:
        raise MtxError(f"{where}: no label has {MIN_LABEL_TRACKS}+ tracks in both the training and the held-out "
                       f"split ({sup.held_out_tracks} held-out track(s)), so `mtx eval` could not measure a lift",
                       hint="sync more music (the held-out split is about a tenth of the artists), or tag it")
    return sup


def apply_library(state: StateDir, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the library defaults filled in (explicit flags win), after the supervision check."""
    from ..encoders.text import NATIVE_BACKBONES

    manifest = cfg.manifest or LIBRARY_MANIFEST
    check_name("manifest", manifest)
    path = state.manifest_path(manifest)
    if not path.exists():
        raise MtxError(f"--library: no synced library {manifest!r} in {state.root}",
                       hint="run `mtx sync PATH` first (or pass --manifest NAME for another library manifest)")
    if cfg.objective not in (None, "align"):
        raise MtxError(f"--library trains an align run, not {cfg.objective}", hint="drop --objective")
    encoders = state.list_encoders_with_embeddings(manifest)
    encoder = cfg.audio_encoder
    if encoder is None:
        if not encoders:
            raise MtxError(f"--library: library {manifest!r} has no embeddings",
                           hint="run `mtx sync PATH` (it embeds), or `mtx embed --manifest " + manifest + "`")
        native = [e for e in encoders if e in NATIVE_BACKBONES]
        encoder = (native or encoders)[0]
        if len(encoders) > 1:
            log.info("--library: %s has stores of %s; training on %s (pass --audio-encoder to choose)",
                     manifest, ", ".join(encoders), encoder)
    records = read_manifest(path)
    sup = check_supervision(records, manifest)
    log.info("--library: %d labelled training tracks by %d artists; %d labels with %d+ tracks, %d measurable on "
             "the %d held-out tracks", sup.labelled, sup.artists, len(sup.usable), MIN_LABEL_TRACKS,
             len(sup.measurable), sup.held_out_tracks)
    values: dict[str, object] = {"manifest": manifest, "audio_encoder": encoder, "objective": "align"}
    if cfg.text_rep == TrainConfig.text_rep:      # the plain default: libraries train on blend
        values["text_rep"] = "blend"
    if cfg.init_from is None and encoder in NATIVE_BACKBONES and cfg.text_backbone is None:
        values["init_from"] = "native"
    return dataclasses.replace(cfg, **values)
