"""`mtx serve`: the API through a real HTTP client, the page in headless Chromium (with a screenshot)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

import fakemedia
from musiccli.search import SearchConfig, search
from musiccli.serve import ServeConfig, is_loopback, make_http_server, required_token


@pytest.fixture()
def served(make_run, state):
    run = make_run(n=12)

    def start(**kw):
        httpd, token = make_http_server(state, ServeConfig(port=0, **kw))
        t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", token

    started: list = []
    yield run, start
    for h in started:
        h.shutdown()
        h.server_close()


def get(url: str, headers: dict[str, str] | None = None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=120) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def test_api_search_m3u_and_similar(served, state) -> None:
    run, start = served
    base, token = start()
    assert token is None
    q = run["records"][2].caption
    status, ctype, body = get(f"{base}/api/search?" + urllib.parse.urlencode({"q": q, "k": 5}))
    assert status == 200 and ctype.startswith("application/json")
    want = search(state, SearchConfig(query=q, k=5))
    assert [h["id"] for h in json.loads(body)["hits"]] == [h["id"] for h in want.hits]
    _, ctype, m3u = get(f"{base}/api/m3u?" + urllib.parse.urlencode({"q": q, "k": 3}))
    assert ctype.startswith("audio/x-mpegurl") and m3u.decode().count("#EXTINF") == 3
    _, _, sim = get(f"{base}/rest/getSonicSimilarTracks.view?id={run['records'][4].id}&count=3")
    matches = json.loads(sim)["subsonic-response"]["sonicMatch"]
    assert len(matches) == 3 and matches[0]["entry"]["id"] != run["records"][4].id
    with pytest.raises(urllib.error.HTTPError) as e:
        get(f"{base}/api/search?k=5")
    assert e.value.code == 400 and json.loads(e.value.read())["error"] == "nothing to search for"


def test_token_required_when_set_and_beyond_loopback(served) -> None:
    _, start = served
    base, token = start(token="s3cret-token")
    with pytest.raises(urllib.error.HTTPError) as e:
        get(f"{base}/api/search?q=rock")
    assert e.value.code == 401
    assert get(f"{base}/api/search?q=rock", {"Authorization": "Bearer s3cret-token"})[0] == 200
    assert get(f"{base}/api/search?q=rock&token=s3cret-token")[0] == 200
    assert get(f"{base}/")[0] == 200   # the page itself carries no data
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("")
    assert required_token("127.0.0.1", None) is None and len(required_token("0.0.0.0", None)) >= 24
    assert required_token("0.0.0.0", "mine") == "mine"


def test_save_playlist_through_the_api(served, state, monkeypatch) -> None:
    from musiccli.manifest import read_manifest, write_manifest

    run, start = served
    recs = read_manifest(state.manifest_path(run["manifest"]))
    for r in recs:
        r.extra["server_item_id"] = f"srv-{r.id}"
    write_manifest(state.manifest_path(run["manifest"]), recs)
    tracks = [fakemedia.FakeTrack(f"srv-{r.id}", r.title, r.artist, b"x") for r in recs]
    with fakemedia.navidrome(tracks, "alice", "pw", "key") as nd:
        for k, v in {"MEDIASERVER_TYPE": "navidrome", "NAVIDROME_URL": nd.url, "NAVIDROME_USER": "alice",
                     "NAVIDROME_PASSWORD": "pw"}.items():
            monkeypatch.setenv(k, v)
        base, _ = start()
        req = urllib.request.Request(f"{base}/api/playlist", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"q": recs[0].caption, "k": 4, "name": "From the page"}).encode())
        with urllib.request.urlopen(req, timeout=120) as r:
            out = json.loads(r.read())
        assert out["playlist"]["tracks"] == 4
        (pl,) = nd.playlists.values()
        assert pl["name"] == "From the page" and len(pl["ids"]) == 4


def test_page_in_headless_chromium(served, tmp_path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    run, start = served
    base, _ = start()
    url = f"{base}/?" + urllib.parse.urlencode({"q": run["records"][0].caption})
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--user-data-dir=" + str(tmp_path / "profile"), "--virtual-time-budget=20000",
             "--window-size=1000,800"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert "result(s), index run1--lib" in dom.stdout, dom.stderr[-2000:]
    assert dom.stdout.count("<tr>") >= 10   # header + the hits the page's script rendered
    shot = tmp_path / "serve-page.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    print(f"screenshot: {shot}")
