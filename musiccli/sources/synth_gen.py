"""Procedural music clips with captions: the core of the offline ``synth`` demo dataset.

Everything here is numpy (plus a few scipy filters): no assets, no network. Two steps:

* :func:`plan_dataset` decides *what* every clip is (style, tempo, key, mode, instruments,
  mood, loudness, a fictional artist and title) and writes its tags and captions. It is
  cheap and touches no audio.
* :func:`render_clip` turns one :class:`ClipSpec` into float32 mono audio.

Determinism and independence: clip ``i`` is planned from ``default_rng([seed, 2, i])`` and
rendered from ``default_rng([seed, 4, i])`` (musical decisions) and
``default_rng([seed, 5, i])`` (audio-rate noise), so a clip never depends on any other clip
and generation can be resumed or parallelised in any order. Musical decisions never draw
from the noise generator, so the same clip at 16 kHz and at 44.1 kHz plays the same notes.
``plan_dataset(n, seed)[:k] == plan_dataset(k, seed)``.

Styles are balanced exactly: every block of 10 consecutive indices holds each style once
(in a seeded order). Each artist has a fixed style, a few personal habits (tempo, mode and
key preferences) and on average ~10 clips, so artist-aware splits matter.

Speed: a 10 s clip at 24 kHz takes ~10-20 ms of CPU time (one core). The tricks: fixed-point
(uint32) phase accumulators instead of float64 ``mod``, float32 ``sin``/``exp``, notes
rendered once per pitch and re-used (sliced, faded) for every repetition, drum one-shots
rendered once per clip, and filters applied to whole tracks rather than to notes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
from scipy import signal

STYLES: tuple[str, ...] = (
    "metal",
    "techno",
    "ambient",
    "jazz",
    "baroque",
    "hip hop",
    "folk",
    "reggae",
    "latin",
    "classical piano",
)
KEYS: tuple[str, ...] = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES: tuple[str, ...] = ("major", "minor")
MOODS: tuple[str, ...] = ("dark", "bright", "calm", "energetic")
LOUDNESS: tuple[str, ...] = ("quiet", "moderate", "loud")

# Peak level after normalisation: -1 dBFS headroom times the loudness gain (0 / -6 / -12 dB).
HEADROOM = 0.891
LOUDNESS_GAIN: dict[str, float] = {"quiet": 0.25, "moderate": 0.5, "loud": 1.0}

# Tempo words and the mood rule share these thresholds (BPM).
SLOW_BELOW = 90
FAST_FROM = 120

_T = TypeVar("_T")


@dataclass(frozen=True)
class ClipSpec:
    index: int
    id: str
    style: str
    bpm: int
    key: str
    mode: str
    instruments: tuple[str, ...]
    mood: str
    loudness: str
    artist: str
    title: str
    tags: tuple[str, ...]
    caption: str
    alt_captions: tuple[str, ...]


# ---------------------------------------------------------------------------------------
# Style table
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Style:
    bpm: tuple[int, int]
    p_minor: float
    loudness_p: tuple[float, float, float]  # quiet, moderate, loud
    distorted: bool
    core: tuple[str, ...]  # always present
    choice: tuple[tuple[str, float], ...]  # exactly one of these leads (weights)
    optional: tuple[tuple[str, float], ...]  # each present with its probability
    variants: tuple[tuple[str, float], ...]  # playing-style tags, exactly one (weights)
    extra_tags: tuple[str, ...]
    names: tuple[str, ...]  # how captions name the style (first = canonical)
    nouns: tuple[str, ...]  # "track", "piece", ...
    flavor: tuple[str, ...]  # short descriptive phrases


_STYLE: dict[str, _Style] = {
    "metal": _Style(
        bpm=(150, 200), p_minor=0.85, loudness_p=(0.05, 0.25, 0.70), distorted=True,
        core=("distorted electric guitar", "double-kick drums", "crash cymbal"), choice=(),
        optional=(("electric bass", 0.75),), variants=(),
        extra_tags=("heavy", "distorted", "rock"),
        names=("metal", "heavy metal", "metal"),
        nouns=("track", "song", "riff-driven track"),
        flavor=("heavy and aggressive", "built on palm-muted chugging riffs",
                "relentless and fast", "loud, crushing power chords"),
    ),
    "techno": _Style(
        bpm=(120, 135), p_minor=0.45, loudness_p=(0.10, 0.40, 0.50), distorted=False,
        core=("kick drum", "synth bass", "hi-hats"), choice=(),
        optional=(("clap", 0.6), ("synth stabs", 0.5)), variants=(),
        extra_tags=("electronic", "dance", "club"),
        names=("techno", "techno dance", "electronic techno"),
        nouns=("dance track", "club track", "dance tune"),
        flavor=("made for the dance floor", "a steady four-on-the-floor beat",
                "hypnotic club groove", "pumping electronic dance music"),
    ),
    "ambient": _Style(
        bpm=(60, 80), p_minor=0.5, loudness_p=(0.60, 0.35, 0.05), distorted=False,
        core=("synth pad",), choice=(),
        optional=(("drone", 0.6), ("bell chimes", 0.45)), variants=(),
        extra_tags=("atmospheric", "electronic", "no drums", "relaxing"),
        names=("ambient", "atmospheric ambient", "ambient electronic"),
        nouns=("soundscape", "piece", "track"),
        flavor=("relaxing and atmospheric", "slowly evolving textures with no drums",
                "spacious and meditative", "good for relaxing or sleep"),
    ),
    "jazz": _Style(
        bpm=(90, 150), p_minor=0.45, loudness_p=(0.30, 0.50, 0.20), distorted=False,
        core=("ride cymbal", "upright bass", "electric piano"), choice=(),
        optional=(("hi-hat", 0.6),), variants=(),
        extra_tags=("swing", "seventh chords"),
        names=("jazz", "swing jazz", "small-combo jazz"),
        nouns=("tune", "track", "piece"),
        flavor=("a classic swing rhythm section", "laid-back swing feel",
                "seventh-chord comping", "a cool late-night jazz club vibe"),
    ),
    "baroque": _Style(
        bpm=(90, 130), p_minor=0.45, loudness_p=(0.35, 0.50, 0.15), distorted=False,
        core=(), choice=(("harpsichord", 0.6), ("string ensemble", 0.4)),
        optional=(("cello", 0.6),), variants=(),
        extra_tags=("classical", "arpeggios", "no drums"),
        names=("baroque", "baroque classical", "baroque chamber"),
        nouns=("piece", "invention", "composition"),
        flavor=("ornate flowing arpeggios", "in the style of Bach",
                "elegant counterpoint-like figures", "a harmonic circle of fifths"),
    ),
    "hip hop": _Style(
        bpm=(80, 95), p_minor=0.7, loudness_p=(0.15, 0.50, 0.35), distorted=False,
        core=("boom-bap drums", "sub bass", "sampled chords"), choice=(),
        optional=(("vinyl crackle", 0.7),), variants=(),
        extra_tags=("beat", "boom bap", "lo-fi"),
        names=("hip hop", "boom-bap hip hop", "lo-fi hip hop"),
        nouns=("beat", "instrumental", "track"),
        flavor=("a head-nodding boom-bap groove", "dusty, sample-based texture",
                "laid-back beat for rapping", "punchy kick and snare"),
    ),
    "folk": _Style(
        bpm=(85, 120), p_minor=0.3, loudness_p=(0.45, 0.45, 0.10), distorted=False,
        core=("acoustic guitar",), choice=(),
        optional=(("shaker", 0.35),), variants=(("fingerpicking", 0.55), ("strumming", 0.45)),
        extra_tags=("acoustic", "sparse"),
        names=("folk", "acoustic folk", "folk"),
        nouns=("song", "tune", "piece"),
        flavor=("sparse and intimate", "warm acoustic sound", "campfire feel",
                "simple and organic"),
    ),
    "reggae": _Style(
        bpm=(72, 96), p_minor=0.3, loudness_p=(0.20, 0.50, 0.30), distorted=False,
        core=("bass guitar", "one-drop drums"), choice=(("rhythm guitar", 0.55), ("organ", 0.45)),
        optional=(), variants=(),
        extra_tags=("offbeat", "one drop", "jamaican"),
        names=("reggae", "roots reggae", "reggae"),
        nouns=("groove", "tune", "track"),
        flavor=("offbeat skank chords", "a laid-back one-drop groove",
                "a relaxed Jamaican groove", "island vibes"),
    ),
    "latin": _Style(
        bpm=(95, 130), p_minor=0.45, loudness_p=(0.10, 0.45, 0.45), distorted=False,
        core=("claves", "congas", "piano", "bass"), choice=(),
        optional=(("cowbell", 0.5),), variants=(),
        extra_tags=("salsa", "afro-cuban", "clave", "danceable"),
        names=("latin", "salsa-style latin", "Afro-Cuban latin"),
        nouns=("groove", "dance tune", "track"),
        flavor=("a syncopated clave rhythm", "danceable latin percussion",
                "a tight Afro-Cuban rhythm section", "hot salsa feel"),
    ),
    "classical piano": _Style(
        bpm=(60, 110), p_minor=0.5, loudness_p=(0.55, 0.40, 0.05), distorted=False,
        core=("piano",), choice=(), optional=(), variants=(),
        extra_tags=("classical", "solo piano", "no drums"),
        names=("classical piano", "solo classical piano", "classical piano"),
        nouns=("piece", "composition", "solo"),
        flavor=("expressive and melodic", "a romantic solo piano performance",
                "gentle melody over broken chords", "concert-hall piano"),
    ),
}

# How captions refer to instruments; the first entry is the canonical caption phrase.
_INSTR_TEXT: dict[str, tuple[str, ...]] = {
    "distorted electric guitar": ("distorted electric guitar", "heavily distorted guitars",
                                  "crunchy distorted guitar riffs", "overdriven power chords"),
    "double-kick drums": ("fast double-kick drums", "double-bass drumming", "pounding double kicks"),
    "crash cymbal": ("crash cymbal", "crashing cymbals"),
    "electric bass": ("electric bass", "bass guitar"),
    "kick drum": ("kick drum", "four-on-the-floor kick", "thumping kick"),
    "synth bass": ("synth bass", "rolling synth bassline", "pulsing bass synth"),
    "hi-hats": ("offbeat hi-hats", "crisp hi-hats", "open hats on the offbeat"),
    "clap": ("claps", "handclaps"),
    "synth stabs": ("synth stabs", "stabbing synth chords"),
    "synth pad": ("synth pads", "lush pads", "slowly evolving synth pads", "warm pad textures"),
    "drone": ("a low drone", "a sustained drone", "deep drone"),
    "bell chimes": ("bell chimes", "soft bells", "shimmering chimes"),
    "ride cymbal": ("swing ride cymbal", "ride cymbal", "swinging ride pattern"),
    "upright bass": ("walking upright bass", "walking bass", "double bass"),
    "electric piano": ("electric piano", "Rhodes-style electric piano", "electric piano chords"),
    "hi-hat": ("hi-hat", "hi-hat on two and four"),
    "harpsichord": ("harpsichord", "plucked harpsichord arpeggios", "harpsichord arpeggios"),
    "string ensemble": ("strings", "string ensemble", "string arpeggios"),
    "cello": ("cello", "cello continuo", "bowed cello line"),
    "boom-bap drums": ("boom-bap drums", "dusty drum break", "boom bap beat"),
    "sub bass": ("sub bass", "deep sub bass", "808-style bass"),
    "sampled chords": ("dusty sampled chords", "sampled keys", "lo-fi chord sample"),
    "vinyl crackle": ("vinyl crackle", "record crackle", "vinyl noise"),
    "acoustic guitar": ("acoustic guitar", "plucked acoustic guitar", "steel-string acoustic guitar"),
    "shaker": ("light shaker", "shaker"),
    "rhythm guitar": ("offbeat rhythm guitar", "choppy skank guitar", "guitar chops"),
    "organ": ("organ", "bubbling organ", "organ skank"),
    "bass guitar": ("bass guitar", "deep bassline", "round bass"),
    "one-drop drums": ("one-drop drums", "one drop beat", "rimshot-driven drums"),
    "claves": ("claves", "clave rhythm"),
    "congas": ("congas", "conga drums", "hand drums"),
    "piano": ("piano montuno", "syncopated piano", "piano"),
    "bass": ("bass", "tumbao bass", "anticipated bassline"),
    "cowbell": ("cowbell", "bell pattern"),
}
# Style-specific overrides of the above.
_INSTR_TEXT_STYLE: dict[tuple[str, str], tuple[str, ...]] = {
    ("classical piano", "piano"): ("solo piano", "grand piano", "piano"),
}

_MOOD_SYNONYMS: dict[str, tuple[str, ...]] = {
    "dark": ("brooding", "moody", "somber", "ominous", "melancholic", "gloomy"),
    "bright": ("cheerful", "sunny", "uplifting", "happy", "joyful", "bright and happy"),
    "calm": ("relaxing", "peaceful", "gentle", "soothing", "mellow", "tranquil"),
    "energetic": ("upbeat", "driving", "lively", "high-energy", "energizing", "upbeat, energetic"),
}
_LOUD_WORDS: dict[str, tuple[str, ...]] = {
    "quiet": ("quiet", "soft", "low-volume"),
    "moderate": ("", "", ""),
    "loud": ("loud", "full-volume", "loud"),
}
_TEMPO_ADJ = {"slow": "slow", "mid-tempo": "moderate", "fast": "fast"}
_LOUD_TAG = {"quiet": "quiet", "moderate": "moderate volume", "loud": "loud"}

# Word lists for fictional names.
_ADJ = ("Velvet", "Iron", "Crimson", "Hollow", "Golden", "Silent", "Electric", "Midnight", "Paper",
        "Neon", "Amber", "Copper", "Lunar", "Wild", "Frozen", "Silver", "Rusty", "Distant", "Broken",
        "Gentle", "Static", "Violet", "Northern", "Hidden", "Wandering", "Glass", "Scarlet",
        "Echoing", "Faded", "Burning")
_NOUN = ("Foxes", "Harbor", "Ravens", "Orchard", "Machines", "Tides", "Lanterns", "Pilots",
         "Ghosts", "Rivers", "Satellites", "Wolves", "Gardens", "Owls", "Circuits", "Mountains",
         "Sparrows", "Engines", "Comets", "Shadows", "Bridges", "Meadows", "Anchors", "Prophets",
         "Signals", "Willows", "Giants", "Drifters", "Monks", "Embers")
_FIRST = ("Elena", "Tobias", "Mira", "Jonas", "Ada", "Felix", "Ines", "Marcus", "Lena", "Oskar",
          "Clara", "Hugo", "Nadia", "Emil", "Sofia", "Rafael", "Greta", "Milo", "Ruth", "Victor",
          "Alma", "Bruno", "Iris", "Caspar", "June", "Teodor", "Livia", "Anton", "Maren", "Silas")
_LAST = ("Marsh", "Wren", "Okafor", "Lindqvist", "Moreau", "Castell", "Brandt", "Halloran",
         "Novak", "Ferreira", "Sato", "Whitlock", "Adeyemi", "Kowalski", "Dufresne", "Harlow",
         "Quint", "Varga", "Ashby", "Rinaldi", "Holm", "Mbeki", "Laurent", "Petrov", "Blackwood",
         "Ibarra", "Strand", "Keller", "Osei", "Vance")
_PERSON_STYLES = ("jazz", "baroque", "folk", "classical piano")
_BAND_STYLES = tuple(s for s in STYLES if s not in _PERSON_STYLES)
_JAZZ_SUFFIX = ("Trio", "Quartet", "Quintet")

_TITLE_ADJ = ("Last", "Quiet", "Falling", "Endless", "Lost", "Burning", "Blue", "Hidden",
              "Northern", "Broken", "Slow", "Electric", "Golden", "Restless", "Pale", "Open")
_TITLE_NOUN = ("Light", "Horizon", "Rain", "Signal", "Harbor", "Dream", "Machine", "River",
               "Mirror", "Summer", "Storm", "Garden", "Night", "Road", "Fire", "Echo")
_FORMS = {
    "baroque": ("Invention", "Partita", "Prelude", "Toccata", "Sinfonia", "Gigue", "Sonata"),
    "classical piano": ("Nocturne", "Etude", "Prelude", "Impromptu", "Bagatelle", "Sonatina",
                        "Romance"),
}

_CLIPS_PER_ARTIST = (6, 15)  # uniform integers in [6, 15): mean 10


# ---------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------


def tempo_word(bpm: int) -> str:
    """"slow" / "mid-tempo" / "fast" for a tempo in BPM."""
    if bpm < SLOW_BELOW:
        return "slow"
    return "fast" if bpm >= FAST_FROM else "mid-tempo"


def mood_for(style: str, bpm: int, mode: str) -> str:
    """The deterministic mood rule: mood follows from timbre, tempo and mode.

    * distorted timbre (metal) or fast (>= 120 BPM): minor -> dark, major -> energetic;
    * otherwise slow (< 90 BPM): calm;
    * otherwise (moderate tempo): major -> bright, minor -> dark.
    """
    minor = mode == "minor"
    if _STYLE[style].distorted or bpm >= FAST_FROM:
        return "dark" if minor else "energetic"
    if bpm < SLOW_BELOW:
        return "calm"
    return "dark" if minor else "bright"


@dataclass(frozen=True)
class _Artist:
    name: str
    bpm_center: float
    p_minor: float
    keys: tuple[int, ...]  # favourite keys (pitch classes)
    choice_bias: float  # shifts the lead-instrument choice


def _artist_name(style: str, j: int, seed: int) -> str:
    """Unique name for artist ``j`` of ``style``, stable for any dataset size."""
    if style in _PERSON_STYLES:
        space, styles, a, b = "person", _PERSON_STYLES, _FIRST, _LAST
    else:
        space, styles, a, b = "band", _BAND_STYLES, _ADJ, _NOUN
    size = len(a) * len(b)
    g = j * len(styles) + styles.index(style)  # global index inside this name space
    perm = _name_permutation(seed, space, size)
    combo = int(perm[g % size])
    first, second = a[combo // len(b)], b[combo % len(b)]
    if space == "person":
        name = f"{first} {second}"
        if style == "jazz":
            name += " " + _JAZZ_SUFFIX[combo % len(_JAZZ_SUFFIX)]
    else:
        name = f"The {first} {second}" if combo % 3 else f"{first} {second}"
    lap = g // size
    return name if lap == 0 else f"{name} {lap + 1}"


@lru_cache(maxsize=16)
def _name_permutation(seed: int, space: str, size: int) -> np.ndarray:
    return np.random.default_rng([seed, 6, 0 if space == "band" else 1]).permutation(size)


def _make_artist(style: str, j: int, seed: int) -> _Artist:
    st = _STYLE[style]
    rng = np.random.default_rng([seed, 3, STYLES.index(style), j])
    lo, hi = st.bpm
    center = float(rng.uniform(lo, hi))
    p_minor = float(np.clip(st.p_minor + rng.normal(0.0, 0.2), 0.05, 0.95))
    keys = tuple(int(k) for k in rng.permutation(12)[:3])
    return _Artist(_artist_name(style, j, seed), center, p_minor, keys, float(rng.normal(0.0, 0.2)))


def _pick(rng: np.random.Generator, items: Sequence[_T]) -> _T:
    """Uniform choice that keeps the Python type (``rng.choice`` would build an array)."""
    return items[int(rng.integers(len(items)))]


def _shuffled(rng: np.random.Generator, items: Sequence[_T]) -> list[_T]:
    return [items[int(i)] for i in rng.permutation(len(items))]


def _pick_weighted(rng: np.random.Generator, items: Sequence[tuple[str, float]], bias: float = 0.0) -> str:
    weights = [p for _, p in items]
    weights[0] = max(0.05, weights[0] + bias)
    u = rng.random() * sum(weights)
    for (name, _), w in zip(items, weights):
        if u < w:
            return name
        u -= w
    return items[-1][0]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _instr_phrases(style: str, instrument: str) -> tuple[str, ...]:
    return _INSTR_TEXT_STYLE.get((style, instrument)) or _INSTR_TEXT[instrument]


def _captions(rng: np.random.Generator, style: str, bpm: int, key: str, mode: str, mood: str,
              loudness: str, instruments: tuple[str, ...], variant: str | None) -> tuple[str, list[str]]:
    """One canonical caption and three alternatives from templates with synonyms."""
    st = _STYLE[style]
    tw = tempo_word(bpm)
    canon = [_instr_phrases(style, i)[0] for i in instruments]
    if variant == "fingerpicking":
        canon[0] = "fingerpicked " + canon[0]
    elif variant == "strumming":
        canon[0] = "strummed " + canon[0]
    noun = st.nouns[0]
    main = (f"{_cap(_article(mood))} {mood} {st.names[0]} {noun} with {_join(canon)} "
            f"at {bpm} BPM in {key} {mode}.")

    def syn_list() -> str:
        parts = [_pick(rng, _instr_phrases(style, i)) for i in instruments]
        order = [int(k) for k in rng.permutation(len(parts))]
        # keep the lead instrument first half of the time so phrases stay natural
        if rng.random() < 0.5:
            order.remove(0)
            order.insert(0, 0)
        return _join([parts[k] for k in order])

    moods = _shuffled(rng, _MOOD_SYNONYMS[mood])
    flavors = _shuffled(rng, st.flavor)
    loud = _pick(rng, _LOUD_WORDS[loudness])
    name = lambda: _pick(rng, st.names)  # noqa: E731
    nn = lambda: _pick(rng, st.nouns)  # noqa: E731
    tempo_adj = _TEMPO_ADJ[tw]
    tempo_phrase = _pick(rng, (f"at {bpm} BPM", f"at a {tempo_adj} {bpm} beats per minute",
                               f"with a {tempo_adj} tempo of {bpm} BPM"))
    templates: list[Callable[[], str]] = [
        lambda: f"{_cap(moods[0])}, {tw} {name()} {nn()} featuring {syn_list()}, in {key} {mode} at {bpm} BPM.",
        lambda: (f"{_cap(name())} instrumental in {key} {mode}: {syn_list()}, {tempo_phrase}; "
                 f"{moods[1]}, {flavors[0]}."),
        lambda: f"{_cap(tw)} {moods[2]} {name()} music with {syn_list()}, {flavors[1]}.",
        lambda: (f"{_cap(syn_list())} in {_article(moods[0])} {moods[0]}, {tw} {name()} {nn()} "
                 f"({bpm} BPM, {key} {mode})."),
        lambda: (f"{_cap(loud + ' ' if loud else '')}{moods[1]} {name()} {nn()}, {flavors[0]}, "
                 f"built around {syn_list()}.").replace("  ", " "),
        lambda: (f"{_cap(flavors[2])}: {_article(moods[2])} {moods[2]} {name()} {nn()} in {key} {mode} "
                 f"with {syn_list()}."),
    ]
    alts: list[str] = []
    for t in rng.permutation(len(templates)):
        text = _cap(templates[int(t)]())
        if text != main and text not in alts:
            alts.append(text)
        if len(alts) == 3:
            break
    return main, alts


def _title(rng: np.random.Generator, style: str, key: str, mode: str) -> str:
    if style in _FORMS and rng.random() < 0.7:
        form = _pick(rng, _FORMS[style])
        return f"{form} in {key} {mode}" if rng.random() < 0.6 else f"{form} No. {int(rng.integers(1, 13))}"
    return f"{_pick(rng, _TITLE_ADJ)} {_pick(rng, _TITLE_NOUN)}"


def _plan_clip(index: int, seed: int, style: str, artist: _Artist) -> ClipSpec:
    st = _STYLE[style]
    rng = np.random.default_rng([seed, 2, index])
    lo, hi = st.bpm
    bpm = int(np.clip(round(rng.normal(artist.bpm_center, (hi - lo) * 0.15)), lo, hi))
    mode = "minor" if rng.random() < artist.p_minor else "major"
    pc = _pick(rng, artist.keys) if rng.random() < 0.6 else int(rng.integers(12))
    key = KEYS[pc]
    instruments: list[str] = []
    if st.choice:
        instruments.append(_pick_weighted(rng, st.choice, artist.choice_bias))
    instruments += st.core
    instruments += [name for name, p in st.optional if rng.random() < p]
    variant = _pick_weighted(rng, st.variants) if st.variants else None
    loudness = _pick_weighted(rng, tuple(zip(LOUDNESS, st.loudness_p)))
    mood = mood_for(style, bpm, mode)
    inst = tuple(instruments)
    tags = [style, mood, *inst, tempo_word(bpm), f"{mode} key", "instrumental", _LOUD_TAG[loudness],
            *st.extra_tags]
    if variant:
        tags.append(variant)
    tags = list(dict.fromkeys(tags))  # de-duplicate, keep order
    caption, alts = _captions(rng, style, bpm, key, mode, mood, loudness, inst, variant)
    return ClipSpec(
        index=index, id=f"synth-{index:06d}", style=style, bpm=bpm, key=key, mode=mode,
        instruments=inst, mood=mood, loudness=loudness, artist=artist.name,
        title=_title(rng, style, key, mode), tags=tuple(tags), caption=caption,
        alt_captions=tuple(alts),
    )


def plan_dataset(n: int, seed: int) -> list[ClipSpec]:
    """Plan ``n`` clips (no audio). Deterministic in ``(n, seed)``; prefixes are stable."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n_styles = len(STYLES)
    # Per style: clip-count boundaries of consecutive artists, grown lazily.
    bounds: dict[int, list[int]] = {s: [0] for s in range(n_styles)}
    artists: dict[tuple[int, int], _Artist] = {}
    specs: list[ClipSpec] = []
    perm: np.ndarray | None = None
    for i in range(n):
        block, slot = divmod(i, n_styles)
        if slot == 0 or perm is None:
            perm = np.random.default_rng([seed, 1, block]).permutation(n_styles)
        s = int(perm[slot])
        k = block  # every block holds each style once -> k-th clip of this style
        b = bounds[s]
        while b[-1] <= k:
            j = len(b) - 1
            size = int(np.random.default_rng([seed, 7, s, j]).integers(*_CLIPS_PER_ARTIST))
            b.append(b[-1] + size)
        j = bisect.bisect_right(b, k) - 1
        if (s, j) not in artists:
            artists[(s, j)] = _make_artist(STYLES[s], j, seed)
        specs.append(_plan_clip(i, seed, STYLES[s], artists[(s, j)]))
    return specs


