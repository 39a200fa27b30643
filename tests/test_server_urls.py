"""Server URLs with user:password@ and `--playlist` without a server: one clear line, no secret shown."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from musiccli import mediaserver
from musiccli.errors import MtxError


@pytest.fixture()
def basic_auth_llm():
    """An OpenAI-compatible endpoint behind basic auth (a reverse proxy in front of Ollama)."""
    seen: list[str | None] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):  # noqa: ANN002
            pass

        def do_POST(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ok = self.headers.get("Authorization") == "Basic " + base64.b64encode(b"me:s3cret").decode()
            body = json.dumps({"choices": [{"message": {"content": "A calm piano piece."}}], "usage": {}}
                              if ok else {"error": "unauthorized"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_openai_server_url_with_credentials_uses_basic_auth(basic_auth_llm, monkeypatch) -> None:
    from musiccli.llm_captions import ChatClient, LLMConfig

    host, seen = basic_auth_llm
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_SERVER_URL", f"http://me:s3cret@{host}/v1")
    client = ChatClient(LLMConfig())
    assert "s3cret" not in client.url and client.url == f"http://{host}/v1/chat/completions"
    text, _ = client.complete("describe")
    assert text == "A calm piano piece." and seen and seen[-1].startswith("Basic ")
    assert "s3cret" not in json.dumps(LLMConfig().identity())


def test_openai_server_url_credentials_and_api_key_conflict(monkeypatch) -> None:
    from musiccli.llm_captions import ChatClient, LLMConfig

    monkeypatch.setenv("OPENAI_SERVER_URL", "http://me:s3cret@127.0.0.1:1/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    with pytest.raises(MtxError, match="carries user:password@") as e:
        ChatClient(LLMConfig())
    assert "s3cret" not in str(e.value)


def test_navidrome_url_credentials_are_the_login() -> None:
    c = mediaserver.make_server(None, {"MEDIASERVER_TYPE": "navidrome",
                                       "NAVIDROME_URL": "https://al%40ce:p%3Ass@music.example:4533/nd/"})
    assert (c.url, c.user, c._password) == ("https://music.example:4533/nd", "al@ce", "p:ss")
    assert "p:ss" not in json.dumps(c.describe())


def test_playlist_without_a_server_says_how_to_configure_one(make_run, cli, monkeypatch) -> None:
    for k in ("MEDIASERVER_TYPE", "MTX_MEDIASERVER_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    run = make_run(n=6)
    r = cli("search", run["records"][0].caption, "--playlist", "Mix")
    assert r.exit_code == 1
    assert "local track id" not in r.output and "none is configured" in r.output
    assert "--server jellyfin" in r.output and "--m3u" in r.output
