#!/usr/bin/env python
"""Build a small REAL-audio tagged music library from scores that install from the package registries.

Real compositions (the music21 corpus on PyPI: Bach chorales, Haydn / Mozart / Beethoven quartets,
Palestrina masses, Monteverdi madrigals, trecento ballate, Joplin, Irish and Scottish dance tunes in
ABC, Essen folk songs, ...) are turned into MIDI with music21, given General MIDI programs that fit
the piece (organ or choir for chorales, a string quartet for quartets, a fiddle for reels, a piano for
ragtime, ...), rendered through the FluidR3 General MIDI soundfont with FluidSynth at 44.1 kHz, cut
into 20-30 s excerpts and written as FLAC (with some MP3 and Ogg Vorbis) carrying real file tags
(mutagen): artist = composer or collection, album = opus or collection, genre = era, form and
instruments, mood = tempo words measured on the score ("slow" / "fast") and the mood word that goes
with them ("calm" / "lively"). Every tag is a fact of the piece or of how it was rendered; see
README.md beside this file for the vocabulary and the exact commands.

Layout: ``OUT/<artist>/<album>/<NN> <title>.<ext>`` plus ``OUT/library.json`` (what was built, with
the source score, programs and tempo of every excerpt). Nothing rendered is committed.

The music21 / FluidSynth part runs in a side venv (``--setup`` creates it):

    apt-get install -y fluidsynth fluid-soundfont-gm
    python benchmarks/real_audio/build_library.py --setup            # /work/venvs/realaudio
    /work/venvs/realaudio/bin/python benchmarks/real_audio/build_library.py --out /work/realaudio/library

The pure parts (programs, excerpt windows, tempo words, tags, tag writing) import nothing beyond
numpy, soundfile and mutagen, so ``tests/test_real_audio_builder.py`` runs them in the project venv.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("build_library")

SAMPLE_RATE = 44100
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")
SIDE_VENV = Path(os.environ.get("MTX_REALAUDIO_VENV", "/work/venvs/realaudio"))
# Exact pins of the side venv (music21 is not a dependency of mtx; the others match constraints.txt).
SIDE_PACKAGES = ("music21==10.5.1", "mutagen==1.48.1", "soundfile==0.14.0", "numpy==2.4.6")

# --------------------------------------------------------------------------- General MIDI programs
GM = {"piano": 0, "harpsichord": 6, "organ": 19, "accordion": 21, "guitar": 24, "violin": 40, "viola": 41,
      "cello": 42, "contrabass": 43, "strings": 48, "harp": 46, "choir": 52, "voice": 53, "trumpet": 56,
      "oboe": 68, "clarinet": 71, "piccolo": 72, "flute": 73, "recorder": 74, "bagpipe": 109, "fiddle": 110}

# A part's own name decides its program where it names an instrument or a voice (first match wins).
_PART_NAMES: tuple[tuple[str, str], ...] = (
    (r"violoncell|cello|vc\b", "cello"), (r"viola|vla\b", "viola"), (r"violin|vn\b|vl\b", "violin"),
    (r"contrabass|double bass|basso continuo|continuo", "contrabass"), (r"clarinet", "clarinet"),
    (r"flute|flauto", "flute"), (r"oboe", "oboe"), (r"piano|pianoforte|klavier|keyboard", "piano"),
    (r"harpsichord|cembalo", "harpsichord"), (r"organ|organo", "organ"),
    (r"soprano|alto|tenor|bass|baritone|voice|canto|cantus|quinto|sesto|superius|contratenor|"
     r"triplum|motetus|vox|singstimme|voce", "voice"),
)

# Ensembles: how the parts of a piece are voiced. ``by_name`` lets a part named after an instrument
# keep it (a quartet's "Violoncello" is a cello whatever its position).
ENSEMBLES: dict[str, dict[str, Any]] = {
    "organ": {"default": ["organ"], "by_name": False, "voice": "organ"},
    "choir": {"default": ["choir"], "by_name": False, "voice": "choir"},
    "string quartet": {"default": ["violin", "violin", "viola", "cello"], "by_name": True, "voice": "violin"},
    "piano": {"default": ["piano"], "by_name": False, "voice": "piano"},
    "voice and piano": {"default": ["voice", "piano", "piano"], "by_name": True, "voice": "voice"},
    "piano trio": {"default": ["violin", "cello", "piano", "piano"], "by_name": True, "voice": "violin"},
    "baroque trio": {"default": ["violin", "violin", "harpsichord", "harpsichord"], "by_name": True, "voice": "violin"},
    "aria": {"default": ["voice", "strings", "strings", "harpsichord"], "by_name": True, "voice": "voice"},
    "clarinet and piano": {"default": ["clarinet", "piano", "piano"], "by_name": True, "voice": "clarinet"},
    "medieval": {"default": ["voice", "recorder", "viola", "viola"], "by_name": False, "voice": "voice"},
    "fiddle": {"default": ["fiddle"], "by_name": False, "voice": "fiddle"},
    "flute": {"default": ["flute"], "by_name": False, "voice": "flute"},
    "piccolo": {"default": ["piccolo"], "by_name": False, "voice": "piccolo"},
    "accordion": {"default": ["accordion"], "by_name": False, "voice": "accordion"},
    "harp": {"default": ["harp"], "by_name": False, "voice": "harp"},
    "recorder": {"default": ["recorder"], "by_name": False, "voice": "recorder"},
    "bagpipe": {"default": ["bagpipe"], "by_name": False, "voice": "bagpipe"},
}
# The instrument tags an ensemble puts in the file (the words a listener would use).
ENSEMBLE_TAGS: dict[str, tuple[str, ...]] = {
    "organ": ("organ",), "choir": ("choir",), "string quartet": ("strings", "violin", "cello"),
    "piano": ("piano",), "voice and piano": ("voice", "piano"), "piano trio": ("piano", "violin", "cello"),
    "baroque trio": ("violin", "harpsichord"), "aria": ("voice", "strings"), "clarinet and piano": ("clarinet", "piano"),
    "medieval": ("voice", "recorder"), "fiddle": ("fiddle",), "flute": ("flute",), "piccolo": ("flute",),
    "accordion": ("accordion",), "harp": ("harp",), "recorder": ("recorder",), "bagpipe": ("bagpipes",),
}


def program_for_part(name: str | None, position: int, ensemble: str) -> int:
    """The General MIDI program of the part at ``position`` (0-based, top down) named ``name``."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}")
    spec = ENSEMBLES[ensemble]
    if spec["by_name"] and name:
        low = name.lower()
        for pattern, instrument in _PART_NAMES:
            if re.search(pattern, low):
                return GM[spec["voice"] if instrument == "voice" else instrument]
    default = spec["default"]
    return GM[default[min(position, len(default) - 1)]]


