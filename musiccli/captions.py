"""Tag-to-caption synthesis: turn genre / mood / instrument tags into natural captions.

Datasets such as FMA, MTG-Jamendo or a user's own folder carry tags but no
captions. Sources classify their tags into a :class:`TagSet` and call
:func:`synthesize_captions`, which returns a canonical first caption plus
alternative phrasings. The output depends only on the tags and a ``key`` (usually
the record id), so re-parsing a dataset gives the same manifest.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class TagSet:
    genres: list[str] = field(default_factory=list)
    moods: list[str] = field(default_factory=list)
    instruments: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.genres or self.moods or self.instruments or self.other)


# Small built-in vocabularies. They only need to catch the common tags: anything
# unknown that looks like a genre name is treated as a genre, which is what free-form
# music tags mostly are.
MOODS = frozenset("""
    upbeat calm dark happy sad energetic relaxing relaxed melancholic melancholy uplifting aggressive angry
    peaceful romantic dreamy epic emotional chill chilled mellow groovy funky hopeful nostalgic mysterious
    tense intense joyful cheerful playful gentle soft heavy powerful bright warm cold sentimental soothing
    meditative hypnotic atmospheric ethereal haunting somber sombre gloomy fun funny party positive
    inspiring motivational dramatic suspenseful triumphant heroic serene tender sexy cool quirky
    lively bouncy driving moody spooky scary eerie lonely love melodic catchy smooth laid-back
    laidback carefree festive christmas holiday summer sunny groove deep dynamic fast slow
""".split()) | {"feel good", "feel-good", "slow tempo", "fast tempo", "medium tempo"}

# Themes (MTG-Jamendo's "mood/theme---film") are uses, not moods: "a calm film track" reads
# wrong, so they go to ``other``.
THEMES = frozenset("""
    action adventure advertising background children christmas commercial corporate documentary film game
    holiday movie nature party sport sports space summer trailer travel wedding soundscape
""".split())

# Canonical instrument names; keys are lower-case tag spellings.
INSTRUMENTS = {
    "piano": "piano", "keys": "keys", "keyboard": "keyboard", "electric piano": "electric piano",
    "rhodes": "electric piano", "organ": "organ", "synthesizer": "synthesizer", "synth": "synthesizer",
    "synthesiser": "synthesizer", "pad": "synth pads", "synth pad": "synth pads", "guitar": "guitar",
    "acoustic guitar": "acoustic guitar", "acousticguitar": "acoustic guitar",
    "electric guitar": "electric guitar", "electricguitar": "electric guitar", "bass": "bass",
    "bass guitar": "bass guitar", "electric bass": "electric bass", "acoustic bass": "acoustic bass",
    "double bass": "double bass", "drums": "drums", "drum": "drums", "drum machine": "drum machine",
    "drummachine": "drum machine", "percussion": "percussion", "beat": "beats", "beats": "beats",
    "violin": "violin", "viola": "viola", "cello": "cello", "strings": "strings", "string": "strings",
    "orchestra": "orchestra", "harp": "harp", "flute": "flute", "clarinet": "clarinet", "oboe": "oboe",
    "bassoon": "bassoon", "saxophone": "saxophone", "sax": "saxophone", "trumpet": "trumpet",
    "trombone": "trombone", "horn": "horn", "horns": "horns", "brass": "brass", "tuba": "tuba",
    "harmonica": "harmonica", "accordion": "accordion", "banjo": "banjo", "mandolin": "mandolin",
    "ukulele": "ukulele", "sitar": "sitar", "marimba": "marimba", "xylophone": "xylophone",
    "vibraphone": "vibraphone", "glockenspiel": "glockenspiel", "bell": "bells", "bells": "bells",
    "choir": "choir", "vocals": "vocals", "vocal": "vocals", "voice": "vocals", "singer": "vocals",
    "male vocals": "male vocals", "female vocals": "female vocals", "male vocalist": "male vocals",
    "female vocalist": "female vocals", "male voice": "male vocals", "female voice": "female vocals",
    "rap": "rap vocals", "whistle": "whistling", "whistling": "whistling", "sampler": "samples",
    "samples": "samples", "computer": "computer", "808": "808 drums", "pads": "synth pads",
    "electronic drums": "electronic drums", "drum kit": "drum kit", "hi-hat": "hi-hats",
    "snare": "snare", "kick": "kick drum", "tabla": "tabla", "bongo": "bongos", "bongos": "bongos",
    "congas": "congas", "steel drums": "steel drums", "harpsichord": "harpsichord", "lute": "lute",
}

# Tags that describe something other than genre, mood or instrumentation.
NON_GENRES = frozenset("""
    instrumental vocal vocals live cover remix favorites favourites favorite favourite seen awesome
    beautiful good great best amazing english spanish french german italian japanese korean male female
    loop loops sample short long intro outro experimental-sound lyrics explicit clean radio edit
    original demo unreleased single album ep bootleg mashup karaoke acapella a-cappella