# ---------------------------------------------------------------------------------------
# Music theory helpers
# ---------------------------------------------------------------------------------------

_SCALE = {False: (0, 2, 4, 5, 7, 9, 11), True: (0, 2, 3, 5, 7, 8, 10)}  # minor flag -> steps


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _deg(tonic: int, minor: bool, degree: int) -> int:
    """MIDI note of a scale degree (0-based, may exceed 6 / be negative)."""
    octave, d = divmod(degree, 7)
    return tonic + _SCALE[minor][d] + 12 * octave


def _chord(tonic: int, minor: bool, degree: int, size: int = 3, harmonic: bool = False) -> list[int]:
    """Diatonic chord stacked in thirds. ``harmonic`` raises the leading tone in minor on V/vii,
    which gives the major V (V7) that classical and jazz minor keys use."""
    notes = []
    for i in range(size):
        d = degree + 2 * i
        m = _deg(tonic, minor, d)
        if harmonic and minor and d % 7 == 6 and degree % 7 in (4, 6):
            m += 1
        notes.append(m)
    return notes


def _into(midi: int, lo: int) -> int:
    """Transpose ``midi`` by octaves into [lo, lo + 12)."""
    return lo + (midi - lo) % 12


def _voicing(chord: Sequence[int], lo: int) -> list[int]:
    """Close voicing of the chord's pitch classes, starting at or above ``lo``."""
    out: list[int] = []
    for m in chord:
        v = _into(m, lo)
        while out and v <= out[-1]:
            v += 12
        out.append(v)
    return out