def programs_for(part_names: Sequence[str | None], ensemble: str) -> list[int]:
    return [program_for_part(n, i, ensemble) for i, n in enumerate(part_names)]


# --------------------------------------------------------------------------- what is built
@dataclass(frozen=True)
class Collection:
    """A set of scores that share an artist (composer or collection) and how they are rendered."""
    key: str
    artist: str
    era: str                       # medieval, renaissance, baroque, classical, romantic, modern, folk ("": none fits)
    form: str                      # chorale, quartet, madrigal, reel (or "abc": each tune's R: field), ...
    ensemble: str | tuple[str, ...]  # one, or several used in turn (Bach's chorales: organ, then choir)
    paths: tuple[str, ...]         # music21 corpus paths or globs (relative to the corpus root)
    max_pieces: int
    album: str = ""                # "" = from the path (opus / collection file)
    excerpts_per_piece: int = 1
    qpm: float = 100.0             # quarter notes per minute when the score has no metronome mark
    extra_genres: tuple[str, ...] = ()
    composer_filter: str = ""      # trecento: only scores whose composer starts with this
    abc_tunes: int = 1             # ABC files holding many tunes: tunes taken per file


# Forms of the ABC dance tunes (R: field) and the tempo each is played at (quarter notes per minute).
ABC_FORMS = {"reel": 200.0, "jig": 180.0, "double jig": 180.0, "slip jig": 180.0, "hornpipe": 160.0,
             "strathspey": 130.0, "waltz": 150.0, "polka": 180.0, "march": 120.0, "schottische": 140.0,
             "clog": 150.0, "air": 80.0, "slow air": 70.0, "song": 100.0, "quickstep": 170.0}
DANCE_FORMS = frozenset({"reel", "jig", "hornpipe", "strathspey", "waltz", "polka", "schottische", "clog",
                         "mazurka", "polonaise", "quickstep", "ragtime"})
SACRED_FORMS = frozenset({"chorale", "mass", "motet", "hymn"})

