"""mtx against a real Subsonic server: supysonic 0.7.9 (PyPI), in its own venv, on 127.0.0.1.

supysonic speaks Subsonic API 1.12.0: no token auth (it answers error 10, a required
parameter is missing), no OpenSubsonic extensions (so no apiKey and no formPost), and it
transcodes when a client has a bitrate or format preference, answering an error body with
HTTP 200 when it has no transcoder. That is exactly what broke `mtx download audiomuse`.
"""

from __future__ import annotations

import logging

import pytest

from musiccli import mediaserver
from musiccli.errors import MtxError
from musiccli.sources._http import fetch
from servers.supysonic import TITLES, supysonic

ALICE, ALICE_PW = "alice", "alice-Pw-1;x"
BOB, BOB_PW = "bob", "bob-pw"


@pytest.fixture(scope="module")
def supy(tmp_path_factory):
    with supysonic(tmp_path_factory.mktemp("supysonic"), {ALICE: ALICE_PW, BOB: BOB_PW}, admins=(ALICE,)) as s:
        yield s


def client(supy, **env) -> mediaserver.Navidrome:
    base = {"MEDIASERVER_TYPE": "navidrome", "NAVIDROME_URL": supy.url, "NAVIDROME_USER": ALICE,
            "NAVIDROME_PASSWORD": ALICE_PW}
    base.update(env)
    return mediaserver.make_server(None, {k: v for k, v in base.items() if v is not None})


def _reset_prefs(supy) -> None:
    supy.sql("UPDATE client_prefs SET format = NULL, bitrate = NULL")


# --------------------------------------------------------------------------- auth
def test_token_auth_falls_back_to_enc_and_says_so(supy, caplog) -> None:
    c = client(supy)
    assert c.auth == "token"
    with caplog.at_level(logging.WARNING, logger="musiccli.mediaserver"):
        tracks = list(c.tracks())
    assert c.auth == "enc"
    assert any("does not take token authentication" in r.getMessage() and "error 10" in r.getMessage()
               for r in caplog.records)
    assert sorted(t.title for t in tracks) == sorted(TITLES)
    assert {t.suffix for t in tracks} == {"flac"} and all(t.duration for t in tracks)
    assert {t.path for t in tracks} == {str(p.relative_to(supy.music)) for p in supy.files}


@pytest.mark.parametrize("auth", ["enc", "plain"])
def test_password_modes(supy, auth) -> None:
    c = client(supy, NAVIDROME_AUTH=auth)
    assert len(list(c.tracks())) == len(TITLES) and c.auth == auth


def test_user_and_password_in_the_url(supy) -> None:
    host = supy.url.removeprefix("http://")
    c = client(supy, NAVIDROME_URL=f"http://{ALICE}:{ALICE_PW.replace(';', '%3B')}@{host}", NAVIDROME_USER=None,
               NAVIDROME_PASSWORD=None)
    assert c.url == supy.url and len(list(c.tracks())) == len(TITLES)


def test_wrong_password_is_one_line(supy) -> None:
    with pytest.raises(MtxError, match="refused the credentials .code 40") as e:
        list(client(supy, NAVIDROME_PASSWORD="nope", NAVIDROME_AUTH="enc").tracks())
    assert "nope" not in str(e.value) and e.value.hint == "check NAVIDROME_USER / NAVIDROME_PASSWORD"


def test_api_key_needs_the_opensubsonic_extension(supy) -> None:
    with pytest.raises(MtxError, match="does not accept API keys") as e:
        list(client(supy, NAVIDROME_API_KEY="k-123", NAVIDROME_USER=None, NAVIDROME_PASSWORD=None).tracks())
    assert "NAVIDROME_USER" in e.value.hint


# --------------------------------------------------------------------------- downloads
def test_download_resumes_with_range(supy, tmp_path) -> None:
    _reset_prefs(supy)
    c = client(supy, NAVIDROME_AUTH="enc")
    track = next(t for t in c.tracks() if t.title == TITLES[1])
    original = (supy.music / track.path).read_bytes()
    url, headers = c.download(track.id)
    assert "format=raw" in url
    dest = tmp_path / "x.flac"
    (tmp_path / ".tmp-x.flac.part").write_bytes(original[:1000])   # an interrupted earlier transfer
    res = fetch(url, dest, headers=headers, accept=c.check_download)
    assert res.resumed and dest.read_bytes() == original


def test_format_raw_beats_a_transcoding_preference(supy, tmp_path) -> None:
    c = client(supy, NAVIDROME_AUTH="enc")
    tracks = list(c.tracks())   # creates the server's client_prefs row for "mtx"
    supy.sql("UPDATE client_prefs SET format = 'ogg' WHERE client_name = 'mtx'")
    try:
        for t in tracks[:3]:
            url, headers = c.download(t.id)
            got = fetch(url, tmp_path / f"{t.id}.flac", headers=headers, accept=c.check_download)
            assert got.path.read_bytes() == (supy.music / t.path).read_bytes()
    finally:
        _reset_prefs(supy)