_PROG_MAJOR = ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (0, 5, 1, 4))
_PROG_MINOR = ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4))


# ---------------------------------------------------------------------------------------
# DSP helpers
# ---------------------------------------------------------------------------------------

_TAU = np.float32(2.0 * np.pi)
_LN1000 = 6.907755  # ln(1000): exp(-_LN1000 * t / t60) reaches -60 dB at t60


@lru_cache(maxsize=256)
def _sos(kind: str, cutoff: float | tuple[float, float], sr: int, order: int) -> np.ndarray:
    def norm(hz: float) -> float:  # keep every edge strictly inside (0, Nyquist) at any rate
        return min(max(hz / (sr / 2.0), 1e-4), 0.95)

    wn = (norm(cutoff[0]), norm(cutoff[1])) if isinstance(cutoff, tuple) else norm(cutoff)
    return signal.butter(order, wn, btype=kind, output="sos")


@lru_cache(maxsize=4096)
def _smooth_below(n: int) -> int:
    """Largest 2^a 3^b 5^c <= n (n >= 1)."""
    best = 1
    p2 = 1
    while p2 <= n:
        p3 = p2
        while p3 <= n:
            p5 = p3
            while p5 <= n:
                best = max(best, p5)
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return best


def _filt(x: np.ndarray, kind: str, cutoff: float | tuple[float, float], sr: int, order: int = 2) -> np.ndarray:
    return signal.sosfilt(_sos(kind, cutoff, sr, order), x).astype(np.float32)


