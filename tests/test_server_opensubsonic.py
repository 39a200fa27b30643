"""OpenSubsonic behaviour that supysonic (API 1.12) cannot show, on the loopback Navidrome fixture:
error 41 on token auth, apiKey + tokenInfo, formPost, the 414 of a stock nginx, another user's
public playlist, and a transcoding error body refused per item by `mtx download audiomuse`."""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import fakemedia
from musiccli import mediaserver
from musiccli.errors import MtxError
from test_audiomuse_mediaserver import ND_KEY, ND_PASSWORD, ND_USER, no_server_env, tracks_for  # noqa: F401

IDS = [hashlib.md5(str(i).encode()).hexdigest()[:22] for i in range(12)]   # Navidrome ids are 22 characters


def tracks() -> list[fakemedia.FakeTrack]:
    return [fakemedia.FakeTrack(i, f"T {i}", "A", b"fLaC" + bytes(100), suffix="flac") for i in IDS]


def nd_env(url: str, **extra) -> dict[str, str]:
    return {"MEDIASERVER_TYPE": "navidrome", "NAVIDROME_URL": url, "NAVIDROME_USER": ND_USER,
            "NAVIDROME_PASSWORD": ND_PASSWORD, **extra}


def test_error_41_falls_back_to_enc_and_logs_it(caplog) -> None:
    with fakemedia.navidrome(tracks(), ND_USER, ND_PASSWORD, ND_KEY, token_auth=False) as nd:
        c = mediaserver.make_server(None, nd_env(nd.url))
        with caplog.at_level(logging.WARNING, logger="musiccli.mediaserver"):
            assert len(list(c.tracks())) == 12
    assert c.auth == "enc"
    assert any("error 41" in r.getMessage() and "enc:" in r.getMessage() for r in caplog.records)
    assert "p=enc%3A" in nd.paths("/rest/search3.view")[0]


def test_api_key_with_the_extension_and_owner_from_token_info() -> None:
    with fakemedia.navidrome(tracks(), ND_USER, ND_PASSWORD, ND_KEY, others={"Mix": ["bob"]}) as nd:
        c = mediaserver.make_server(None, {"NAVIDROME_URL": nd.url, "NAVIDROME_API_KEY": ND_KEY,
                                           "MEDIASERVER_TYPE": "navidrome"})
        res = c.save_playlist("Mix", IDS[:3])
        assert res.created and nd.playlists[res.playlist_id]["owner"] == ND_USER
        assert [p["ids"] for p in nd.playlists.values() if p["owner"] == "bob"] == [["x"]]
        assert nd.paths("/rest/tokenInfo.view")


def test_api_key_refused_without_the_extension() -> None:
    with fakemedia.navidrome(tracks(), ND_USER, ND_PASSWORD, ND_KEY, extensions=("formPost",)) as nd:
        c = mediaserver.make_server(None, {"NAVIDROME_URL": nd.url, "NAVIDROME_API_KEY": ND_KEY,
                                           "MEDIASERVER_TYPE": "navidrome"})
        with pytest.raises(MtxError, match="does not accept API keys"):
            list(c.tracks())


@pytest.mark.parametrize("extensions", [fakemedia.NAVIDROME_EXTENSIONS, ()], ids=["formPost", "no-formPost"])
def test_a_600_track_playlist_passes_a_stock_nginx(extensions) -> None:
    big = (IDS * 50)[:600]
    with fakemedia.navidrome(tracks(), ND_USER, ND_PASSWORD, ND_KEY, extensions=extensions) as nd:
        c = mediaserver.make_server(None, nd_env(nd.url))
        # What mtx used to send: every songId in one GET. The fixture's nginx limit refuses it.
        old = c._url("createPlaylist", [("name", "old"), *[("songId", i) for i in big]])
        with pytest.raises(urllib.error.HTTPError, match="414"):
            urllib.request.urlopen(old, timeout=10)
        res = c.save_playlist("Big", big)
        assert nd.playlists[res.playlist_id]["ids"] == big and res.tracks == 600
        again = c.save_playlist("Big", big[::-1])
        assert again.playlist_id == res.playlist_id and nd.playlists[res.playlist_id]["ids"] == big[::-1]
        posts = [m for m, p, _ in nd.requests if m == "POST"]
        updates = nd.paths("/rest/updatePlaylist.view")
    if extensions:
        assert len(posts) == 2 and not updates
    else:
        assert not posts and len(updates) == 2 * 5   # 100 per call: create with 100, add 5 x 100


def test_another_users_playlist_of_that_name_is_not_touched() -> None:
    with fakemedia.navidrome(tracks(), ND_USER, ND_PASSWORD, ND_KEY, others={"Mix": ["bob", "carol"]}) as nd:
        c = mediaserver.make_server(None, nd_env(nd.url))
        first = c.save_playlist("Mix", IDS[:2])
        second = c.save_playlist("Mix", IDS[2:4])
        assert first.created and not second.created and first.playlist_id == second.playlist_id
        assert sorted(p["owner"] for p in nd.playlists.values()) == sorted(["bob", "carol", ND_USER])
        assert all(p["ids"] == ["x"] for p in nd.playlists.values() if p["owner"] != ND_USER)


def test_transcoding_error_bodies_fail_their_items_and_are_not_saved(pg, cli, state_dir, no_server_env,  # noqa: F811
                                                                      monkeypatch) -> None:
    from pgserver import build_db

    songs = build_db(pg, "am_nd_errbody", "legacy", 12, seed=9)
    with fakemedia.navidrome(tracks_for(songs), ND_USER, ND_PASSWORD, ND_KEY) as nd:
        nd.errors_for.update(s.server_item_id for s in songs[::3])   # 4 of 12
        for k, v in nd_env(nd.url).items():
            monkeypatch.setenv(k, v)
        r = cli("download", "audiomuse", "--dsn", pg.dsn("am_nd_errbody"), "--server", "navidrome", "--json")
    data = json.loads(r.stdout)[0]
    assert (data["ok"], data["failed"]) == (8, 4), r.output
    assert all("format=raw" in p for p in nd.paths("/rest/stream.view"))
    root = Path(state_dir) / "datasets" / "audiomuse"
    saved = [p for p in (root / "audio").rglob("*") if p.is_file()]
    assert len(saved) == 8 and all(p.read_bytes()[:4] == b"RIFF" for p in saved)
    ledger = [json.loads(x) for x in (root / "ledger.jsonl").read_text().splitlines()]
    reasons = {e.get("reason") for e in ledger if e.get("status") == "failed"}
    assert reasons == {"not audio: error 0: Error while running the transcoding process"}