COLLECTIONS: tuple[Collection, ...] = (
    Collection("bach", "Johann Sebastian Bach", "baroque", "chorale", ("organ", "choir"), ("bach/bwv*.mxl",), 16,
               album="Four-part Chorales", qpm=66.0),
    Collection("palestrina", "Giovanni Pierluigi da Palestrina", "renaissance", "mass", "choir",
               ("palestrina/*.krn",), 12, album="Masses", qpm=132.0),
    Collection("monteverdi", "Claudio Monteverdi", "renaissance", "madrigal", "choir",
               ("monteverdi/madrigal.*.mxl",), 10, qpm=120.0),
    Collection("josquin", "Josquin des Prez", "renaissance", "chanson", "choir", ("josquin/*.abc",), 6,
               album="Chansons and Motets", qpm=120.0),
    Collection("lusitano", "Vicente Lusitano", "renaissance", "madrigal", "choir", ("lusitano/*.mxl",), 1,
               album="Madrigals", excerpts_per_piece=2, qpm=120.0),
    Collection("ciconia", "Johannes Ciconia", "medieval", "ballata", "medieval", ("trecento/*.xml", "ciconia/*.xml"),
               8, album="Trecento", composer_filter="Johannes Ciconia", qpm=120.0),
    Collection("jacopo", "Jacopo da Bologna", "medieval", "madrigal", "medieval", ("trecento/*.xml",), 5,
               album="Trecento", composer_filter="Jacopo da Bologna", qpm=120.0),
    Collection("landini", "Francesco Landini", "medieval", "ballata", "medieval", ("trecento/*.xml",), 4,
               album="Trecento", composer_filter="Francesco Landini", qpm=120.0),
    Collection("vitry", "Philippe de Vitry", "medieval", "motet", "medieval", ("trecento/*.xml",), 3,
               album="Ars Nova Motets", composer_filter="Philippe de Vitry", qpm=120.0),
    Collection("corelli", "Arcangelo Corelli", "baroque", "sonata", "baroque trio", ("corelli/opus3no1/*.xml",), 1,
               album="Op. 3", excerpts_per_piece=2, qpm=60.0),
    Collection("handel", "George Frideric Handel", "baroque", "aria", "aria", ("handel/rinaldo/*.mxl",), 1,
               album="Rinaldo", excerpts_per_piece=3, qpm=60.0, extra_genres=("opera",)),
    Collection("haydn", "Joseph Haydn", "classical", "quartet", "string quartet", ("haydn/*/movement*.mxl",), 6,
               excerpts_per_piece=2, qpm=120.0),
    Collection("mozart", "Wolfgang Amadeus Mozart", "classical", "quartet", "string quartet",
               ("mozart/k*/movement*.mxl",), 10, excerpts_per_piece=1, qpm=120.0),
    Collection("mozart-piano", "Wolfgang Amadeus Mozart", "classical", "sonata", "piano",
               ("mozart/k545/*.mxl",), 1, album="Piano Sonata K. 545", excerpts_per_piece=2, qpm=130.0),
    Collection("beethoven", "Ludwig van Beethoven", "classical", "quartet", "string quartet",
               ("beethoven/opus*.mxl", "beethoven/opus*/movement*.mxl"), 10, excerpts_per_piece=1, qpm=120.0),
    Collection("weber", "Carl Maria von Weber", "romantic", "concertino", "clarinet and piano", ("weber/*.mxl",), 1,
               album="Clarinet Concertino", excerpts_per_piece=3, qpm=100.0),
    Collection("schubert", "Franz Schubert", "romantic", "lied", "voice and piano", ("schubert/*.xml",), 1,
               album="Winterreise", excerpts_per_piece=3, qpm=90.0),
    Collection("schumann", "Robert Schumann", "romantic", "quartet", "string quartet",
               ("schumann_robert/opus41no1/*.mxl",), 4, album="String Quartet Op. 41 No. 1", qpm=120.0),
    Collection("schumann-lied", "Robert Schumann", "romantic", "lied", "voice and piano",
               ("schumann_robert/opus48no2.mxl",), 1, album="Dichterliebe", excerpts_per_piece=1, qpm=70.0),
    Collection("clara", "Clara Schumann", "romantic", "polonaise", "piano", ("schumann_clara/polonaise_*.mxl",), 4,
               album="Quatre Polonaises Op. 1", qpm=110.0),
    Collection("clara-trio", "Clara Schumann", "romantic", "trio", "piano trio", ("schumann_clara/opus17/*.xml",), 1,
               album="Piano Trio Op. 17", excerpts_per_piece=2, qpm=110.0),
    Collection("chopin", "Frederic Chopin", "romantic", "mazurka", "piano", ("chopin/*.krn",), 1,
               album="Mazurkas", excerpts_per_piece=2, qpm=130.0),
    Collection("verdi", "Giuseppe Verdi", "romantic", "aria", "voice and piano", ("verdi/*.mxl",), 1,
               album="Rigoletto", excerpts_per_piece=2, qpm=130.0, extra_genres=("opera",)),
    Collection("beach", "Amy Beach", "romantic", "song", "voice and piano", ("beach/*.musicxml",), 1,
               album="Songs", excerpts_per_piece=2, qpm=80.0),
    Collection("liliuokalani", "Liliuokalani", "romantic", "song", "voice and piano", ("liliuokalani/*.mxl",), 1,
               album="Aloha Oe", excerpts_per_piece=2, qpm=80.0),
    Collection("johnson", "J. Rosamond Johnson", "romantic", "hymn", "voice and piano", ("johnson_j_r/*.mxl",), 1,
               album="Lift Every Voice and Sing", excerpts_per_piece=2, qpm=80.0),
    Collection("joplin", "Scott Joplin", "", "ragtime", "piano", ("joplin/*.mxl",), 1,
               album="Maple Leaf Rag", excerpts_per_piece=3, qpm=100.0),
    Collection("schoenberg", "Arnold Schoenberg", "modern", "piano piece", "piano", ("schoenberg/opus19/*.mxl",), 2,
               album="Sechs kleine Klavierstücke Op. 19", qpm=60.0),
    Collection("ryan", "Ryan's Mammoth Collection", "folk", "abc", "fiddle", ("ryansMammoth/*.abc",), 16,
               album="Ryan's Mammoth Collection", extra_genres=("american",)),
    Collection("oneill", "O'Neill's Music of Ireland", "folk", "abc", "flute", ("oneills1850/*.abc",), 12,
               album="The Dance Music of Ireland (1850)", extra_genres=("irish",), abc_tunes=1),
    Collection("nottingham", "Nottingham Music Database", "folk", "reel", "accordion",
               ("nottingham-dataset/*.abc",), 10, album="Reels", extra_genres=("english",), abc_tunes=10),
    Collection("aird", "Aird's Airs", "folk", "air", "harp", ("airdsAirs/*.abc",), 8,
               album="Aird's Selection of Scotch, English, Irish and Foreign Airs", extra_genres=("scottish",),
               abc_tunes=2),
    Collection("northumbrian", "Northumbrian Minstrelsy", "folk", "abc", "bagpipe",
               ("miscFolk/northumbrian*.abc",), 6, album="Northumbrian Minstrelsy", extra_genres=("english",),
               abc_tunes=6),
    Collection("fife", "The American Fifer", "folk", "abc", "piccolo", ("miscFolk/americanfife*.abc",), 6,
               album="American Fife Tunes", extra_genres=("american",), abc_tunes=6),
)