class _Synth:
    """Per-clip rendering context: sample rate, tempo grid, RNGs and a note cache."""

    def __init__(self, spec: ClipSpec, n: int, sr: int, seed: int) -> None:
        self.spec = spec
        self.n, self.sr = n, sr
        self.beat = 60.0 / spec.bpm
        self.n_bars = int(math.ceil(n / sr / (4 * self.beat))) + 1
        self.minor = spec.mode == "minor"
        self.pc = KEYS.index(spec.key)
        self.rng = np.random.default_rng([seed, 4, spec.index])  # musical decisions only
        self.noise_rng = np.random.default_rng([seed, 5, spec.index])  # audio-rate noise only
        length = max(n, 3 * sr)
        self.idx = np.arange(length, dtype=np.uint32)
        self.t = self.idx.astype(np.float32) / np.float32(sr)
        self._notes: dict[tuple[object, ...], np.ndarray] = {}

    # -- time -------------------------------------------------------------------------
    def at(self, beats: float, jitter_ms: float = 0.0) -> int:
        """Sample index of a position in beats (optionally humanised)."""
        sec = beats * self.beat
        if jitter_ms:
            sec += float(self.rng.normal(0.0, jitter_ms / 1000.0))
        return max(0, int(round(sec * self.sr)))

    def samples(self, beats: float) -> int:
        return max(1, int(round(beats * self.beat * self.sr)))

    def bars(self) -> range:
        return range(self.n_bars)

    # -- signal sources -----------------------------------------------------------------
    def noise(self, n: int) -> np.ndarray:
        return self.noise_rng.random(n, dtype=np.float32) * np.float32(2.0) - np.float32(1.0)

    def phase(self, freq: float, n: int, offset: float = 0.0) -> np.ndarray:
        """Phase in cycles [0, 1) from a 32-bit fixed-point accumulator (exact and fast)."""
        inc = np.uint32(int(round(freq / self.sr * 2.0**32)) % 2**32)
        ph = self.idx[:n] * inc  # wraps modulo 2**32 == modulo one cycle
        if offset:
            ph += np.uint32(int(offset * 2.0**32) % 2**32)
        return ph.astype(np.float32) * np.float32(2.0**-32)

    def sine(self, freq: float, n: int, offset: float = 0.0) -> np.ndarray:
        return np.sin(self.phase(freq, n, offset) * _TAU)

    def saw(self, freq: float, n: int, offset: float = 0.0) -> np.ndarray:
        return self.phase(freq, n, offset) * np.float32(2.0) - np.float32(1.0)

    def tri(self, freq: float, n: int, offset: float = 0.0) -> np.ndarray:
        return np.float32(1.0) - np.float32(4.0) * np.abs(self.phase(freq, n, offset) - np.float32(0.5))

    def square(self, freq: float, n: int) -> np.ndarray:
        return np.where(self.phase(freq, n) < 0.5, np.float32(1.0), np.float32(-1.0))

    def decay(self, n: int, t60: float) -> np.ndarray:
        return np.exp(self.t[:n] * np.float32(-_LN1000 / t60))

    def ramp_in(self, x: np.ndarray, seconds: float) -> np.ndarray:
        k = min(len(x), max(1, int(seconds * self.sr)))
        x[:k] *= np.linspace(0.0, 1.0, k, dtype=np.float32)
        return x

    def ramp_out(self, x: np.ndarray, seconds: float) -> np.ndarray:
        k = min(len(x), max(1, int(seconds * self.sr)))
        x[len(x) - k:] *= np.linspace(1.0, 0.0, k, dtype=np.float32)
        return x

    # -- mixing -------------------------------------------------------------------------
    def add(self, buf: np.ndarray, sig: np.ndarray, start: int, gain: float = 1.0) -> None:
        if start >= len(buf) or gain == 0.0:
            return
        end = min(len(buf), start + len(sig))
        buf[start:end] += np.float32(gain) * sig[: end - start]

    def hits(self, buf: np.ndarray, sample: np.ndarray, beats: Sequence[float],
             gains: Sequence[float] | float = 1.0, jitter_ms: float = 0.0) -> None:
        g = [gains] * len(beats) if isinstance(gains, (int, float)) else list(gains)
        for b, gain in zip(beats, g):
            self.add(buf, sample, self.at(b, jitter_ms), gain)

    def note(self, buf: np.ndarray, make: Callable[[int], np.ndarray], key: tuple[object, ...], start: int,
             length: int, gain: float, release: float = 0.05, full: float = 2.0) -> None:
        """Add a cached note: rendered once per ``key`` at ``full`` seconds, then cut to
        ``length`` samples plus a linear release. Repeated pitches cost only a slice-add."""
        if start >= len(buf):
            return
        cached = self._notes.get(key)
        if cached is None:
            cached = make(min(max(1, int(full * self.sr)), len(self.idx)))
            self._notes[key] = cached
        r = max(1, int(release * self.sr))
        total = min(len(cached), length + r, len(buf) - start)
        body = min(total, length)
        g = np.float32(gain)
        buf[start:start + body] += g * cached[:body]
        tail = total - body
        if tail > 0:
            fade = np.linspace(1.0, 0.0, r, dtype=np.float32)[:tail]
            buf[start + body:start + total] += (g * cached[body:total]) * fade

    # -- instruments (one note, ``n`` samples) ----------------------------------------------
    def pluck(self, freq: float, n: int, stretch: float, t60: float, pluck_pos: float,
              tone_hz: float) -> np.ndarray:
        """Karplus-Strong string, computed a whole period at a time in the frequency domain.

        The classic loop ``y[k+1] = g * ((1-s) y[k] + s * roll(y[k], 1))`` applied to one
        period ``y`` is a circular filter, i.e. a per-bin gain ``(g |H|)``; period ``k`` is thus
        ``irfft(Y0 * (g |H|)**k)`` and all periods come out of one batched inverse FFT. The
        period is rounded down to a 5-smooth integer (fast FFT sizes; prime sizes are several
        times slower) and the result is read out slightly slower (linear interpolation) to land
        on the exact pitch.

        The excitation is shaped rather than white noise: a white burst makes every harmonic
        equally (and randomly) loud, which sounds harsh and smears the pitch classes. Harmonic
        ``h`` gets ``|sin(pi h pluck_pos)| / h`` (string plucked at ``pluck_pos``), a roll-off
        above ``tone_hz``, and a random phase and +-25 % amplitude jitter.
        """
        sr = self.sr
        period = _smooth_below(max(4, int(sr / freq)))
        ratio = freq * period / sr  # <= 1
        n_src = int(math.ceil(n * ratio)) + 2
        k = n_src // period + 1
        bins = period // 2 + 1
        h = np.arange(bins, dtype=np.float64)
        h[0] = 1.0
        amp = np.abs(np.sin(np.pi * h * pluck_pos)) / h / (1.0 + h * (sr / period) / tone_hz)
        amp *= 0.75 + 0.5 * self.noise_rng.random(bins)
        amp[0] = 0.0
        spec0 = amp * np.exp(2j * np.pi * self.noise_rng.random(bins))
        w = 2.0 * np.pi * np.arange(bins) / period
        mag = np.sqrt((1 - stretch) ** 2 + stretch**2 + 2 * stretch * (1 - stretch) * np.cos(w))
        g = 10.0 ** (-3.0 / (t60 * sr / period))  # fundamental reaches -60 dB after t60
        powers = (g * mag)[None, :] ** np.arange(k, dtype=np.float64)[:, None]
        y = np.fft.irfft(spec0[None, :] * powers, n=period, axis=1).ravel()[:n_src].astype(np.float32)
        pos = self.t[:n] * np.float32(sr * ratio)  # = sample index * ratio
        i0 = np.minimum(pos.astype(np.int32), n_src - 2)
        frac = pos - i0
        out = y[i0] + frac * (y[i0 + 1] - y[i0])
        peak = float(np.abs(out).max()) or 1.0
        return out / np.float32(peak)

    def fm(self, freq: float, n: int, ratio: float, index: float, index_t: float, index_floor: float,
           t60: float) -> np.ndarray:
        """Two-operator FM with a decaying modulation index (piano, e-piano, bells)."""
        t = self.t[:n]
        idx = np.float32(index) * np.exp(t * np.float32(-1.0 / index_t)) + np.float32(index_floor)
        mod = np.sin(self.phase(freq * ratio, n) * _TAU) * idx
        y = np.sin(self.phase(freq, n) * _TAU + mod)
        return self.ramp_in(y * self.decay(n, t60), 0.002)

    def piano(self, midi: int, n: int) -> np.ndarray:
        f = _hz(midi)
        t60 = float(np.clip(7.0 - 0.09 * (midi - 40), 1.2, 7.0))
        body = self.fm(f, n, 1.0, 1.6 if midi < 60 else 1.1, 0.12, 0.25, t60)
        # piano decay is two-stage: a fast initial drop then a long tail
        y = body * (np.float32(0.45) + np.float32(0.55) * self.decay(n, t60 * 0.15))
        if 2 * f < 0.45 * self.sr:  # slightly sharp 2nd partial: string inharmonicity
            y += np.float32(0.25) * self.sine(2.003 * f, n, 0.25) * self.decay(n, t60 * 0.4)
        return y

    def epiano(self, midi: int, n: int) -> np.ndarray:
        f = _hz(midi)
        y = self.fm(f, n, 1.0, 1.3, 0.35, 0.15, 2.8)
        if 7 * f < 0.45 * self.sr:  # the metallic "tine" of a Rhodes
            y += np.float32(0.08) * self.sine(7.0 * f, n) * self.decay(n, 0.25)
        return y

    def round_bass(self, midi: int, n: int, t60: float, grit: float = 0.0) -> np.ndarray:
        f = _hz(midi)
        ph = self.phase(f, n) * _TAU
        y = np.sin(ph) + np.float32(0.35) * np.sin(ph * np.float32(2.0))
        if grit:
            y += np.float32(grit) * self.saw(f, n)
        return self.ramp_in(y * self.decay(n, t60), 0.004)

    def organ(self, midi: int, n: int) -> np.ndarray:
        f = _hz(midi)
        ph = self.phase(f, n) * _TAU
        y = np.sin(ph)
        for harmonic, level in ((2.0, 0.6), (4.0, 0.35)):  # drawbars 8', 4', 2'
            y += np.float32(level) * np.sin(ph * np.float32(harmonic))
        return self.ramp_in(y, 0.004)

    def bowed(self, midi: int, n: int, attack: float = 0.04) -> np.ndarray:
        """Two detuned saws with vibrato (strings, cello); brightness is set by a track filter."""
        f = _hz(midi)
        t = self.t[:n]
        vib_rate, depth = 5.2, 0.004
        # analytic phase of f * (1 + depth * sin(2 pi r t)) -> exact vibrato without cumsum
        wobble = np.float32(1.0) - np.cos(t * np.float32(2 * np.pi * vib_rate))
        vib = np.float32(depth * f / (2 * np.pi * vib_rate)) * wobble
        y = np.zeros(n, dtype=np.float32)
        for detune in (0.997, 1.003):
            p = self.phase(f * detune, n) + vib * np.float32(detune)
            y += (p - np.floor(p)) * np.float32(2.0) - np.float32(1.0)
        return self.ramp_in(y * np.float32(0.5), attack)

    def power_chord(self, midi: int, n: int, muted: bool) -> np.ndarray:
        """Root, fifth and octave from pairs of detuned saws (distorted later as a track)."""
        y = np.zeros(n, dtype=np.float32)
        for iv in (0, 7, 12):
            f = _hz(midi + iv)
            y += self.saw(f * 0.996, n, 0.1 * iv) + self.saw(f * 1.004, n, 0.3)
        env = self.decay(n, 0.18 if muted else 2.5)
        return self.ramp_in(y * env * np.float32(1 / 6), 0.003)

    # -- drums (one-shots, rendered once per clip) ----------------------------------------
    def kick(self, f_hi: float, f_lo: float, sweep: float, t60: float, click: float) -> np.ndarray:
        n = int(t60 * self.sr)
        t = self.t[:n]
        f = np.float32(f_lo) + np.float32(f_hi - f_lo) * np.exp(t * np.float32(-1.0 / sweep))
        ph = np.cumsum(f, dtype=np.float64).astype(np.float32) / np.float32(self.sr)
        y = np.sin(ph * _TAU) * self.decay(n, t60)
        k = min(n, int(0.004 * self.sr))
        y[:k] += np.float32(click) * self.noise(k) * np.linspace(1.0, 0.0, k, dtype=np.float32)
        return self.ramp_in(y, 0.001)

    def snare(self, tone: float, t60: float, hp: float, body: float = 0.6) -> np.ndarray:
        n = int(t60 * self.sr)
        shell = self.sine(tone, n) + np.float32(0.5) * self.sine(tone * 1.78, n)
        y = np.float32(body) * shell * self.decay(n, 0.08)
        y += _filt(self.noise(n), "highpass", hp, self.sr) * self.decay(n, t60)
        return y

    def hat(self, t60: float, hp: float = 7000.0) -> np.ndarray:
        n = int(max(t60, 0.02) * self.sr)
        return _filt(self.noise(n), "highpass", hp, self.sr, 4) * self.decay(n, t60)

    def metallic(self, n: int, base: float) -> np.ndarray:
        # the six square waves of an analogue cymbal (TR-808 style inharmonic ratios)
        y = np.zeros(n, dtype=np.float32)
        for r in (1.0, 1.4827, 1.8002, 2.5464, 2.6303, 3.8964):
            y += self.square(base * r, n)
        return y * np.float32(1 / 6)

    def cymbal(self, t60: float, hp: float, metal: float, base: float = 300.0, noise: float = 1.0) -> np.ndarray:
        n = int(t60 * self.sr)
        y = np.float32(noise) * self.noise(n) + np.float32(metal) * self.metallic(n, base)
        return _filt(y, "highpass", hp, self.sr) * self.decay(n, t60)

    def ride(self) -> np.ndarray:
        n = int(1.5 * self.sr)
        y = self.cymbal(1.5, 2500.0, 1.0, 420.0, noise=0.3)
        ping = self.sine(min(2600.0, 0.4 * self.sr), n) * self.decay(n, 0.4)
        return y + np.float32(0.4) * ping

    def clap(self) -> np.ndarray:
        n = int(0.25 * self.sr)
        env = self.decay(n, 0.18)
        for k in range(3):  # a few quick bursts before the tail
            a, b = int((0.008 * k) * self.sr), int((0.008 * k + 0.006) * self.sr)
            env[a:b] += 1.0
        return _filt(self.noise(n), "bandpass", (900.0, 2600.0), self.sr) * env

    def clave(self) -> np.ndarray:
        n = int(0.12 * self.sr)
        return (self.sine(2500.0, n) + np.float32(0.3) * self.sine(3700.0, n)) * self.decay(n, 0.06)

    def conga(self, freq: float, slap: bool, t60: float) -> np.ndarray:
        n = int(max(t60, 0.05) * self.sr)
        t = self.t[:n]
        f = np.float32(freq) * (np.float32(1.0) + np.float32(0.25) * np.exp(t * np.float32(-1 / 0.012)))
        ph = np.cumsum(f, dtype=np.float64).astype(np.float32) / np.float32(self.sr)
        y = np.sin(ph * _TAU) * self.decay(n, t60)
        k = min(n, int(0.015 * self.sr))
        burst = _filt(self.noise(k), "highpass", 1500.0, self.sr) * np.linspace(1.0, 0.0, k, dtype=np.float32)
        y[:k] += np.float32(1.2 if slap else 0.3) * burst
        return y

    def cowbell(self) -> np.ndarray:
        n = int(0.3 * self.sr)
        y = self.square(587.0, n) + self.square(845.0, n)
        return _filt(y, "bandpass", (500.0, 3000.0), self.sr) * self.decay(n, 0.22) * np.float32(0.5)

    def rim(self) -> np.ndarray:
        n = int(0.1 * self.sr)
        y = self.sine(1700.0, n) * self.decay(n, 0.03) + self.sine(450.0, n) * self.decay(n, 0.06)
        k = min(n, int(0.003 * self.sr))
        y[:k] += self.noise(k)
        return y

    def shaker(self) -> np.ndarray:
        n = int(0.12 * self.sr)
        y = _filt(self.noise(n), "highpass", 5000.0, self.sr) * self.decay(n, 0.08)
        return self.ramp_in(y, 0.008)

    # -- effects --------------------------------------------------------------------------
    def echo(self, x: np.ndarray, delays: Sequence[float], gains: Sequence[float]) -> np.ndarray:
        """A few feed-forward taps: a cheap sense of space."""
        y = x.copy()
        for d, g in zip(delays, gains):
            k = int(d * self.sr)
            if 0 < k < len(x):
                y[k:] += np.float32(g) * x[:-k]
        return y


