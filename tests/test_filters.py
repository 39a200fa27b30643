"""Search filters: the vectorised ``--where`` against naive per-track predicates, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from musiccli.errors import MtxError
from musiccli.filters import ItemTable, exclude_artists_mask, negative_query, where_mask

ITEMS = {
    "a": {"artist": "Iron Ravens", "album": "Night", "title": "Black Sun", "tags": ["Metal", "dark"],
          "year": 1994, "duration": 312.0, "dataset": "folder", "audio_path": "/m/a.flac"},
    "b": {"artist": "iron  ravens", "album": "Night", "title": "Snow", "tags": ["Christmas", "metal"],
          "year": 1996, "duration": 180.0, "dataset": "folder", "audio_path": "/m/b.mp3"},
    "c": {"artist": "Ada Marsh", "album": None, "title": "Lullaby", "tags": ["folk"],
          "year": None, "duration": 700.0, "dataset": "folder", "audio_path": "/m/c.ogg"},
    "d": {"artist": None, "title": "Untitled", "tags": [], "duration": 59.5, "dataset": "synth",
          "audio_path": "/m/d.wav"},
}
IDS = list(ITEMS)


def low(v):
    return " ".join(str(v).lower().split()) if v else None


def genres(it):
    return {low(t) for t in it.get("tags") or []}


NAIVE = {
    "duration < 600 and genre != 'Christmas'":
        lambda it: it["duration"] < 600 and "christmas" not in genres(it),
    "genre == 'metal'": lambda it: "metal" in genres(it),
    "artist == 'IRON RAVENS'": lambda it: low(it.get("artist")) == "iron ravens",
    "year >= 1995 or year < 1990": lambda it: it.get("year") is not None and (it["year"] >= 1995 or it["year"] < 1990),
    "not year < 1995": lambda it: not (it.get("year") is not None and it["year"] < 1995),
    "artist != 'Ada Marsh'": lambda it: low(it.get("artist")) != "ada marsh",
    "genre in ['folk', 'Dark']": lambda it: bool(genres(it) & {"folk", "dark"}),
    "dataset not in ['synth']": lambda it: it["dataset"] != "synth",
    "600 < duration": lambda it: it["duration"] > 600,
    "duration <= 180 AND tag = 'metal'": lambda it: it["duration"] <= 180 and "metal" in genres(it),
    "album == 'night' and (title == 'snow' or title == 'black sun')":
        lambda it: low(it.get("album")) == "night" and low(it["title"]) in ("snow", "black sun"),
    "path == '/m/c.ogg'": lambda it: it["audio_path"] == "/m/c.ogg",
    "year in [1994, 1996]": lambda it: it.get("year") in (1994, 1996),
}


@pytest.mark.parametrize("expr", list(NAIVE))
def test_where_equals_a_naive_predicate(expr: str) -> None:
    table = ItemTable.build(IDS, ITEMS)
    got = where_mask(expr, table)
    want = np.array([NAIVE[expr](ITEMS[i]) for i in IDS])
    assert got.tolist() == want.tolist()


def test_exclude_artist_ignores_case_and_spacing() -> None:
    table = ItemTable.build(IDS, ITEMS)
    assert exclude_artists_mask(["iron ravens"], table).tolist() == [False, False, True, True]


@pytest.mark.parametrize("expr, message", [
    ("", "empty expression"),
    ("bpm > 120", "unknown field 'bpm'"),
    ("artst == 'x'", "did you mean 'artist'"),
    ("duration < 'long'", "duration is a number"),
    ("artist > 'a'", "artist is text"),
    ("genre in 'rock'", "'in' takes a list"),
    ("__import__('os').system('x')", "is not a comparison"),
    ("duration < 600 and", "cannot parse"),
    ("1 < duration < 600", "one comparison at a time"),
    ("genre == rock", "expected a value"),
    ("'a' == 'b'", "compares no field"),
])
def test_where_refuses_in_one_line(expr: str, message: str) -> None:
    table = ItemTable.build(IDS, ITEMS)
    with pytest.raises(MtxError) as e:
        where_mask(expr, table)
    assert message in e.value.message and "\n" not in e.value.message
    assert e.value.hint


def test_negative_query_moves_away_from_the_negative() -> None:
    rng = np.random.default_rng(1)
    q, n = rng.normal(size=16), rng.normal(size=16)
    out = negative_query(q, n, 0.5)
    assert np.linalg.norm(out) == pytest.approx(1.0, abs=1e-6)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    assert float(out @ unit(n)) < float(unit(q) @ unit(n))
    want = unit(unit(q) - 0.5 * unit(n))
    np.testing.assert_allclose(out, want, atol=1e-6)
    with pytest.raises(MtxError):
        negative_query(q, n, 1.5)
