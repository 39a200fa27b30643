"""Audio from loopback Jellyfin / Navidrome servers, auth refusals, playlists, and the secrets grep."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import fakemedia
from fakemedia import FakeTrack
from pgserver import build_db
from musiccli import mediaserver
from musiccli.errors import MtxError

TOKEN, USER_ID = "jf-token-Secret-123", "user-42"
ND_USER, ND_PASSWORD, ND_KEY = "alice", "nd-Passw0rd-xyz", "nd-apikey-Secret-456"


def wav_bytes(freq: float) -> bytes:
    buf = io.BytesIO()
    t = np.arange(8000) / 8000
    sf.write(buf, (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 8000, format="WAV")
    return buf.getvalue()


def tracks_for(songs, skip: int | None = None) -> list[FakeTrack]:
    return [FakeTrack(s.server_item_id, s.title, s.author, wav_bytes(200 + 10 * i), duration=1.0)
            for i, s in enumerate(songs) if i != skip]


def grep_secrets(root: Path, text: str, secrets: list[str]) -> None:
    """No secret in any file under the state dir, nor in the command output."""
    for secret in secrets:
        assert secret not in text, secret
        for path in root.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), (secret, path)


@pytest.fixture()
def no_server_env(monkeypatch):
    for k in ("MEDIASERVER_TYPE", "JELLYFIN_URL", "JELLYFIN_USER_ID", "JELLYFIN_TOKEN", "NAVIDROME_URL",
              "NAVIDROME_USER", "NAVIDROME_PASSWORD", "NAVIDROME_API_KEY", "NAVIDROME_AUTH", "DATABASE_URL",
              "MTX_MEDIASERVER_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(mediaserver, "PAGE", 5)


def test_jellyfin_content_ids_paging_range_and_secrets(pg, cli, state_dir, no_server_env, monkeypatch) -> None:
    songs = build_db(pg, "am_jf", "current", 12, seed=3)
    with fakemedia.jellyfin(tracks_for(songs, skip=4), TOKEN, USER_ID) as jf:
        jf.cut_first[songs[2].server_item_id] = 1000   # the first transfer breaks: resumed with Range
        monkeypatch.setenv("MEDIASERVER_TYPE", "jellyfin")
        monkeypatch.setenv("JELLYFIN_URL", jf.url)
        monkeypatch.setenv("JELLYFIN_USER_ID", USER_ID)
        monkeypatch.setenv("JELLYFIN_TOKEN", TOKEN)
        r = cli("download", "audiomuse", "--dsn", pg.dsn("am_jf"), "--json", "--workers", "2")
    assert r.exit_code == 0, r.output   # one song is no longer on the server: complete with failures
    data = json.loads(r.stdout)[0]
    assert (data["ok"], data["failed"], data["status"]) == (11, 1, "complete-with-failures")
    assert f"not on the jellyfin server (id {songs[4].server_item_id})" in data["failures"][0][1]
    starts = [p for p in jf.paths("/Items?") if "IncludeItemTypes=Audio" in p]
    assert [int(p.split("StartIndex=")[1].split("&")[0]) for p in starts] == [0, 5, 10]
    downloads = [(p, h) for m, p, h in jf.requests if p.endswith("/Download")]
    assert all('MediaBrowser' in h["Authorization"] and TOKEN in h["Authorization"] for _, h in downloads)
    resumed = [h for p, h in downloads if songs[2].server_item_id in p]
    assert len(resumed) == 2 and resumed[1]["Range"] == "bytes=1000-"
    root = Path(state_dir) / "datasets" / "audiomuse"
    from musiccli.sources.audiomuse import AudioMuseSource

    recs = {r.extra["server_item_id"]: r for r in AudioMuseSource().records(root)}
    assert Path(recs[songs[2].server_item_id].audio_path).read_bytes() == jf.tracks[songs[2].server_item_id].data
    assert recs[songs[0].server_item_id].id == f"audiomuse:{songs[0].item_id}"   # content id, server id mapped
    grep_secrets(Path(state_dir), r.output, [TOKEN, "audiomusepassword", "db-stored-secret"])


def test_jellyfin_older_server_takes_x_emby_token(pg, state, no_server_env) -> None:
    songs = build_db(pg, "am_jf_old", "legacy", 3)
    with fakemedia.jellyfin(tracks_for(songs), TOKEN, USER_ID, modern=False) as jf:
        client = mediaserver.make_server("jellyfin", {"JELLYFIN_URL": jf.url, "JELLYFIN_USER_ID": USER_ID,
                                                      "JELLYFIN_TOKEN": TOKEN})
        assert [t.id for t in client.tracks()] == [s.server_item_id for s in songs]
        url, headers = client.download(songs[0].server_item_id)
    assert headers == {"X-Emby-Token": TOKEN} and url.endswith(f"/Items/{songs[0].server_item_id}/Download")


def test_wrong_jellyfin_token_is_one_clear_line(pg, cli, state_dir, no_server_env, monkeypatch) -> None:
    songs = build_db(pg, "am_jf_bad", "legacy", 3)
    with fakemedia.jellyfin(tracks_for(songs), TOKEN, USER_ID) as jf:
        monkeypatch.setenv("JELLYFIN_URL", jf.url)
        monkeypatch.setenv("JELLYFIN_USER_ID", USER_ID)
        monkeypatch.setenv("JELLYFIN_TOKEN", "wrong-token-789")
        r = cli("download", "audiomuse", "--dsn", pg.dsn("am_jf_bad"), "--server", "jellyfin")
    assert r.exit_code == 1 and "refused the token (HTTP 401)" in r.output and "JELLYFIN_TOKEN" in r.output
    assert "Traceback" not in r.output
    grep_secrets(Path(state_dir), r.output, ["wrong-token-789", "audiomusepassword"])


@pytest.mark.parametrize("auth", ["apikey", "enc", "token"])
def test_navidrome_auth_modes_and_download(pg, cli, state_dir, no_server_env, monkeypatch, auth) -> None:
    songs = build_db(pg, f"am_nd_{auth}", "legacy", 7, seed=5)
    with fakemedia.navidrome(tracks_for(songs), ND_USER, ND_PASSWORD, ND_KEY) as nd:
        monkeypatch.setenv("NAVIDROME_URL", nd.url)
        if auth == "apikey":
            monkeypatch.setenv("NAVIDROME_API_KEY", ND_KEY)
        else:
            monkeypatch.setenv("NAVIDROME_USER", ND_USER)
            monkeypatch.setenv("NAVIDROME_PASSWORD", ND_PASSWORD)
            monkeypatch.setenv("NAVIDROME_AUTH", auth)
        r = cli("download", "audiomuse", "--dsn", pg.dsn(f"am_nd_{auth}"), "--server", "navidrome", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["ok"] == 7
    listing = nd.paths("/rest/search3.view")
    assert [p.split("songOffset=")[1].split("&")[0] for p in listing] == ["0", "5"]
    first = listing[0]
    assert {"apikey": f"apiKey={ND_KEY}", "enc": "p=enc%3A" + ND_PASSWORD.encode().hex(), "token": "t="}[auth] in first
    assert "f=json" in first and "v=1.16.1" in first and "c=mtx" in first
    streams = nd.paths("/rest/stream.view")
    assert len(streams) == 7
    grep_secrets(Path(state_dir), r.output, [ND_KEY, ND_PASSWORD, ND_PASSWORD.encode().hex(), "audiomusepassword"])


def test_navidrome_wrong_password(no_server_env) -> None:
    with fakemedia.navidrome([], ND_USER, ND_PASSWORD, ND_KEY) as nd:
        client = mediaserver.make_server("navidrome", {"NAVIDROME_URL": nd.url, "NAVIDROME_USER": ND_USER,
                                                       "NAVIDROME_PASSWORD": "nope-nope"})
        with pytest.raises(MtxError, match=r"refused the credentials \(code 40") as e:
            list(client.tracks())
    assert "nope-nope" not in str(e.value) and "nope-nope" not in (e.value.hint or "")


@pytest.mark.parametrize("env,error", [
    ({"MEDIASERVER_TYPE": "plex"}, "unknown media server 'plex'"),
    ({"MEDIASERVER_TYPE": "jellyfin", "JELLYFIN_URL": "http://127.0.0.1:1"}, "JELLYFIN_USER_ID, JELLYFIN_TOKEN not set"),
    ({"MEDIASERVER_TYPE": "navidrome", "NAVIDROME_URL": "http://127.0.0.1:1"}, "NAVIDROME_API_KEY"),
    ({"MEDIASERVER_TYPE": "navidrome", "NAVIDROME_URL": "http://x", "NAVIDROME_API_KEY": "k", "NAVIDROME_AUTH": "x"},
     None),
    ({"MEDIASERVER_TYPE": "navidrome", "NAVIDROME_URL": "http://x", "NAVIDROME_USER": "u",
      "NAVIDROME_PASSWORD": "p", "NAVIDROME_AUTH": "md5"}, "unknown NAVIDROME_AUTH 'md5'"),
])
def test_server_config_refusals(env, error) -> None:
    if error is None:
        assert mediaserver.make_server(None, env).auth == "apikey"   # an API key wins over NAVIDROME_AUTH
        return
    with pytest.raises(MtxError, match=error):
        mediaserver.make_server(None, env)


def test_config_file_and_environment_precedence(tmp_path) -> None:
    cfg = tmp_path / "media.toml"
    cfg.write_text('MEDIASERVER_TYPE = "jellyfin"\nJELLYFIN_URL = "http://file"\nJELLYFIN_TOKEN = "t"\n'
                   'JELLYFIN_USER_ID = "u"\n')
    s = mediaserver.settings({"MTX_MEDIASERVER_CONFIG": str(cfg), "JELLYFIN_URL": "http://env"})
    assert s["JELLYFIN_URL"] == "http://env" and s["JELLYFIN_TOKEN"] == "t"
    assert mediaserver.make_server(None, {"MTX_MEDIASERVER_CONFIG": str(cfg)}).describe() == \
        {"server": "jellyfin", "url": "http://file"}


@pytest.mark.parametrize("kind", ["jellyfin", "navidrome"])
def test_search_playlist_created_then_replaced(make_run, state, cli, no_server_env, monkeypatch, kind) -> None:
    from musiccli.manifest import read_manifest, write_manifest
    from musiccli.search import SearchConfig, search

    run = make_run()
    mpath = state.manifest_path(run["manifest"])
    recs = read_manifest(mpath)
    for i, r in enumerate(recs):
        if i % 4:                      # every fourth track comes from a dataset with no server id
            r.extra["server_item_id"] = f"srv-{r.id}"
    write_manifest(mpath, recs)
    tracks = [FakeTrack(f"srv-{r.id}", r.title or "", r.artist or "", b"x") for r in recs]
    server = fakemedia.jellyfin(tracks, TOKEN, USER_ID) if kind == "jellyfin" else \
        fakemedia.navidrome(tracks, ND_USER, ND_PASSWORD, ND_KEY)
    with server as srv:
        env = {"JELLYFIN_URL": srv.url, "JELLYFIN_USER_ID": USER_ID, "JELLYFIN_TOKEN": TOKEN} if kind == "jellyfin" \
            else {"NAVIDROME_URL": srv.url, "NAVIDROME_API_KEY": ND_KEY}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        res = search(state, SearchConfig(query=recs[1].caption, k=8, playlist="Mtx mix", server=kind))
        want = [f"srv-{h['id']}" for h in res.hits if int(h["id"][1:]) % 4]
        assert res.playlist["created"] and res.playlist["tracks"] == len(want)
        assert len(res.playlist["unmapped"]) == 8 - len(want)
        (pid, pl), = srv.playlists.items()
        assert pl["name"] == "Mtx mix" and pl["ids"] == want and pid == res.playlist["playlist_id"]
        out = cli("search", recs[5].caption, "-k", "3", "--playlist", "Mtx mix", "--server", kind, "--json")
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert data["playlist"]["created"] is False and len(srv.playlists) == 1
        # Jellyfin with an API key (the fixture's default) cannot remove entries: the playlist is recreated.
        (pid2, pl2), = srv.playlists.items()
        assert (pid2 == pid) == (kind == "navidrome") and pid2 == data["playlist"]["playlist_id"]
        assert pl2["ids"] == [f"srv-{h['id']}" for h in data["hits"] if int(h["id"][1:]) % 4]


def test_media_tokens_are_not_forwarded_on_a_redirect_to_another_host(tmp_path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from httpserver import serve
    from musiccli.sources._http import fetch

    (tmp_path / "song.wav").write_bytes(wav_bytes(300))
    with serve(tmp_path) as cdn:
        target = cdn.url.replace("127.0.0.1", "localhost") + "/song.wav"   # another host name

        class Redirect(BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def do_GET(self):  # noqa: N802
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            res = fetch(f"http://127.0.0.1:{httpd.server_address[1]}/Items/x/Download", tmp_path / "out.wav",
                        headers={"X-Emby-Token": TOKEN, "Authorization": f'MediaBrowser Token="{TOKEN}"'})
        finally:
            httpd.shutdown()
            httpd.server_close()
    assert res.path.read_bytes() == (tmp_path / "song.wav").read_bytes()
    sent = cdn.requests_for("/song.wav")
    assert sent and all(TOKEN not in v for h in sent for v in h.values())