# ---------------------------------------------------------------------------------------
# Styles: each returns the (un-normalised) mix for one clip
# ---------------------------------------------------------------------------------------


def _tonic(s: _Synth, lo: int) -> int:
    return _into(60 + s.pc, lo)


def _progression(s: _Synth) -> tuple[int, ...]:
    progs = _PROG_MINOR if s.minor else _PROG_MAJOR
    return progs[int(s.rng.integers(len(progs)))]


def _render_metal(s: _Synth) -> np.ndarray:
    n, sr, rng = s.n, s.sr, s.rng
    root = _tonic(s, 40)  # E2..D#3: low, chugging register
    inst = s.spec.instruments
    # a two-bar riff on a 16th grid: chugs on the root, accented held power chords elsewhere
    riff: list[tuple[int, int, int, bool]] = [(0, 2, 0, False)]  # (step, hold, degree, muted)
    step = 2
    while step < 32:
        r = rng.random()
        if r < 0.55:
            riff.append((step, 1, 0, True))
            step += 1
        elif r < 0.65:
            step += 1
        else:
            hold = int(rng.integers(2, 5))
            riff.append((step, hold, _pick(rng, (0, 2, 3, 5, 6, -2)), False))
            step += hold
    guitar = np.zeros(n, np.float32)
    bass = np.zeros(n, np.float32)
    sixteenth = s.samples(0.25)
    for rep in range((s.n_bars + 1) // 2):
        for st, hold, degree, muted in riff:
            start = s.at(rep * 8 + st / 4)
            m = max(_deg(root, s.minor, degree), 38)
            length = hold * sixteenth
            s.note(guitar, lambda k, m=m, mu=muted: s.power_chord(m, k, mu), ("pc", m, muted), start,
                   length, 1.0, release=0.02, full=0.6 if muted else 1.5)
            if "electric bass" in inst:
                s.note(bass, lambda k, m=m: s.round_bass(m - 12, k, 1.5, grit=0.6), ("b", m), start, length,
                       1.0, release=0.02, full=1.5)
    # distortion: heavy asymmetric waveshaping, then a "cabinet" band-limit
    drive = np.float32(rng.uniform(14.0, 24.0))
    guitar = np.tanh(guitar * drive + np.float32(0.3)) - np.float32(math.tanh(0.3))
    guitar = _filt(np.clip(guitar * np.float32(1.3), -1.0, 1.0), "bandpass", (90.0, 6500.0), sr)
    drums = np.zeros(n, np.float32)
    kick = s.kick(180.0, 55.0, 0.015, 0.12, 1.0)
    snare = s.snare(210.0, 0.18, 1800.0)
    crash = s.cymbal(1.8, 4000.0, 1.0)
    beats = s.n_bars * 4
    gallop = rng.random() < 0.3
    kicks = [q / 4 for q in range(beats * 4) if not gallop or q % 4 != 1]
    s.hits(drums, kick, kicks, [0.9 if q % 1 == 0 else 0.75 for q in kicks])
    s.hits(drums, snare, [b + 1 for b in range(0, beats, 2)], 0.8)
    crash_every = _pick(rng, (1, 2))
    # big crash on the downbeat, lighter crash/china hits on beat 3 and the remaining downbeats
    s.hits(drums, crash, [bar * 4 for bar in s.bars() if bar % crash_every == 0], 0.6)
    light = [bar * 4 + 2 for bar in s.bars()] + [bar * 4 for bar in s.bars() if bar % crash_every]
    s.hits(drums, crash, light, 0.25)
    bass = _filt(np.tanh(bass * np.float32(2)), "lowpass", 900.0, sr)
    return guitar * np.float32(0.8) + bass * np.float32(0.45) + drums


def _render_techno(s: _Synth) -> np.ndarray:
    n, sr, rng = s.n, s.sr, s.rng
    inst = s.spec.instruments
    beats = s.n_bars * 4
    drums = np.zeros(n, np.float32)
    s.hits(drums, s.kick(160.0, 48.0, 0.04, 0.35, 0.3), range(beats), 1.0)
    s.hits(drums, s.hat(0.14, 6500.0), [b + 0.5 for b in range(beats)], 0.45)
    if rng.random() < 0.6:  # quiet closed 16ths under the open hats
        s.hits(drums, s.hat(0.03, 8000.0), [b + q / 4 for b in range(beats) for q in (1, 3)], 0.15)
    if "clap" in inst:
        s.hits(drums, s.clap(), [b for b in range(beats) if b % 2 == 1], 0.5)
    root = _tonic(s, 36)
    pattern = [(2,), (1, 2, 3), (2, 3), (0, 2, 3)][int(rng.integers(4))]
    degrees = (0, 0, 0, 5) if rng.random() < 0.5 else (0, 0, 3, 3)
    bass = np.zeros(n, np.float32)
    step = s.samples(0.25)

    def make_bass(k: int, m: int) -> np.ndarray:
        f = _hz(m)
        bright = s.decay(k, 0.12)
        return (s.sine(f, k) + s.saw(f, k) * bright * np.float32(0.8)) * s.decay(k, 0.3)

    for bar in s.bars():
        m = _deg(root, s.minor, degrees[bar % 4])
        for b in range(4):
            for q in pattern:
                mm = m + 12 if rng.random() < 0.12 else m
                s.note(bass, lambda k, mm=mm: make_bass(k, mm), ("bass", mm), s.at(bar * 4 + b + q / 4),
                       int(step * 0.9), 1.0, release=0.01, full=0.3)
    bass = _filt(bass, "lowpass", 1200.0, sr)
    mix = drums + bass * np.float32(0.6)
    if "synth stabs" in inst:
        stabs = np.zeros(n, np.float32)
        chord = _voicing(_chord(root, s.minor, 0, 3), 60)
        rhythm = [0.5, 1.75, 2.5] if rng.random() < 0.5 else [0.75, 2.25, 3.5]

        def make_stab(k: int) -> np.ndarray:
            y = np.zeros(k, np.float32)
            for m in chord:
                y += s.saw(_hz(m) * 0.997, k) + s.saw(_hz(m) * 1.003, k, 0.5)
            return y * s.decay(k, 0.35) * np.float32(1 / 6)

        for bar in s.bars():
            for r in rhythm:
                s.note(stabs, make_stab, ("stab",), s.at(bar * 4 + r), s.samples(0.4), 1.0, release=0.03, full=0.5)
        mix += _filt(stabs, "lowpass", 2500.0, sr) * np.float32(0.35)
    return mix


def _render_ambient(s: _Synth) -> np.ndarray:
    n, sr, rng = s.n, s.sr, s.rng
    inst = s.spec.instruments
    prog = _progression(s)
    tonic = _tonic(s, 48)
    chord_beats = 4.0  # one chord per bar; at 60-80 BPM that is 3-4 s
    pad = np.zeros(n, np.float32)
    attack, release = 1.6 + rng.random(), 2.0 + rng.random()
    for c in range(s.n_bars):
        start = s.at(c * chord_beats)
        if start >= n:
            break
        chord = _chord(tonic, s.minor, prog[c % len(prog)], 4)  # seventh chords sound "open"
        voices = _voicing(chord, 55)
        seg = min(n - start, s.samples(chord_beats) + int(release * sr))
        env = np.ones(seg, np.float32)
        s.ramp_in(env, attack)
        s.ramp_out(env, release)
        y = np.zeros(seg, np.float32)
        for v, m in enumerate(voices):
            f = _hz(m)
            rate = np.float32(2 * np.pi * (0.11 + 0.07 * v))  # each voice breathes at its own pace
            lfo = np.float32(0.75) + np.float32(0.25) * np.sin(s.t[:seg] * rate + np.float32(v))
            y += (s.tri(f * 0.998, seg, 0.1 * v) + s.tri(f * 1.002, seg, 0.5)) * lfo
        pad[start:start + seg] += y * env
    pad = _filt(pad, "lowpass", float(rng.uniform(1200.0, 2200.0)), sr) * np.float32(0.25)
    mix = s.echo(pad, (0.37, 0.71), (0.35, 0.2))
    if "drone" in inst:
        f = _hz(_tonic(s, 36))
        swell = np.float32(0.7) + np.float32(0.3) * np.sin(s.t[:n] * np.float32(2 * np.pi * 0.07))
        drone = (s.sine(f, n) + np.float32(0.4) * s.sine(2.0 * f * 1.001, n)) * swell
        mix += s.ramp_in(drone, 2.0) * np.float32(0.35)
    if "bell chimes" in inst:
        bells = np.zeros(n, np.float32)
        penta = (0, 2, 4, 7, 9) if not s.minor else (0, 3, 5, 7, 10)
        b = float(rng.uniform(0.5, 2.0))
        while s.at(b) < n:
            m = _into(60 + s.pc + _pick(rng, penta), 72)
            s.note(bells, lambda k, m=m: s.fm(_hz(m), k, 3.5, 2.0, 0.4, 0.1, 3.0), ("bell", m), s.at(b),
                   s.samples(8), float(rng.uniform(0.5, 1.0)), release=0.5, full=3.0)
            b += _pick(rng, (2.0, 3.0, 4.0, 6.0))
        mix += s.echo(bells, (0.45, 0.9), (0.4, 0.2)) * np.float32(0.12)
    return mix


def _render_jazz(s: _Synth) -> np.ndarray:
    n, rng = s.n, s.rng
    inst = s.spec.instruments
    swing = 2.0 / 3.0  # swung 8ths: the offbeat lands on the last triplet
    progs = ((1, 4, 0, 0), (1, 4, 0, 5)) if s.minor else ((1, 4, 0, 0), (0, 5, 1, 4), (2, 5, 1, 4))
    prog = progs[int(rng.integers(len(progs)))]
    tonic = _tonic(s, 48)
    chords = [_chord(tonic, s.minor, d, 4, harmonic=True) for d in prog]
    drums = np.zeros(n, np.float32)
    ride = s.ride()
    for bar in s.bars():
        b0 = bar * 4
        s.hits(drums, ride, [b0, b0 + 1, b0 + 1 + swing, b0 + 2, b0 + 3, b0 + 3 + swing],
               [0.55, 0.75, 0.45, 0.55, 0.75, 0.45], jitter_ms=4.0)
    if "hi-hat" in inst:
        s.hits(drums, s.hat(0.05, 5000.0), [bar * 4 + b for bar in s.bars() for b in (1, 3)], 0.35)
    # walking bass: root on 1, chord/scale tones on 2-3, chromatic approach on 4
    bass = np.zeros(n, np.float32)
    for bar in s.bars():
        ch = chords[bar % len(chords)]
        nxt = _into(chords[(bar + 1) % len(chords)][0], 33)
        root = _into(ch[0], 33)
        line = [root]
        for _ in range(2):
            cand = [_into(m, 33) for m in ch[1:]] + [root + 12 if root + 12 <= 52 else root]
            line.append(min(cand, key=lambda m: abs(m - line[-1]) + rng.random() * 6))
        line.append(nxt + (1 if rng.random() < 0.5 else -1))
        for b, m in enumerate(line):
            s.note(bass, lambda k, m=m: s.round_bass(m, k, 0.9), ("bass", m), s.at(bar * 4 + b, 6.0),
                   s.samples(0.95), 0.9, release=0.04, full=1.2)
    # comping: rootless-ish voicings on the electric piano, syncopated
    keys = np.zeros(n, np.float32)
    for bar in s.bars():
        voicing = _voicing(chords[bar % len(chords)][1:] + [chords[bar % len(chords)][0] + 14], 55)
        spots = [0.0, swing, 1 + swing, 2.0, 2 + swing, 3 + swing]
        for pos in sorted(_shuffled(rng, spots)[: int(rng.integers(1, 4))]):
            dur = s.samples(_pick(rng, (0.5, 1.0, 1.5)))
            vel = float(rng.uniform(0.5, 0.9))
            for m in voicing:
                s.note(keys, lambda k, m=m: s.epiano(m, k), ("ep", m), s.at(bar * 4 + pos, 8.0), dur, vel,
                       release=0.08, full=2.0)
    return drums * np.float32(0.22) + bass * np.float32(0.8) + keys * np.float32(0.35)


def _render_baroque(s: _Synth) -> np.ndarray:
    n, sr, rng = s.n, s.sr, s.rng
    inst = s.spec.instruments
    harpsichord = "harpsichord" in inst
    circle = (0, 3, 6, 2, 5, 1, 4, 0)
    alt = (0, 4, 5, 2, 3, 0, 3, 4)
    prog = circle if rng.random() < 0.6 else alt
    tonic = _tonic(s, 48)
    patterns = ((0, 1, 2, 3, 2, 1, 2, 1), (0, 2, 1, 3, 2, 4, 3, 1),
                (0, 1, 2, 3, 4, 3, 2, 1), (4, 3, 2, 1, 2, 3, 2, 1))
    pattern = patterns[int(rng.integers(len(patterns)))]
    lead = np.zeros(n, np.float32)
    low = np.zeros(n, np.float32)
    sixteenth = s.samples(0.25)
    lo_reg = int(rng.integers(58, 64))

    def lead_note(k: int, m: int) -> np.ndarray:
        if harpsichord:
            y = s.pluck(_hz(m), k, 0.12, float(np.clip(2.5 - 0.02 * (m - 60), 0.8, 2.5)), 0.13, 5000.0)
            if m + 12 < 100:  # the 4' (octave) register of a two-manual harpsichord
                y += np.float32(0.3) * s.pluck(_hz(m + 12), k, 0.15, 1.5, 0.1, 5000.0)
            return y
        return s.bowed(m, k, attack=0.02)

    for bar in s.bars():
        ch = _chord(tonic, s.minor, prog[bar % len(prog)], 3, harmonic=True)
        tones = _voicing(ch, lo_reg)
        tones += [tones[0] + 12, tones[1] + 12]
        for half in range(2):
            for i, p in enumerate(pattern):
                m = tones[p]
                length = sixteenth * (3 if harpsichord else 1)
                s.note(lead, lambda k, m=m: lead_note(k, m), ("lead", m), s.at(bar * 4 + half * 2 + i / 4, 3.0),
                       length, 1.0 if i % 4 == 0 else 0.75, release=0.03, full=0.8)
        # basso continuo: 8ths alternating root and octave (kept above ~100 Hz: no kick-like lows)
        root = _into(ch[0], 45)
        for e in range(8):
            m = root + (12 if e % 2 else 0) if rng.random() < 0.8 else _into(ch[2], 45)
            if "cello" in inst:
                s.note(low, lambda k, m=m: s.bowed(m, k, 0.03), ("cello", m), s.at(bar * 4 + e / 2, 3.0),
                       s.samples(0.48), 0.8, release=0.04, full=0.6)
            elif harpsichord:
                s.note(low, lambda k, m=m: s.pluck(_hz(m), k, 0.15, 2.0, 0.12, 3000.0), ("low", m),
                       s.at(bar * 4 + e / 2, 3.0), s.samples(0.5), 0.6, release=0.03, full=0.8)
            else:
                s.note(low, lambda k, m=m: s.bowed(m, k, 0.03), ("low", m), s.at(bar * 4 + e / 2, 3.0),
                       s.samples(0.48), 0.6, release=0.04, full=0.6)
    if not harpsichord:
        lead = _filt(lead, "lowpass", 3500.0, sr)
    if "cello" in inst or not harpsichord:
        low = _filt(low, "lowpass", 2000.0, sr)
    return s.echo(lead * np.float32(0.5) + low * np.float32(0.45), (0.05, 0.11), (0.25, 0.12))


def _render_hiphop(s: _Synth) -> np.ndarray:
    n, sr, rng = s.n, s.sr, s.rng
    inst = s.spec.instruments
    swing = float(rng.uniform(0.08, 0.2))  # lazy 16ths

    def pos(bar: int, step: int) -> float:
        return bar * 4 + step / 4 + (swing * 0.25 if step % 2 else 0.0)

    kicks_pat = ((0, 7, 10), (0, 3, 10), (0, 8, 10), (0, 10, 11))[int(rng.integers(4))]
    drums = np.zeros(n, np.float32)
    kick = s.kick(120.0, 45.0, 0.03, 0.45, 0.2)
    snare = s.snare(180.0, 0.25, 1200.0, body=0.8)
    hat = s.hat(0.045, 6000.0)
    for bar in s.bars():
        s.hits(drums, kick, [pos(bar, k) for k in kicks_pat], 1.0, jitter_ms=3.0)
        s.hits(drums, snare, [pos(bar, 4), pos(bar, 12)], 0.8, jitter_ms=3.0)
        eighths = range(0, 16, 2)
        s.hits(drums, hat, [pos(bar, h) for h in eighths], [0.35 if h % 4 else 0.5 for h in eighths])
    drums = _filt(drums, "lowpass", 9000.0, sr)  # dusty: no air on top
    progs = ((0, 5), (0, 3), (0, 6, 5, 4)) if s.minor else ((1, 4), (0, 5, 1, 4), (3, 2))
    prog = progs[int(rng.integers(len(progs)))]
    tonic = _tonic(s, 48)
    chords = np.zeros(n, np.float32)
    sub = np.zeros(n, np.float32)
    bar_len = s.samples(4)
    for bar in s.bars():
        ch = _chord(tonic, s.minor, prog[bar % len(prog)], 4)
        for m in _voicing(ch, 55):
            s.note(chords, lambda k, m=m: s.epiano(m, k), ("ch", m), s.at(bar * 4), int(bar_len * 0.95), 0.7,
                   release=0.1, full=3.0)
        root = _into(ch[0], 28)
        hits = [pos(bar, k) for k in kicks_pat] + [bar * 4 + 4]
        for a, b in zip(hits[:-1], hits[1:]):
            s.note(sub, lambda k, m=root: s.round_bass(m, k, 1.2), ("sub", root), s.at(a), s.at(b) - s.at(a),
                   0.9, release=0.03, full=2.0)
    # "sampled" chords: band-limited, bit-crushed and sample-rate-reduced like an old sampler
    chords = _filt(chords, "lowpass", 2800.0, sr)
    peak = float(np.abs(chords).max()) or 1.0
    levels = np.float32(96.0 / peak)  # ~7.5 bits
    # dither (audible as sampler hiss) keeps quiet tails from gating to exact silence
    chords = np.round(chords * levels + s.noise(n)) / levels
    chords = np.repeat(chords[::2], 2)[:n]
    mix = drums + sub * np.float32(0.6) + chords * np.float32(0.3)
    if "vinyl crackle" in inst:
        crackle = np.zeros(n, np.float32)
        count = int(rng.poisson(25 * n / sr))  # number of clicks follows the musical rng
        where = s.noise_rng.integers(0, n, size=count)
        crackle[where] = s.noise(count) * s.noise_rng.exponential(1.0, count).astype(np.float32)
        hiss = s.noise(n) * np.float32(0.03)
        mix += _filt(crackle + hiss, "bandpass", (800.0, 6000.0), sr) * np.float32(0.12)
    return mix


def _render_folk(s: _Synth) -> np.ndarray:
    n, rng = s.n, s.rng
    inst = s.spec.instruments
    prog = _progression(s)
    tonic = _tonic(s, 40)
    guitar = np.zeros(n, np.float32)

    def string(k: int, m: int) -> np.ndarray:
        return s.pluck(_hz(m), k, 0.45, float(np.clip(3.0 - 0.04 * (m - 40), 1.0, 3.0)), 0.18, 2000.0)

    fingerpick = "fingerpicking" in s.spec.tags
    # treble fingers cycle through the upper chord tones so every bar states the full chord
    treble = _pick(rng, ((2, 3, 4, 3), (3, 4, 2, 4), (4, 3, 2, 3), (2, 4, 3, 4)))
    for bar in s.bars():
        ch = _chord(tonic, s.minor, prog[bar % len(prog)], 3)
        bass_root = _into(ch[0], 40)
        upper = _voicing(ch, bass_root + 7)
        shape = [bass_root, bass_root + 7, *upper][:5]
        if fingerpick:
            # Travis picking: alternating thumb on the beats, melody notes on some offbeats
            for e in range(8):
                b = bar * 4 + e / 2
                if e % 2 == 0:
                    m = shape[0] if e % 4 == 0 else shape[1]
                    vel = 0.9
                elif rng.random() < 0.8:
                    m = shape[treble[e // 2]]
                    vel = 0.6
                else:
                    continue
                s.note(guitar, lambda k, m=m: string(k, m), ("s", m), s.at(b, 8.0), s.samples(1.5), vel,
                       release=0.1, full=1.8)
        else:
            strums = ((0, "d"), (1, "d"), (1.5, "u"), (2.5, "u"), (3, "d"), (3.5, "u"))
            for beat, direction in strums:
                if beat > 0 and rng.random() < 0.2:  # sparse: skip some strums
                    continue
                notes = shape if direction == "d" else shape[:1:-1]
                t0 = s.at(bar * 4 + beat, 8.0)
                vel = 0.8 if direction == "d" else 0.5
                for i, m in enumerate(notes):
                    s.note(guitar, lambda k, m=m: string(k, m), ("s", m), t0 + int(i * 0.012 * s.sr),
                           s.samples(0.5), vel, release=0.06, full=1.8)
    mix = s.echo(guitar, (0.03, 0.07), (0.2, 0.1))
    if "shaker" in inst:
        shaker = s.shaker()
        s.hits(mix, shaker, [bar * 4 + e / 2 for bar in s.bars() for e in range(8)],
               [0.12 if e % 2 == 0 else 0.2 for _ in s.bars() for e in range(8)], jitter_ms=5.0)
    return mix


def _render_reggae(s: _Synth) -> np.ndarray:
    n, sr, rng = s.n, s.sr, s.rng
    inst = s.spec.instruments
    progs = ((0, 3), (0, 6), (0, 5, 6, 0)) if s.minor else ((0, 3), (0, 4, 3, 4), (0, 5, 3, 4))
    prog = progs[int(rng.integers(len(progs)))]
    tonic = _tonic(s, 48)
    drums = np.zeros(n, np.float32)
    kick = s.kick(110.0, 50.0, 0.03, 0.35, 0.2)
    rim = s.rim()
    hat = s.hat(0.04, 6000.0)
    for bar in s.bars():  # one drop: kick and rimshot together on beat three only
        s.hits(drums, kick, [bar * 4 + 2], 1.0)
        s.hits(drums, rim, [bar * 4 + 2], 0.5)
        s.hits(drums, hat, [bar * 4 + e / 2 + (0.06 if e % 2 else 0.0) for e in range(8)], 0.22, jitter_ms=4.0)
    skank = np.zeros(n, np.float32)
    bass = np.zeros(n, np.float32)
    guitar = "rhythm guitar" in inst
    bass_pat = ((0, 1.5), (1.5, 0.5), (2.0, 1.0), (3.0, 0.5), (3.5, 0.5)) if rng.random() < 0.5 else \
        ((0, 0.75), (0.75, 0.75), (1.5, 1.0), (3.0, 1.0))
    for bar in s.bars():
        ch = _chord(tonic, s.minor, prog[bar % len(prog)], 3)
        voicing = _voicing(ch, 60)
        offbeats = [1.0, 3.0] if guitar else [1.0, 3.0, 0.5, 1.5, 2.5, 3.5]
        for b in offbeats:
            vel = 0.8 if b in (1.0, 3.0) else 0.35  # organ "bubble" on the 8ths is quieter
            for m in voicing:
                if guitar:
                    s.note(skank, lambda k, m=m: s.pluck(_hz(m), k, 0.2, 1.0, 0.1, 2500.0), ("g", m),
                           s.at(bar * 4 + b, 4.0), s.samples(0.18), vel, release=0.02, full=0.4)
                else:
                    s.note(skank, lambda k, m=m: s.organ(m, k), ("o", m), s.at(bar * 4 + b, 4.0),
                           s.samples(0.3), vel, release=0.03, full=0.4)
        root = _into(ch[0], 33)
        for (b, dur), off in zip(bass_pat, (0, 7, 12, 0, 3 if s.minor else 4)):
            m = root + off
            s.note(bass, lambda k, m=m: s.round_bass(m, k, 1.0), ("b", m), s.at(bar * 4 + b, 4.0),
                   s.samples(dur * 0.9), 1.0, release=0.03, full=1.5)
    skank = _filt(skank, "highpass", 350.0, sr)
    bass = _filt(bass, "lowpass", 700.0, sr)
    return drums * np.float32(0.7) + skank * np.float32(0.3) + bass * np.float32(0.7)


def _render_latin(s: _Synth) -> np.ndarray:
    n, rng = s.n, s.rng
    inst = s.spec.instruments
    three_two = rng.random() < 0.6
    clave_steps = (0, 6, 12, 20, 24) if three_two else (4, 8, 16, 22, 28)  # son clave, 2-bar grid
    perc = np.zeros(n, np.float32)
    clave = s.clave()
    high = s.conga(float(rng.uniform(300, 340)), False, 0.25)
    slap = s.conga(float(rng.uniform(300, 340)), True, 0.08)
    low = s.conga(float(rng.uniform(200, 230)), False, 0.35)
    muted = s.conga(float(rng.uniform(300, 340)), False, 0.05)
    bell = s.cowbell() if "cowbell" in inst else None
    for bar in s.bars():
        b0 = bar * 4
        in_bar = [c - 16 * (bar % 2) for c in clave_steps]
        s.hits(perc, clave, [b0 + c / 4 for c in in_bar if 0 <= c < 16], 0.5)
        # tumbao: muted heel-toe, slap on 2, open tones on 4 and its "and"
        s.hits(perc, muted, [b0 + q / 2 for q in (0, 1, 4, 5)], 0.25, jitter_ms=3.0)
        s.hits(perc, slap, [b0 + 1], 0.6, jitter_ms=3.0)
        s.hits(perc, high, [b0 + 3, b0 + 3.5], 0.6, jitter_ms=3.0)
        s.hits(perc, low, [b0 + 2.5], 0.55, jitter_ms=3.0)
        if bell is not None:
            s.hits(perc, bell, [b0 + b for b in range(4)], [0.4, 0.25, 0.3, 0.25])
    progs = ((0, 3, 4, 3),) if s.minor else ((0, 3, 4, 3), (0, 4), (1, 4))
    prog = progs[int(rng.integers(len(progs)))]
    tonic = _tonic(s, 48)
    piano = np.zeros(n, np.float32)
    bass = np.zeros(n, np.float32)
    montuno = (0, 1, 1.5, 2.5, 3, 3.5)  # syncopated, anticipating the next bar
    for bar in s.bars():
        ch = _chord(tonic, s.minor, prog[bar % len(prog)], 3, harmonic=True)
        nxt = _chord(tonic, s.minor, prog[(bar + 1) % len(prog)], 3, harmonic=True)
        tones = _voicing(ch, 62)
        for i, b in enumerate(montuno):
            src = nxt if b >= 3.5 else ch
            m = _voicing(src, 62)[(i * 2) % 3] if b >= 3.5 else tones[(i * 2) % 3]
            for mm in (m, m + 12):  # montunos are played in octaves
                s.note(piano, lambda k, mm=mm: s.piano(mm, k), ("p", mm), s.at(bar * 4 + b, 4.0), s.samples(0.4),
                       0.5, release=0.05, full=0.8)
        # tumbao bass: the anticipated "and of 2" and beat 4 carry the (next) harmony
        for b, m in ((1.5, _into(ch[0] + 7, 36)), (3.0, _into(nxt[0], 36))):
            s.note(bass, lambda k, m=m: s.round_bass(m, k, 1.4), ("b", m), s.at(bar * 4 + b, 3.0), s.samples(1.4),
                   1.0, release=0.05, full=1.5)
    return perc * np.float32(0.6) + piano * np.float32(0.35) + bass * np.float32(0.6)


def _render_classical_piano(s: _Synth) -> np.ndarray:
    n, rng = s.n, s.rng
    if s.minor:
        progs: tuple[tuple[int, ...], ...] = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 6, 2, 4))
    else:
        progs = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 1, 4, 0))
    prog = progs[int(rng.integers(len(progs)))]
    tonic = _tonic(s, 48)
    piano = np.zeros(n, np.float32)
    left = int(rng.integers(3))  # alberti / broken chord / block chords
    rh_lo, rh_hi = 67, 86
    melody = _into(tonic + 16, rh_lo)  # start near the third above middle register
    scale = [m for m in range(rh_lo, rh_hi + 1) if (m - tonic) % 12 in _SCALE[s.minor]]

    def play(m: int, beat: float, dur_beats: float, vel: float) -> None:
        s.note(piano, lambda k, m=m: s.piano(m, k), ("p", m), s.at(beat, 12.0), s.samples(dur_beats), vel,
               release=0.12, full=2.5)

    for bar in s.bars():
        ch = _chord(tonic, s.minor, prog[bar % len(prog)], 3, harmonic=True)
        lh = _voicing(ch, 43)  # lowest note >= G2 (98 Hz): no kick-drum-like lows
        b0 = bar * 4
        if left == 0:  # Alberti bass: low-high-middle-high
            for e, i in enumerate((0, 2, 1, 2) * 2):
                play(lh[i], b0 + e / 2, 1.0, 0.35)
        elif left == 1:
            for e, i in enumerate((0, 1, 2, 1) * 2):
                play(lh[i] + (12 if e in (2, 6) else 0), b0 + e / 2, 1.5, 0.35)
        else:
            for half in (0, 2):
                for m in lh:
                    play(m, b0 + half, 2.0, 0.3)
        # melody: stepwise walk on the scale; strong beats land on chord tones
        beat = 0.0
        while beat < 4.0:
            dur = _pick(rng, (0.5, 1.0, 1.0, 1.5, 2.0)) if beat % 1 == 0 else 0.5
            dur = min(dur, 4.0 - beat)
            step = _pick(rng, (-2, -1, -1, 1, 1, 2))
            idx = min(range(len(scale)), key=lambda i: abs(scale[i] - melody))
            melody = scale[int(np.clip(idx + step, 0, len(scale) - 1))]
            if beat % 2 == 0:
                pcs = {c % 12 for c in ch}
                melody = min((m for m in scale if m % 12 in pcs), key=lambda m: abs(m - melody))
            play(melody, b0 + beat, dur, float(rng.uniform(0.55, 0.8)))
            beat += dur
    return s.echo(piano, (0.043, 0.089, 0.131), (0.3, 0.2, 0.12))