# The Essen Folksong Collection gathers songbooks of different collectors and regions; each is its own
# "artist" (its file prefix in the music21 corpus), as the songs of one songbook share their source.
ESSEN_SOURCES = {"altdeu": "Altdeutsche Volkslieder", "ballad": "Deutsche Balladen", "boehme": "Franz Magnus Boehme",
                 "erk": "Ludwig Erk", "fink": "Gottfried Wilhelm Fink", "han": "Hannover", "kinder": "Kinderlieder",
                 "zuccal": "Anton Wilhelm von Zuccalmaglio", "dva": "Deutsches Volksliedarchiv", "lot": "Lothringen",
                 "lux": "Luxemburg"}
COLLECTIONS = COLLECTIONS + tuple(
    Collection(f"essen-{prefix}", f"Essen Folksong Collection: {name}", "folk", "folk song", "recorder",
               (f"essenFolksong/{prefix}*.abc",), 4, album="Essen Folksong Collection",
               extra_genres=("german",), abc_tunes=4)
    for prefix, name in ESSEN_SOURCES.items())


# --------------------------------------------------------------------------- tags
def stable_int(*parts: Any) -> int:
    """A hash that does not change between runs or machines (Python's hash() does)."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def abc_form(rhythm: str | None, title: str | None = None) -> str | None:
    """The dance form of an ABC tune, from its R: field or (Ryan's style) its title "NAME -- Reel"."""
    for text in (rhythm, (title or "").split("--")[-1] if title and "--" in title else None):
        if not text:
            continue
        low = " ".join(text.lower().replace("-", " ").split())
        for form in sorted(ABC_FORMS, key=len, reverse=True):
            if re.search(rf"\b{form}s?\b", low):
                return {"double jig": "jig", "slip jig": "jig", "slow air": "air", "song": "folk song"}.get(form, form)
    return None


def tempo_words(onsets: Sequence[float], start: float, end: float,
                slow_below: float = 2.0, fast_above: float = 5.0) -> list[str]:
    """"slow" / "fast" from the rate of distinct note onsets (per second) in [start, end) of the score.

    Between the two thresholds a piece is neither (no tempo word). Chorales at 66 quarters a minute
    run about 1.2 onsets a second, reels at 200 about 6.5.
    """
    if end <= start:
        return []
    n = sum(1 for t in onsets if start <= t < end)
    rate = n / (end - start)
    if rate < slow_below:
        return ["slow"]
    if rate > fast_above:
        return ["fast"]
    return []


MOOD_OF_TEMPO = {"slow": "calm", "fast": "lively"}


@dataclass
class ExcerptTags:
    artist: str
    album: str
    title: str
    genres: list[str] = field(default_factory=list)
    moods: list[str] = field(default_factory=list)
    composer: str = ""
    date: str = ""


def excerpt_tags(collection: Collection, *, form: str, ensemble: str, tempo: Sequence[str], title: str,
                 album: str) -> ExcerptTags:
    """The file tags of one excerpt: era, form (and dance/sacred), instruments; tempo and mood words."""
    genres: list[str] = []

    def add(tag: str) -> None:
        if tag and tag not in genres:
            genres.append(tag)

    add(collection.era)
    add(form)
    if form in DANCE_FORMS:
        add("dance")
    if form in SACRED_FORMS:
        add("sacred")
    for g in collection.extra_genres:
        add(g)
    for t in ENSEMBLE_TAGS[ensemble]:
        add(t)
    if collection.era == "folk" or form == "ragtime":
        pass
    else:
        add("classical")   # art music, the word a listener and most taggers use for all of it
    moods = [*tempo, *(MOOD_OF_TEMPO[t] for t in tempo if t in MOOD_OF_TEMPO)]
    composer = collection.artist if collection.era != "folk" else "Traditional"
    return ExcerptTags(artist=collection.artist, album=album, title=title, genres=genres, moods=moods,
                       composer=composer)


# --------------------------------------------------------------------------- audio
def excerpt_windows(duration: float, key: str, n_max: int, min_len: float = 20.0, max_len: float = 30.0,
                    lead_in: float = 1.0) -> list[tuple[float, float]]:
    """Up to ``n_max`` non-overlapping (start, end) windows of 20-30 s (length seeded by ``key``),
    spread evenly over a piece of ``duration`` seconds, skipping ``lead_in`` seconds. A piece shorter
    than ``min_len`` (after the lead-in) gives none; a piece between ``min_len`` and the drawn length
    gives one window as long as it is."""
    usable = duration - lead_in
    if usable < min_len or n_max < 1:
        return []
    length = min(min_len + (stable_int(key, "len") % int((max_len - min_len) * 10 + 1)) / 10.0, usable)
    n = max(1, min(n_max, int(usable // length)))
    if n == 1:
        return [(lead_in, lead_in + length)]
    step = (usable - length) / (n - 1)
    return [(lead_in + i * step, lead_in + i * step + length) for i in range(n)]


def cut_excerpt(audio: np.ndarray, sr: int, start: float, end: float, fade: float = 0.5,
                peak_db: float = -1.0) -> np.ndarray:
    """audio[start:end] ([T] or [T, C]) with linear fades and its peak at ``peak_db`` dBFS (silence stays)."""
    a, b = int(round(start * sr)), min(int(round(end * sr)), len(audio))
    if b <= a:
        raise ValueError(f"empty excerpt {start}-{end} s of {len(audio) / sr:.1f} s")
    out = np.array(audio[a:b], dtype=np.float32, copy=True)
    n = min(int(fade * sr), len(out) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        shape = (n,) + (1,) * (out.ndim - 1)
        out[:n] *= ramp.reshape(shape)
        out[-n:] *= ramp[::-1].reshape(shape)
    peak = float(np.abs(out).max()) if out.size else 0.0
    if peak > 1e-6:
        out *= (10 ** (peak_db / 20)) / peak
    return out


def leading_silence(audio: np.ndarray, sr: int, threshold_db: float = -50.0) -> float:
    """Seconds before the signal first rises above ``threshold_db`` relative to its peak."""
    mono = np.abs(audio if audio.ndim == 1 else audio.max(axis=1))
    peak = float(mono.max()) if mono.size else 0.0
    if peak <= 0:
        return 0.0
    idx = np.flatnonzero(mono > peak * 10 ** (threshold_db / 20))
    return float(idx[0]) / sr if idx.size else 0.0


FORMATS = {"flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}


def file_format(key: str) -> str:
    """Most excerpts are FLAC; a seeded 15% each are MP3 and Ogg Vorbis (real mixed-format libraries)."""
    r = stable_int(key, "fmt") % 100
    return "flac" if r < 70 else "mp3" if r < 85 else "ogg"


def write_audio(path: Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf

    ext = path.suffix.lstrip(".").lower()
    subtype = {"flac": "PCM_16", "mp3": "MPEG_LAYER_III", "ogg": "VORBIS"}[ext]
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(str(tmp), audio, sr, format=FORMATS[ext], subtype=subtype)
    os.replace(tmp, path)


def write_tags(path: Path, tags: ExcerptTags) -> None:
    """Real file tags through mutagen's easy interface: Vorbis comments (FLAC, Ogg) or ID3 (MP3)."""
    import mutagen

    f = mutagen.File(str(path), easy=True)
    if f is None:
        raise ValueError(f"mutagen cannot open {path}")
    if f.tags is None:
        f.add_tags()
    f["artist"] = [tags.artist]
    f["album"] = [tags.album]
    f["title"] = [tags.title]
    if tags.composer:
        f["composer"] = [tags.composer]
    if tags.genres:
        f["genre"] = list(tags.genres)
    if tags.moods:
        f["mood"] = list(tags.moods)
    f.save()


def safe_name(text: str, limit: int = 80) -> str:
    name = re.sub(r"[^\w .,'()&-]+", " ", text, flags=re.UNICODE)
    name = " ".join(name.split()).strip(" .")
    return name[:limit].rstrip(" .") or "untitled"


def render_midi(midi: Path, wav: Path, soundfont: str, sr: int = SAMPLE_RATE, gain: float = 0.6,
                max_seconds: float | None = None, timeout: float = 300.0) -> None:
    """FluidSynth renders ``midi`` to a 16-bit stereo WAV at ``sr`` (no audio driver, no shell).

    With ``max_seconds`` the render stops once the file holds that much audio: FluidSynth 2.3 keeps
    rendering silence after the end of some music21 MIDI files, and libsndfile reads the file it
    leaves (a WAV whose header was not finalised) up to what was written."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RuntimeError("fluidsynth is not installed (apt-get install -y fluidsynth fluid-soundfont-gm)")
    cmd = [exe, "-ni", "-q", "-g", str(gain), "-r", str(sr), "-F", str(wav), "-T", "wav", soundfont, str(midi)]
    limit = None if max_seconds is None else 1024 + int(max_seconds * sr) * 4   # 16-bit stereo frames
    start = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        while proc.poll() is None:
            if limit is not None and wav.is_file() and wav.stat().st_size > limit:
                proc.terminate()
                proc.wait(timeout=30)
                return
            if time.monotonic() - start > timeout:
                proc.kill()
                raise RuntimeError(f"fluidsynth did not finish {midi.name} in {timeout:.0f} s")
            time.sleep(0.1)
        err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0 or not wav.is_file():
        raise RuntimeError(f"fluidsynth failed on {midi.name}: {err.strip()[-300:]}")


def find_soundfont(explicit: str | None = None) -> str:
    for cand in ([explicit] if explicit else []) + list(SOUNDFONTS):
        if cand and Path(cand).is_file():
            return cand
    raise RuntimeError("no General MIDI soundfont found (apt-get install -y fluid-soundfont-gm)")


# --------------------------------------------------------------------------- scores (music21)
@dataclass
class Piece:
    collection: str
    source: str                    # corpus path (and tune number)
    title: str
    album: str
    form: str
    ensemble: str
    score: Any                     # music21 Score


def _corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def _pick(paths: list[Path], n: int, key: str) -> list[Path]:
    """A seeded, spread-out choice of ``n`` paths (the same on every machine)."""
    return sorted(paths, key=lambda p: stable_int(key, p.as_posix()))[:n]


def _album_of(c: Collection, rel: str) -> str:
    if c.album:
        return c.album
    parts = rel.split("/")
    if c.key == "monteverdi":
        m = re.match(r"madrigal\.(\d+)\.", parts[-1])
        return f"Madrigals, Book {m.group(1)}" if m else "Madrigals"
    opus = parts[1] if len(parts) > 2 else Path(parts[-1]).stem
    m = re.match(r"(opus|k)(\d+)(?:no(\d+))?", opus)
    if m:
        kind = "Op." if m.group(1) == "opus" else "K."
        return f"String Quartet {kind} {m.group(2)}" + (f" No. {m.group(3)}" if m.group(3) else "")
    return opus


_FILE_LIKE = re.compile(r"\.(mxl|xml|musicxml|krn|abc)$|^(movement\d+|bwv[\d.]+|opus\w+)$", re.I)


def _title_of(score: Any, rel: str, album: str) -> str:
    """The score's title; where it only repeats the file name, one made from the file name and album."""
    md = score.metadata
    for attr in ("title", "movementName"):
        value = getattr(md, attr, None) if md is not None else None
        if value and str(value).strip() and not str(value).strip().isdigit() and not _FILE_LIKE.search(str(value)):
            return " ".join(str(value).split())
    stem = Path(rel).stem
    m = re.match(r"bwv([\d.]+)$", stem)
    if m:
        return f"Chorale BWV {m.group(1)}"
    m = re.match(r"movement(\d+)", stem)
    if m:
        return f"{album}: movement {m.group(1)}"
    return stem.replace("_", " ")


def _composer_of(path: Path) -> str:
    """The composer named in a MusicXML file (trecento files carry it; music21's parse of them is slow)."""
    text = path.read_text(errors="replace")[:20000]
    m = re.search(r'<creator type="composer">([^<]*)</creator>', text)
    return " ".join(m.group(1).split()) if m else ""


def _abc_tunes(path: Path, key: str, n: int) -> Iterator[tuple[int, Any, str | None]]:
    """Up to ``n`` seeded tunes of an ABC file as (number, score, R: field): each tune is parsed on its
    own (a songbook of 500 tunes parses in a second, not minutes), a tune music21 cannot read is passed."""
    from music21 import converter, stream

    blocks = re.split(r"(?m)^(?=X:)", path.read_text(errors="replace"))[1:]
    made = 0
    for i in sorted(range(len(blocks)), key=lambda i: stable_int(key, path.name, i)):
        if made >= n:
            return
        try:
            parsed = converter.parse(blocks[i], format="abc")
        except Exception as e:  # music21 raises many kinds on a tune it cannot read
            log.warning("skip %s tune %d: %s", path.name, i, e)
            continue
        score = parsed.scores[0] if isinstance(parsed, stream.Opus) else parsed
        rhythm = re.search(r"(?m)^R:(.*)$", blocks[i])
        made += 1
        yield i, score, rhythm.group(1).strip() if rhythm else None


def iter_pieces(c: Collection) -> Iterator[Piece]:
    from music21 import converter

    root = _corpus_root()
    paths = sorted({p for g in c.paths for p in root.glob(g)})
    if c.composer_filter:
        paths = [p for p in paths if _composer_of(p).startswith(c.composer_filter)]
    ensembles = c.ensemble if isinstance(c.ensemble, tuple) else (c.ensemble,)
    made = 0
    for path in _pick(paths, len(paths), c.key):
        if made >= c.max_pieces:
            return
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".abc":
            tunes = _abc_tunes(path, c.key, c.abc_tunes)
        else:
            try:
                tunes = iter([(0, converter.parse(str(path)), None)])
            except Exception as e:  # music21 raises many kinds on a score it cannot read
                log.warning("skip %s: %s", rel, e)
                continue
        for number, score, rhythm in tunes:
            if made >= c.max_pieces:
                return
            album = _album_of(c, rel)
            title = _title_of(score, rel, album)
            form = c.form
            if form == "abc":
                form = abc_form(rhythm, title) or "folk tune"
            ensemble = ensembles[made % len(ensembles)]
            source = f"{rel}#{number}" if path.suffix == ".abc" else rel
            made += 1
            yield Piece(c.key, source, title, album, form, ensemble, score)


def score_tempo(score: Any, default: float) -> float:
    """The score's first metronome mark (40-240 quarters a minute) or ``default``."""
    from music21 import tempo

    for mark in score.recurse().getElementsByClass(tempo.MetronomeMark):
        try:
            qpm = float(mark.getQuarterBPM())
        except (TypeError, ValueError, AttributeError):
            continue
        if 40 <= qpm <= 240:
            return qpm
    return default


def _seconds(score: Any, qpm: float) -> float:
    return float(score.highestTime) * 60.0 / qpm


def _truncate(score: Any, qpm: float, seconds: float) -> Any:
    """Drop the measures of ``score`` that start after its first ``seconds`` at ``qpm`` (in place)."""
    if _seconds(score, qpm) <= seconds:
        return score
    need = seconds * qpm / 60.0
    for part in score.parts:
        for m in list(part.getElementsByClass("Measure")):
            if float(m.offset) >= need:
                part.remove(m)
    return score


def _strip_repeats(score: Any) -> None:
    """Play what is left once: music21's MIDI writer expands repeats itself, and a truncated score's
    repeat marks may no longer pair up."""
    from music21 import bar, repeat, spanner

    for m in score.recurse().getElementsByClass("Measure"):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = None
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = None
    for el in list(score.recurse().getElementsByClass((repeat.RepeatExpression, spanner.RepeatBracket))):
        el.activeSite.remove(el)


def prepare_midi(piece: Piece, qpm: float, midi_path: Path, seconds: float) -> tuple[list[int], list[float]]:
    """Write the first ``seconds`` of ``piece`` as MIDI with the ensemble's programs at one tempo;
    returns (programs, distinct note onsets in seconds)."""
    from music21 import instrument, stream, tempo

    score = piece.score
    if _seconds(score, qpm) < seconds:   # short tunes (folk dances) are played with their repeats
        try:
            score = score.expandRepeats()
        except Exception:  # a score whose repeat marks music21 cannot expand plays them once
            pass
    score = _truncate(score, qpm, seconds)
    _strip_repeats(score)
    parts = list(score.parts) if isinstance(score, stream.Score) and len(score.parts) else [score]
    names = []
    for p in parts:
        inst = p.getInstrument(returnDefault=False)
        names.append(p.partName or (inst.instrumentName if inst is not None else None))
    programs = programs_for(names, piece.ensemble)
    for part, program in zip(parts, programs):
        for inst in list(part.recurse().getElementsByClass(instrument.Instrument)):
            inst.activeSite.remove(inst)
        new = instrument.Instrument()
        new.midiProgram = program
        part.insert(0, new)
    for mark in list(score.recurse().getElementsByClass((tempo.MetronomeMark, tempo.TempoText))):
        mark.activeSite.remove(mark)
    parts[0].insert(0, tempo.MetronomeMark(number=qpm))
    score.write("midi", fp=str(midi_path))
    onsets = sorted({round(float(n.offset) * 60.0 / qpm, 4) for p in parts for n in p.flatten().notes})
    return programs, onsets


# --------------------------------------------------------------------------- the build
@dataclass
class Excerpt:
    path: str
    source: str
    start: float
    end: float
    qpm: float
    programs: list[int]
    tags: dict[str, Any]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def build_collection(c: Collection, out: Path, soundfont: str) -> list[Excerpt]:
    """Render, cut, encode and tag one collection's excerpts under ``out``."""
    import soundfile as sf

    built: list[Excerpt] = []
    for piece in iter_pieces(c):
        with tempfile.TemporaryDirectory() as tmp:
            midi, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
            # Folk tunes are played at their dance's tempo; art music at its own mark, else the default.
            qpm = ABC_FORMS.get(piece.form, c.qpm) if c.era == "folk" else score_tempo(piece.score, c.qpm)
            try:
                seconds = 31.0 * c.excerpts_per_piece + 15.0
                programs, onsets = prepare_midi(piece, qpm, midi, seconds)
                render_midi(midi, wav, soundfont, max_seconds=seconds + 20.0)
            except Exception as e:  # one bad score must not stop the library
                log.warning("skip %s: %s", piece.source, e)
                continue
            audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
        # MIDI time 0 is score offset 0, so audio seconds and onset seconds agree; skip a silent start.
        windows = excerpt_windows(len(audio) / sr, piece.source, c.excerpts_per_piece,
                                  lead_in=max(0.5, leading_silence(audio, sr)))
        for i, (s, e) in enumerate(windows):
            key = f"{piece.source}@{i}"
            tempo = tempo_words(onsets, s, e)
            title = piece.title if len(windows) == 1 else f"{piece.title} ({i + 1})"
            tags = excerpt_tags(c, form=piece.form, ensemble=piece.ensemble, tempo=tempo, title=title,
                                album=piece.album)
            folder = out / safe_name(c.artist) / safe_name(piece.album)
            folder.mkdir(parents=True, exist_ok=True)
            number = sum(1 for x in built if Path(x.path).parent == folder.relative_to(out)) + 1
            path = folder / f"{number:02d} {safe_name(title)}.{file_format(key)}"
            write_audio(path, cut_excerpt(audio, sr, s, e), sr)
            write_tags(path, tags)
            built.append(Excerpt(path.relative_to(out).as_posix(), key, round(s, 2), round(e, 2), qpm,
                                 programs, asdict(tags)))
            log.info("%s: %s %s", c.key, path.relative_to(out), tags.genres + tags.moods)
    return built


def build(out: Path, soundfont: str, only: Sequence[str] = ()) -> list[Excerpt]:
    """Build every collection (or ``only`` these) that ``out/.build/<key>.json`` does not mark done,
    then write ``out/library.json`` over all finished ones. Collections are independent, so several
    processes with different ``--only`` lists build one library in parallel."""
    done_dir = out / ".build"
    done_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(only) - {c.key for c in COLLECTIONS}
    if unknown:
        raise SystemExit(f"unknown collections: {sorted(unknown)}")
    for c in COLLECTIONS:
        marker = done_dir / f"{c.key}.json"
        if (only and c.key not in only) or marker.exists():
            continue
        _write_json(marker, [asdict(x) for x in build_collection(c, out, soundfont)])   # written last
    built = [Excerpt(**x) for c in COLLECTIONS if (done_dir / f"{c.key}.json").exists()
             for x in json.loads((done_dir / f"{c.key}.json").read_text())]
    _write_json(out / "library.json", [asdict(x) for x in built])
    return built


def setup_side_venv(venv: Path = SIDE_VENV) -> Path:
    """Create the side venv with music21 and the audio writers (never the project venv)."""
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *SIDE_PACKAGES], check=True)
    return py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the library folder to write")
    parser.add_argument("--soundfont", default=None, help="a General MIDI .sf2 (default: FluidR3_GM)")
    parser.add_argument("--only", nargs="*", default=(), help="collection keys to build (default: all not yet built)")
    parser.add_argument("--setup", action="store_true", help=f"create the side venv {SIDE_VENV} and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.setup:
        print(setup_side_venv())
        return 0
    if args.out is None:
        parser.error("--out is required")
    if importlib.util.find_spec("music21") is None:
        print(f"music21 is missing: run this with {SIDE_VENV}/bin/python (create it with --setup)", file=sys.stderr)
        return 2
    built = build(args.out, find_soundfont(args.soundfont), args.only)
    artists = {x.tags["artist"] for x in built}
    print(f"{len(built)} excerpts by {len(artists)} artists in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