def test_an_error_body_is_refused_per_item_and_never_saved(supy, tmp_path) -> None:
    """A bitrate cap below a file's bitrate makes supysonic transcode even with format=raw; with no
    transcoder it answers a JSON error with HTTP 200. Those items fail; the others download."""
    c = client(supy, NAVIDROME_AUTH="enc")
    tracks = list(c.tracks())
    supy.sql("UPDATE client_prefs SET bitrate = 100 WHERE client_name = 'mtx'")
    ok, refused = [], []
    try:
        for t in tracks:
            url, headers = c.download(t.id)
            dest = tmp_path / f"{t.id}.flac"
            try:
                fetch(url, dest, headers=headers, accept=c.check_download)
                ok.append(t)
                assert dest.read_bytes() == (supy.music / t.path).read_bytes()
            except mediaserver.NotAudio as e:
                refused.append(t)
                assert "No way to transcode" in e.reason and not dest.exists()
                assert not (tmp_path / f".tmp-{dest.name}.part").exists()
    finally:
        _reset_prefs(supy)
    # Even files (8 kHz mono tones) are under 100 kbps, odd ones (44.1 kHz stereo, noisy) far over.
    rates = dict(supy.sql("SELECT title, bitrate FROM track"))
    assert {t.title for t in ok} == {k for k, v in rates.items() if v <= 100} == set(TITLES[0::2])
    assert {t.title for t in refused} == set(TITLES[1::2])


# --------------------------------------------------------------------------- playlists
def _playlist(supy, owner: str, name: str) -> list[str]:
    rows = supy.sql("SELECT p.tracks FROM playlist p JOIN user u ON p.user_id = u.id WHERE u.name = ? AND p.name = ?",
                    (owner, name))
    assert len(rows) == 1, rows
    return [x for x in (rows[0][0] or "").split(",") if x]


def _norm(ids) -> list[str]:
    return [i.replace("-", "") for i in ids]


def test_playlist_created_replaced_and_large(supy) -> None:
    c = client(supy, NAVIDROME_AUTH="enc")
    ids = [t.id for t in c.tracks()]
    first = c.save_playlist("mtx: rain", ids[:5])
    assert first.created and first.tracks == 5
    assert _norm(_playlist(supy, ALICE, "mtx: rain")) == _norm(ids[:5])
    again = c.save_playlist("mtx: rain", ids[5:8])
    assert not again.created and again.playlist_id == first.playlist_id
    assert _norm(_playlist(supy, ALICE, "mtx: rain")) == _norm(ids[5:8])
    big = (ids * 50)[:520]   # no formPost on this server: createPlaylist + batched updatePlaylist
    res = client(supy, NAVIDROME_AUTH="enc").save_playlist("mtx: big", big)
    assert res.created and res.tracks == 520
    assert _norm(_playlist(supy, ALICE, "mtx: big")) == _norm(big)


def test_another_users_public_playlist_is_left_alone(supy) -> None:
    """alice is an admin: supysonic would let her overwrite bob's playlist; mtx looks up only hers."""
    ids = [t.id for t in client(supy, NAVIDROME_AUTH="enc").tracks()]
    bob = client(supy, NAVIDROME_USER=BOB, NAVIDROME_PASSWORD=BOB_PW, NAVIDROME_AUTH="enc")
    bob.save_playlist("Evening", ids[:2])
    bob_id = supy.sql("SELECT p.id FROM playlist p JOIN user u ON p.user_id = u.id WHERE u.name = ?", (BOB,))[0][0]
    supy.sql("UPDATE playlist SET public = 1 WHERE id = ?", (bob_id,))
    alice = client(supy, NAVIDROME_AUTH="enc")
    res = alice.save_playlist("Evening", ids[3:6])
    assert res.created
    assert _norm(_playlist(supy, BOB, "Evening")) == _norm(ids[:2])
    assert _norm(_playlist(supy, ALICE, "Evening")) == _norm(ids[3:6])


def test_search_playlist_end_to_end_on_supysonic(supy, make_run, state, cli, monkeypatch) -> None:
    """`mtx search --playlist` maps hits to the server's ids through the library manifest."""
    from musiccli.manifest import read_manifest, write_manifest

    run = make_run(n=12)
    ids = [t.id for t in client(supy, NAVIDROME_AUTH="enc").tracks()]
    recs = read_manifest(state.manifest_path(run["manifest"]))
    for r, sid in zip(recs, ids):
        r.extra["server_item_id"] = sid
    write_manifest(state.manifest_path(run["manifest"]), recs)
    for k, v in {"MEDIASERVER_TYPE": "navidrome", "NAVIDROME_URL": supy.url, "NAVIDROME_USER": ALICE,
                 "NAVIDROME_PASSWORD": ALICE_PW, "MTX_MEDIASERVER_CONFIG": None, "NAVIDROME_API_KEY": None,
                 "NAVIDROME_AUTH": None}.items():
        monkeypatch.setenv(k, v) if v is not None else monkeypatch.delenv(k, raising=False)
    r = cli("search", recs[0].caption, "-k", "4", "--playlist", "mtx: e2e", "--json")
    assert r.exit_code == 0, r.output
    assert len(_playlist(supy, ALICE, "mtx: e2e")) == 4
    assert ALICE_PW not in r.output