_RENDERERS: dict[str, Callable[[_Synth], np.ndarray]] = {
    "metal": _render_metal,
    "techno": _render_techno,
    "ambient": _render_ambient,
    "jazz": _render_jazz,
    "baroque": _render_baroque,
    "hip hop": _render_hiphop,
    "folk": _render_folk,
    "reggae": _render_reggae,
    "latin": _render_latin,
    "classical piano": _render_classical_piano,
}


def render_clip(spec: ClipSpec, duration: float, sample_rate: int, seed: int) -> np.ndarray:
    """Render one clip: float32 mono, ``round(duration * sample_rate)`` samples in [-1, 1].

    Peak-normalised to -1 dBFS, then scaled by the clip's loudness gain. Bit-identical for the
    same ``(spec, duration, sample_rate, seed)``; independent of every other clip.
    """
    if spec.style not in _RENDERERS:
        raise ValueError(f"unknown style {spec.style!r}; expected one of {', '.join(STYLES)}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be >= 8000, got {sample_rate}")
    n = int(round(duration * sample_rate))
    synth = _Synth(spec, n, sample_rate, seed)
    with np.errstate(over="ignore", under="ignore"):
        mix = _RENDERERS[spec.style](synth).astype(np.float32, copy=False)[:n]
    mix = mix - np.float32(mix.mean())
    synth.ramp_in(mix, 0.003)
    synth.ramp_out(mix, 0.01)  # the clip usually ends mid-note
    peak = float(np.abs(mix).max())
    if not math.isfinite(peak) or peak <= 0.0:
        return np.zeros(n, np.float32)
    mix *= np.float32(HEADROOM * LOUDNESS_GAIN[spec.loudness] / peak)
    return np.clip(mix, -1.0, 1.0).astype(np.float32, copy=False)
