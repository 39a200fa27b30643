"""The pure parts of benchmarks/real_audio/build_library.py: programs, dance forms, tempo words, tags,
excerpt windows and cutting, and file tags written with mutagen as mtx's folder source reads them back.
Rendering is checked only where FluidSynth and a General MIDI soundfont are installed."""

from __future__ import annotations

import importlib.util
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musiccli.sources.folder import read_file_info

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("build_library", ROOT / "benchmarks" / "real_audio" / "build_library.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_library"] = module   # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


bl = _load()


def test_programs_follow_part_names_where_the_ensemble_allows():
    gm = bl.GM
    quartet = bl.programs_for(["Violino I", "Violino II", "Viola", "Violoncello"], "string quartet")
    assert quartet == [gm["violin"], gm["violin"], gm["viola"], gm["cello"]]
    # Unnamed parts take the ensemble's default by position; extra parts repeat its last instrument.
    assert bl.programs_for([None] * 5, "string quartet") == [gm["violin"], gm["violin"], gm["viola"],
                                                             gm["cello"], gm["cello"]]
    # An organ or choir ensemble voices every part alike, whatever the parts are called.
    assert bl.programs_for(["Soprano", "Alto", "Tenor", "Bass"], "organ") == [gm["organ"]] * 4
    assert bl.programs_for(["Soprano", "Bass"], "choir") == [gm["choir"]] * 2
    # A sung part of a song is the ensemble's voice; the piano staves stay piano.
    assert bl.programs_for(["Singstimme", "Piano", None], "voice and piano") == [gm["voice"], gm["piano"], gm["piano"]]
    assert bl.programs_for([None], "fiddle") == [110]
    with pytest.raises(ValueError):
        bl.program_for_part(None, 0, "kazoo band")


@pytest.mark.parametrize("rhythm,title,form", [
    ("reel", None, "reel"), ("Slip Jig", None, "jig"), ("double jig", None, "jig"), ("hornpipe", None, "hornpipe"),
    (None, "NIAGARA -- HORNPIPE", "hornpipe"), (None, "Rose-Bud - Reel", None), (None, "Some Tune -- Reels", "reel"),
    ("slow air", None, "air"), (None, None, None), ("unknown", "No Form Here", None),
])
def test_abc_form(rhythm, title, form):
    assert bl.abc_form(rhythm, title) == form


def test_tempo_words_measure_onsets_per_second():
    chorale = [i / 1.2 for i in range(100)]            # 1.2 onsets a second
    reel = [i / 6.5 for i in range(1000)]               # 6.5 onsets a second
    middle = [i / 3.0 for i in range(300)]
    assert bl.tempo_words(chorale, 10, 30) == ["slow"]
    assert bl.tempo_words(reel, 10, 30) == ["fast"]
    assert bl.tempo_words(middle, 10, 30) == []
    assert bl.tempo_words(reel, 30, 30) == []
    assert bl.tempo_words([], 0, 20) == ["slow"]        # silence is not fast


def _collection(key: str):
    return next(c for c in bl.COLLECTIONS if c.key == key)


def test_excerpt_tags_are_facts_of_the_piece():
    bach = bl.excerpt_tags(_collection("bach"), form="chorale", ensemble="organ", tempo=["slow"],
                           title="Chorale BWV 66.6", album="Four-part Chorales")
    assert bach.genres == ["baroque", "chorale", "sacred", "organ", "classical"]
    assert bach.moods == ["slow", "calm"]
    assert (bach.artist, bach.composer) == ("Johann Sebastian Bach", "Johann Sebastian Bach")
    reel = bl.excerpt_tags(_collection("ryan"), form="reel", ensemble="fiddle", tempo=["fast"], title="Rose-Bud",
                           album="Ryan's Mammoth Collection")
    assert reel.genres == ["folk", "reel", "dance", "american", "fiddle"]   # folk is not "classical"
    assert reel.moods == ["fast", "lively"] and reel.composer == "Traditional"
    quartet = bl.excerpt_tags(_collection("haydn"), form="quartet", ensemble="string quartet", tempo=[],
                              title="x", album="y")
    assert quartet.moods == [] and {"strings", "violin", "cello", "classical"} <= set(quartet.genres)


def test_collections_are_many_artists_with_known_ensembles():
    assert len({c.artist for c in bl.COLLECTIONS}) >= 15
    for c in bl.COLLECTIONS:
        for ensemble in (c.ensemble if isinstance(c.ensemble, tuple) else (c.ensemble,)):
            assert ensemble in bl.ENSEMBLES and ensemble in bl.ENSEMBLE_TAGS, (c.key, ensemble)


def test_excerpt_windows():
    assert bl.excerpt_windows(15.0, "a", 2) == []                       # too short
    assert bl.excerpt_windows(100.0, "a", 0) == []
    (one,) = bl.excerpt_windows(22.0, "short", 3, lead_in=1.0)          # as long as the piece allows
    assert one[0] == 1.0 and 20.0 <= one[1] - one[0] <= 21.0
    windows = bl.excerpt_windows(200.0, "long", 3, lead_in=2.0)
    assert windows == bl.excerpt_windows(200.0, "long", 3, lead_in=2.0)  # seeded, the same every time
    assert len(windows) == 3 and windows[0][0] == 2.0 and windows[-1][1] <= 200.0 + 1e-9
    lengths = {round(e - s, 6) for s, e in windows}
    assert len(lengths) == 1 and 20.0 <= lengths.pop() <= 30.0
    assert all(a[1] <= b[0] for a, b in zip(windows, windows[1:]))   # no overlap
    assert len(bl.excerpt_windows(45.0, "mid", 3, lead_in=0.0)) in (1, 2)   # only as many as fit


