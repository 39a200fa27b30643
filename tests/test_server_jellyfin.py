"""Jellyfin: the loopback fixture (no Jellyfin server installs from the registries), checked
against the official `jellyfin-apiclient-python` client, plus what Jellyfin 10.11 refuses."""

from __future__ import annotations

import re
import urllib.parse

import pytest

import fakemedia
from fakemedia import FakeTrack
from musiccli import mediaserver
from musiccli.errors import MtxError

TOKEN, USER_ID = "jf-token-Secret-123", "user-42"


def tracks(n: int = 6) -> list[FakeTrack]:
    return [FakeTrack(f"id{i}", f"Title {i}", f"Artist {i}", b"RIFF" + bytes(200)) for i in range(n)]


def env(url: str) -> dict[str, str]:
    return {"MEDIASERVER_TYPE": "jellyfin", "JELLYFIN_URL": url, "JELLYFIN_USER_ID": USER_ID, "JELLYFIN_TOKEN": TOKEN}


def signature(method: str, path: str, headers: dict[str, str]) -> tuple:
    """What a Jellyfin server binds: method, route, query names (case-insensitive), auth fields."""
    u = urllib.parse.urlsplit(path)
    route = re.sub(r"/(id\d+|pl\d+)(?=/|$)", "/{id}", u.path)
    names = frozenset(k.lower() for k in urllib.parse.parse_qs(u.query) if k.lower() != "apikey")
    auth = frozenset(re.findall(r'(\w+)="', headers.get("Authorization", "")))
    return method, route, names, auth


def official_client(url: str):
    jac = pytest.importorskip("jellyfin_apiclient_python")
    c = jac.JellyfinClient()
    c.config.app("mtx-reference", "0.1", "reference", "reference-device")
    c.config.data.update({"auth.ssl": False, "auth.server": url, "auth.token": TOKEN, "auth.user_id": USER_ID,
                          "auth.server-id": "srv"})
    return c.jellyfin


def test_requests_match_the_official_client() -> None:
    """The same operations through jellyfin-apiclient-python and through mtx hit the same routes with
    the same parameters and auth fields (both with a user token, so entry removal is allowed)."""
    ops = {}
    with fakemedia.jellyfin(tracks(), TOKEN, USER_ID, api_key=False) as jf:
        api = official_client(jf.url)
        api.items(params={"userId": "{UserId}", "IncludeItemTypes": "Audio", "Recursive": True, "StartIndex": 0,
                          "Limit": 500, "Fields": ",".join(mediaserver.JELLYFIN_FIELDS)})
        api.items(params={"userId": "{UserId}", "IncludeItemTypes": "Playlist", "Recursive": True,
                          "searchTerm": "Mix"})
        pid = api.new_playlist("Mix", ["id0"], media_type="Audio")["Id"]
        api.add_playlist_items(pid, ["id1", "id2"])
        entries = api.get_playlist_items(pid)["Items"]
        api.remove_playlist_items(pid, [e["PlaylistItemId"] for e in entries])
        api.delete_item(pid)
        ops["official"] = [signature(*r) for r in jf.requests]
        assert jf.playlists == {} and not jf.unknown_fields
    with fakemedia.jellyfin(tracks(), TOKEN, USER_ID, api_key=False) as jf:
        c = mediaserver.make_server(None, env(jf.url))
        list(c.tracks())
        first = c.save_playlist("Mix", ["id0", *[f"id{i}" for i in range(1, 3)] * 60])   # 121: 2 batches
        c.save_playlist("Mix", ["id3"])
        ops["mtx"] = [signature(*r) for r in jf.requests]
        assert [p["ids"] for p in jf.playlists.values()] == [["id3"]] and first.created
        assert not jf.unknown_fields
    official = set(ops["official"])
    # One documented addition: userId on entry removal (jellyfin/jellyfin#14154 reads it when the token has no user).
    used = {(m, r, q - {"userid"} if (m, r) == ("DELETE", "/Playlists/{id}/Items") else q, a)
            for m, r, q, a in ops["mtx"]}
    # Every request mtx makes is one the official client makes (DELETE /Items/{id} is the fallback below).
    assert used <= official, used - official
    assert {s[3] for s in used} == {s[3] for s in official}   # Client, Device, DeviceId, Version, Token


def test_api_key_replace_deletes_and_recreates_the_playlist() -> None:
    """Jellyfin 10.11 answers 400 to entry removal with an API key (no user behind it), for the
    official client as for mtx; mtx then deletes the playlist item and creates it again."""
    with fakemedia.jellyfin(tracks(), TOKEN, USER_ID, api_key=True) as jf:
        api = official_client(jf.url)
        pid = api.new_playlist("Ref", ["id0"], media_type="Audio")["Id"]
        entries = api.get_playlist_items(pid)["Items"]
        with pytest.raises(Exception, match="400|Bad Request|BadRequest"):
            api.remove_playlist_items(pid, [e["PlaylistItemId"] for e in entries])
        c = mediaserver.make_server(None, env(jf.url))
        first = c.save_playlist("Mix", ["id0", "id1"])
        second = c.save_playlist("Mix", ["id2", "id3", "id4"])
        assert first.created and not second.created and second.tracks == 3
        assert second.playlist_id != first.playlist_id and first.playlist_id not in jf.playlists
        assert jf.playlists[second.playlist_id]["ids"] == ["id2", "id3", "id4"]
        assert ("DELETE", f"/Items/{first.playlist_id}") in [(m, p) for m, p, _ in jf.requests]


def test_user_token_replaces_in_place() -> None:
    with fakemedia.jellyfin(tracks(), TOKEN, USER_ID, api_key=False) as jf:
        c = mediaserver.make_server(None, env(jf.url))
        first = c.save_playlist("Mix", ["id0", "id1"])
        second = c.save_playlist("Mix", ["id5"])
        assert second.playlist_id == first.playlist_id and jf.playlists[first.playlist_id]["ids"] == ["id5"]


def test_device_id_is_per_install_and_kept(tmp_path) -> None:
    with fakemedia.jellyfin(tracks(2), TOKEN, USER_ID) as jf:
        for root in (tmp_path / "a", tmp_path / "a", tmp_path / "b"):
            list(mediaserver.make_server(None, env(jf.url), state_root=root).tracks())
        assert len(jf.device_ids) == 2 and all(d.startswith("mtx-") for d in jf.device_ids)
    assert (tmp_path / "a" / "mediaserver" / "device_id").read_text().strip() in jf.device_ids


@pytest.mark.parametrize("variable, value, message", [
    ("JELLYFIN_URL", "http://me:secret@127.0.0.1:8096", "JELLYFIN_URL carries user:password@"),
    ("JELLYFIN_URL", "127.0.0.1:8096", "must be an http"),
    ("JELLYFIN_URL", "http://127.0.0.1:99999", "not a valid URL"),
])
def test_bad_server_urls_are_one_line(variable, value, message) -> None:
    e = {**env("http://x"), variable: value}
    with pytest.raises(MtxError, match=message) as err:
        mediaserver.make_server(None, e)
    assert "secret" not in str(err.value)