""".split()) | {"seen live", "radio edit", "female vocalists", "male vocalists", "no vocals", "with vocals"}

_DECADE = re.compile(r"^(\d{2}|\d{4})'?s$")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_PREFIX_BUCKETS = {"genre": "genres", "mood/theme": "moods", "mood": "moods", "theme": "moods",
                   "instrument": "instruments"}


def _norm(tag: str) -> str:
    return " ".join(tag.replace("_", " ").strip().split())


def _add(bucket: list[str], value: str) -> None:
    if value and value.lower() not in {v.lower() for v in bucket}:
        bucket.append(value)


def classify_tag(tag: str) -> tuple[str, str]:
    """(bucket, cleaned tag) for one free-form tag; bucket is genres/moods/instruments/other."""
    clean = _norm(tag)
    low = clean.lower()
    if low in INSTRUMENTS:
        return "instruments", INSTRUMENTS[low]
    if low in MOODS and low not in THEMES:
        return "moods", low
    if low in NON_GENRES or _DECADE.match(low) or _NUMBER.match(low) or len(low) < 2:
        return "other", clean
    # Anything else that looks like a name (letters, spaces, &, -, ', /) is a genre,
    # keeping its original casing ("Electronic", "Hip-Hop", "R&B").
    if re.fullmatch(r"[\w&'/+.\- ]+", clean) and any(c.isalpha() for c in clean):
        return "genres", clean
    return "other", clean


def classify_tags(tags: Iterable[str]) -> TagSet:
    """Sort free-form tags into genres, moods, instruments and other (order kept, duplicates dropped)."""
    out = TagSet()
    for tag in tags:
        if not tag or not str(tag).strip():
            continue
        bucket, value = classify_tag(str(tag))
        _add(getattr(out, bucket), value)
    return out


# Words that end an instrument phrase: "distorted electric guitar", "double-kick drums", "synth pads".
_INSTRUMENT_HEADS = frozenset(k.split()[-1] for k in INSTRUMENTS) | {
    "guitars", "cymbal", "cymbals", "hats", "hi-hats", "chimes", "stabs", "claps", "clap", "ensemble", "shaker",
    "claves", "congas", "cowbell", "pads", "basses", "pianos", "synths", "kicks", "snares", "chords", "arpeggios",
    "crackle", "drone", "fingerpicking", "strumming"}
# Descriptive adjectives that free-form tagging would take for genre names.
_ADJECTIVES = frozenset({"sparse", "danceable", "distorted", "offbeat", "acoustic", "electric", "lo-fi"})
# Descriptors that are neither genre nor mood: tempo, key, loudness, arrangement.
_DESCRIPTOR = re.compile(r"^(mid-tempo|medium tempo|(major|minor) key|loud|quiet|moderate volume|no \w+|"
                         r"solo \w+|\d+ bpm)$")


def classify_attributes(tags: Iterable[str]) -> TagSet:
    """Like :func:`classify_tags`, for a clip's descriptive attributes rather than free-form genre tags.

    A multi-word tag whose last word names an instrument is an instrument line ("distorted
    electric guitar", "boom-bap drums"), kept in its own words; tempo, key, loudness and
    arrangement descriptors ("mid-tempo", "minor key", "no drums") go to ``other``. Used to
    phrase sentences from a clip's own tags (the ``blend`` text representation); manifests keep
    using :func:`classify_tags`, so their captions do not change.
    """
    out = TagSet()
    for tag in tags:
        if not tag or not str(tag).strip():
            continue
        bucket, value = classify_tag(str(tag))
        low = value.lower()
        if bucket in ("genres", "moods") and _DESCRIPTOR.match(low):
            bucket = "other"
        elif bucket == "genres" and low in _ADJECTIVES:
            bucket = "moods"
        elif bucket == "genres" and low.split()[-1] in _INSTRUMENT_HEADS:
            bucket = "instruments"
        _add(getattr(out, bucket), value)
    return out


def tagset_from_prefixed(tags: Iterable[str]) -> TagSet:
    """MTG-Jamendo style tags: ``genre---rock``, ``mood/theme---calm``, ``instrument---piano``.

    Unprefixed tags fall back to :func:`classify_tags`.
    """
    out = TagSet()
    for tag in tags:
        tag = str(tag).strip()
        if not tag:
            continue
        prefix, sep, value = tag.partition("---")
        if not sep:
            bucket, value = classify_tag(tag)
        else:
            bucket = _PREFIX_BUCKETS.get(prefix.strip().lower(), "other")
            value = _norm(value)
            if bucket == "instruments":
                value = INSTRUMENTS.get(value.lower(), value)
            elif bucket == "moods" and value.lower() in THEMES:
                bucket = "other"
        _add(getattr(out, bucket), value)
    return out


# --------------------------------------------------------------------------- phrasing
def join_and(items: list[str]) -> str:
    """["piano", "strings", "drums"] -> "piano, strings and drums"."""
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def join_or_comma(items: list[str]) -> str:
    return ", ".join(items)


_AN_EXCEPTIONS = ("uni", "use", "usu", "eu", "one", "once", "ukulele", "euro")
_AN_SILENT_H = ("hour", "honest", "honour", "honor", "heir")
_LETTER_AN = set("AEFHILMNORSX")  # letters whose names start with a vowel sound ("an R&B track")


def article(word: str) -> str:
    """"a" or "an" for the word that follows (a simple pronunciation heuristic)."""
    w = word.strip()
    if not w:
        return "a"
    first = re.split(r"[\s\-]", w)[0]
    if first.isupper() and len(first.replace("&", "")) <= 4 and first[0].isalpha():
        return "an" if first[0] in _LETTER_AN else "a"  # acronyms are spelled out
    low = w.lower()
    if low.startswith(_AN_SILENT_H):
        return "an"
    if low.startswith(_AN_EXCEPTIONS):
        return "a"
    if low[0].isdigit():
        return "an" if low.startswith(("8", "11", "18")) else "a"
    return "an" if low[0] in "aeiou" else "a"


def with_article(phrase: str, capital: bool = False) -> str:
    a = article(phrase)
    if capital:
        a = a.capitalize()
    return f"{a} {phrase}"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


@dataclass(frozen=True)
class _Parts:
    mood: str         # "upbeat" / "calm and dark" / ""
    genre: str        # "Electronic" / "rock and pop" / ""
    instruments: str  # "piano, strings and drums" / ""
    other: str        # "instrumental and live" / ""


def _noun_phrase(p: _Parts, noun: str) -> str:
    """"upbeat Electronic track" (no article)."""
    return " ".join(x for x in (p.mood, p.genre, noun) if x)


def _t_canonical(p: _Parts, rng: random.Random) -> str:
    base = with_article(_noun_phrase(p, "track" if p.genre else "piece"), capital=True)
    if p.instruments:
        base += f" featuring {p.instruments}"
    if p.other and not (p.genre or p.mood or p.instruments):
        base += f" tagged {p.other}"
    return base


def _t_noun_with(p: _Parts, rng: random.Random) -> str | None:
    if not (p.genre or p.mood or p.instruments):
        return None
    noun = rng.choice(("song", "tune", "composition", "recording"))
    base = with_article(_noun_phrase(p, noun), capital=True)
    if p.instruments:
        base += f" {rng.choice(('with', 'built around', 'led by', 'played on'))} {p.instruments}"
    return base


def _t_genre_music(p: _Parts, rng: random.Random) -> str | None:
    if not p.genre:
        return None
    s = f"{_cap(p.genre)} music"
    if p.mood:
        s += f" with {with_article(p.mood)} {rng.choice(('mood', 'feel', 'vibe', 'atmosphere'))}"
    if p.instruments:
        verbs = ("featuring", "driven by") if p.mood else ("featuring", "with", "driven by")
        s += f"{',' if p.mood else ''} {rng.choice(verbs)} {p.instruments}"
    return s


def _t_instruments_first(p: _Parts, rng: random.Random) -> str | None:
    if not p.instruments:
        return None
    where = with_article(_noun_phrase(p, rng.choice(("track", "piece", "song"))))
    # Subject-verb agreement: "piano carries ...", "drums carry ...", "piano and bass carry ...".
    plural = " and " in p.instruments or p.instruments.endswith("s")
    verb = rng.choice((("plays in", "play in"), ("carries", "carry"), ("drives", "drive"), ("shapes", "shape")))
    return f"{_cap(p.instruments)} {verb[1] if plural else verb[0]} {where}"


def _t_this(p: _Parts, rng: random.Random) -> str | None:
    if not (p.mood or p.instruments):
        return None
    subject = f"This {p.genre + ' ' if p.genre else ''}{rng.choice(('track', 'piece', 'song'))}"
    clauses = []
    if p.mood:
        clauses.append(f"{rng.choice(('sounds', 'feels'))} {p.mood}")
    if p.instruments:
        clauses.append(f"{rng.choice(('features', 'uses', 'showcases'))} {p.instruments}")
    return f"{subject} {' and '.join(clauses)}"


def _t_mood_adjective(p: _Parts, rng: random.Random) -> str | None:
    if not p.mood:
        return None
    head = f"{_cap(p.mood)} {p.genre or 'music'}"
    if p.instruments:
        head += f" {rng.choice(('with', 'featuring', 'played on'))} {p.instruments}"
    return head


def _t_with_other(p: _Parts, rng: random.Random) -> str | None:
    if not p.other:
        return None
    core = with_article(_noun_phrase(p, rng.choice(("track", "piece"))), capital=True)
    if p.instruments:
        core += f" with {p.instruments}"
    return f"{core}, {p.other}" if (p.genre or p.mood or p.instruments) else f"Music tagged {p.other}"


_ALTERNATIVES: tuple[Callable[[_Parts, random.Random], str | None], ...] = (
    _t_noun_with, _t_genre_music, _t_instruments_first, _t_this, _t_mood_adjective, _t_with_other,
)


def _rng(key: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big"))


def _parts(tags: TagSet, rng: random.Random, shuffle: bool) -> _Parts:
    def pick(items: list[str], k: int) -> list[str]:
        items = list(items)
        if shuffle and len(items) > 1:
            rng.shuffle(items)  # varied word order across the alternatives
        return items[:k]

    genres = [g for g in pick(tags.genres, 2)]
    return _Parts(mood=join_and(pick(tags.moods, 2)), genre=join_and(genres),
                  instruments=join_and(pick(tags.instruments, 4)), other=join_and(pick(tags.other, 2)))


def synthesize_captions(tags: TagSet, key: str, n: int = 3) -> list[str]:
    """Up to ``n`` distinct captions for ``tags``; deterministic given ``key``; [] if there are no tags.

    The first caption is canonical ("An upbeat Electronic track featuring synthesizer");
    the others vary template, synonyms and word order, chosen by a RNG seeded from ``key``.
    """
    if tags.empty or n <= 0:
        return []
    rng = _rng(key)
    captions = [_t_canonical(_parts(tags, rng, shuffle=False), rng)]
    templates = list(_ALTERNATIVES)
    attempts = 0
    while len(captions) < n and attempts < 4 * len(templates):
        if attempts % len(templates) == 0:
            rng.shuffle(templates)
        template = templates[attempts % len(templates)]
        attempts += 1
        text = template(_parts(tags, rng, shuffle=attempts > 1), rng)
        if text and text not in captions:
            captions.append(text)
    return captions


def alt_captions_with_tags(caption: str, alts: Iterable[str], tags: Iterable[str], key: str,
                           n: int = 2) -> list[str]:
    """Alternative captions for a record that has a human caption *and* tags.

    Human captions win: ``caption`` stays the main one and its alternatives keep their order;
    up to ``n`` captions synthesised from ``tags`` are appended (duplicates dropped), so training
    also sees the tag vocabulary ("dark", "synthesizer") in natural sentences.
    """
    out: list[str] = []
    seen = {caption.strip().lower()}
    for c in [*alts, *synthesize_captions(classify_tags(tags), key, n=n)]:
        if c and c.strip().lower() not in seen:
            seen.add(c.strip().lower())
            out.append(c)
    return out