def test_cut_excerpt_fades_and_normalises():
    sr = 1000
    audio = np.full((10 * sr, 2), 0.25, dtype=np.float32)
    out = bl.cut_excerpt(audio, sr, 2.0, 6.0, fade=0.5, peak_db=-1.0)
    assert out.shape == (4 * sr, 2)
    assert np.all(out[0] == 0) and np.all(out[-1] == 0)
    assert np.isclose(np.abs(out).max(), 10 ** (-1 / 20), atol=1e-6)
    assert np.allclose(out[2000], 10 ** (-1 / 20))
    silent = bl.cut_excerpt(np.zeros(5 * sr, np.float32), sr, 0, 3)
    assert silent.shape == (3 * sr,) and not silent.any()
    with pytest.raises(ValueError):
        bl.cut_excerpt(audio, sr, 12.0, 14.0)


def test_leading_silence():
    sr = 1000
    audio = np.zeros(3 * sr, np.float32)
    audio[1500:] = 0.5
    assert bl.leading_silence(audio, sr) == 1.5
    assert bl.leading_silence(np.zeros(10, np.float32), sr) == 0.0


@pytest.mark.parametrize("ext", ["flac", "mp3", "ogg"])
def test_written_tags_are_what_mtx_reads(tmp_path, ext):
    sr = 44100
    t = np.arange(sr * 2) / sr
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"01 Chorale.{ext}"
    bl.write_audio(path, audio, sr)
    tags = bl.ExcerptTags(artist="Johann Sebastian Bach", album="Four-part Chorales", title="Chorale BWV 66.6",
                          genres=["baroque", "chorale", "organ"], moods=["slow", "calm"], composer="J. S. Bach")
    bl.write_tags(path, tags)
    assert not list(tmp_path.glob(".*.tmp"))
    info = read_file_info(path, path.name)
    assert info["tag_artist"] == "Johann Sebastian Bach"
    assert info["album"] == "Four-part Chorales" and info["title"] == "Chorale BWV 66.6"
    assert info["genres"] == ["baroque", "chorale", "organ"] and info["moods"] == ["slow", "calm"]
    assert abs(info["duration"] - 2.0) < 0.1


def test_file_format_is_mostly_flac_and_stable():
    formats = [bl.file_format(f"piece{i}@0") for i in range(400)]
    assert formats == [bl.file_format(f"piece{i}@0") for i in range(400)]
    share = {f: formats.count(f) / len(formats) for f in ("flac", "mp3", "ogg")}
    assert share["flac"] > 0.6 and share["mp3"] > 0.08 and share["ogg"] > 0.08


def test_safe_name():
    assert bl.safe_name("A'Willie: we have miss'd you / Strathspey?") == "A'Willie we have miss'd you Strathspey"
    assert bl.safe_name("...") == "untitled"


def _smf_one_note(program: int, seconds_per_quarter: float = 0.5) -> bytes:
    """A one-note format-0 MIDI file: program change, middle C for 4 quarters, end of track."""
    tempo = int(seconds_per_quarter * 1e6).to_bytes(3, "big")
    events = (b"\x00\xff\x51\x03" + tempo + bytes([0x00, 0xC0, program]) + b"\x00\x90\x3c\x64"
              + b"\x83\x00\x80\x3c\x40" + b"\x00\xff\x2f\x00")   # delta 384 ticks = 4 quarters at 96 tpq
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96) + b"MTrk" + struct.pack(">I", len(events)) + events


def test_render_midi_with_fluidsynth(tmp_path):
    if shutil.which("fluidsynth") is None:
        pytest.skip("fluidsynth is not installed (apt-get install -y fluidsynth fluid-soundfont-gm)")
    try:
        soundfont = bl.find_soundfont()
    except RuntimeError as e:
        pytest.skip(str(e))
    midi, wav = tmp_path / "c.mid", tmp_path / "c.wav"
    midi.write_bytes(_smf_one_note(bl.GM["organ"]))
    bl.render_midi(midi, wav, soundfont)
    audio, sr = sf.read(str(wav), always_2d=True)
    assert sr == bl.SAMPLE_RATE and audio.shape[1] == 2
    assert 1.8 <= len(audio) / sr <= 10.0               # 2 s of note plus the release and reverb tail
    assert np.abs(audio[: sr // 2]).max() > 0.01        # the note sounds from the start
    assert bl.leading_silence(audio, sr) < 0.1


def test_render_midi_stops_at_max_seconds(tmp_path):
    if shutil.which("fluidsynth") is None:
        pytest.skip("fluidsynth is not installed (apt-get install -y fluidsynth fluid-soundfont-gm)")
    try:
        soundfont = bl.find_soundfont()
    except RuntimeError as e:
        pytest.skip(str(e))
    midi, wav = tmp_path / "long.mid", tmp_path / "long.wav"
    midi.write_bytes(_smf_one_note(bl.GM["organ"], seconds_per_quarter=10.0))   # a 40 s note
    bl.render_midi(midi, wav, soundfont, max_seconds=3.0)
    audio, sr = sf.read(str(wav), always_2d=True)      # the unfinished WAV reads up to what was written
    assert 3.0 <= len(audio) / sr < 30.0
    assert np.abs(audio[: sr]).max() > 0.01
