"""`mtx serve`: search over HTTP, for a player or a browser beside the library.

A small local API plus one page:

- ``GET /``: the search page (type a query, see the hits, download them as M3U, or save them
  as a playlist on the configured media server);
- ``GET /api/search?q=...&like=...&k=...&max_per_artist=...``: the hits as JSON (what
  ``mtx search --json`` prints);
- ``GET /api/m3u?q=...``: the hits as an extended M3U (``paths=absolute|relative|server``,
  ``root=``);
- ``POST /api/playlist`` with JSON ``{"q": ..., "like": ..., "k": ..., "name": ...}``: the hits
  saved as a media-server playlist (as ``mtx search --playlist``);
- ``GET /rest/getSonicSimilarTracks(.view)?id=...&count=...``: the OpenSubsonic sonic-similarity
  call, answered from the index (``id`` is a track id of the library, or a media-server id that
  the library manifest maps), so players that speak it can ask mtx for similar tracks.

It binds 127.0.0.1 by default. Bound to any other address it requires a token
(``Authorization: Bearer <token>`` or ``?token=``), generated when none is given. Search work
runs one request at a time: the query model is loaded once and shared.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
import tempfile
import threading
import urllib.parse
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .errors import MtxError
from .state import StateDir

log = logging.getLogger(__name__)

MAX_K = 500
MAX_BODY = 64 * 1024


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None            # required (generated when None) unless bound to loopback
    run: str | None = None
    index: str | None = None
    backend: str = "auto"
    uri: str | None = None
    server: str | None = None           # media server for /api/playlist (default: MEDIASERVER_TYPE)
    search_defaults: dict[str, Any] = field(default_factory=dict)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SearchService:
    """The search calls behind the routes; one at a time (the models are not thread-safe)."""

    def __init__(self, state: StateDir, cfg: ServeConfig) -> None:
        self.state, self.cfg = state, cfg
        self._lock = threading.Lock()

    def _config(self, params: dict[str, Any]):
        from .search import SearchConfig

        q = (params.get("q") or "").strip() or None
        like = (params.get("like") or "").strip() or None
        if q is None and like is None:
            raise MtxError("nothing to search for", hint="pass q=<text> and/or like=<track id>")
        try:
            k = int(params.get("k") or 10)
            mpa = int(params["max_per_artist"]) if params.get("max_per_artist") else None
            mix = float(params.get("mix") or 0.5)
        except ValueError:
            raise MtxError("k, max_per_artist and mix must be numbers", hint="e.g. k=10") from None
        if not 1 <= k <= MAX_K:
            raise MtxError(f"k must be between 1 and {MAX_K}", hint="e.g. k=10")
        return SearchConfig(query=q, like=like, k=k, mix=mix, max_per_artist=mpa, run=self.cfg.run,
                            index=self.cfg.index, backend=self.cfg.backend, uri=self.cfg.uri,
                            **self.cfg.search_defaults)

    def search(self, params: dict[str, Any]) -> dict[str, Any]:
        from .search import search

        cfg = self._config(params)
        with self._lock:
            res = search(self.state, cfg)
        return asdict(res)

    def m3u(self, params: dict[str, Any]) -> str:
        from .playlists import write_m3u

        hits = self.search(params)["hits"]
        with tempfile.TemporaryDirectory() as d:
            out = write_m3u(Path(d) / "hits.m3u", hits, paths=params.get("paths") or "absolute",
                            root=params.get("root") or None)
            return out.read_text(encoding="utf-8")

    def playlist(self, body: dict[str, Any]) -> dict[str, Any]:
        from dataclasses import replace

        from .search import search

        name = str(body.get("name") or "").strip()
        if not name:
            raise MtxError("empty playlist name", hint='send {"q": "...", "name": "Rainy day"}')
        cfg = replace(self._config({k: body.get(k) for k in ("q", "like", "k", "max_per_artist", "mix")}),
                      playlist=name, server=self.cfg.server)
        with self._lock:
            res = search(self.state, cfg)
        return {"playlist": res.playlist, "hits": len(res.hits)}

    def similar(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """getSonicSimilarTracks: the library's tracks that sound like ``id`` (an mtx id or a media-server
        id), the track itself left out; each hit's ``server_id`` is the media server's id where known."""
        tid = (params.get("id") or "").strip()
        if not tid:
            raise MtxError("missing id", hint="getSonicSimilarTracks?id=<track id>")
        try:
            count = max(1, min(int(params.get("count") or 10), MAX_K - 1))
        except ValueError:
            raise MtxError("count must be a number", hint="e.g. count=10") from None
        to_server = self._server_ids()
        from_server = {v: k for k, v in to_server.items()}
        seed = from_server.get(tid, tid)
        hits = [h for h in self.search({"like": seed, "k": str(count + 1)})["hits"] if h["id"] != seed][:count]
        return [{**h, "server_id": to_server.get(h["id"], h["id"])} for h in hits]

    def _server_ids(self) -> dict[str, str]:
        """mtx id -> media-server id, from the library manifests of the indexes."""
        from .manifest import read_manifest
        from .state import read_json

        out: dict[str, str] = {}
        for meta_path in sorted((self.state.root / "index").glob("*/meta.json")):
            mpath = Path(read_json(meta_path).get("manifest_path") or "")
            if mpath.is_file():
                out.update({r.id: str(r.extra["server_item_id"]) for r in read_manifest(mpath)
                            if r.extra.get("server_item_id")})
        return out


def _subsonic(payload: dict[str, Any], ok: bool = True) -> dict[str, Any]:
    return {"subsonic-response": {"status": "ok" if ok else "failed", "version": "1.16.1", "type": "mtx",
                                  "openSubsonic": True, **payload}}


def make_handler(service: SearchService, token: str | None, page: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "mtx-serve"

        def log_message(self, fmt: str, *args: Any) -> None:  # noqa: ANN401
            log.debug("serve: " + fmt, *args)

        # ---------------------------------------------------------------- plumbing
        def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def _error(self, code: int, message: str, hint: str | None = None) -> None:
            self._json(code, {"error": message, "hint": hint})

        def _params(self) -> dict[str, str]:
            q = urllib.parse.urlsplit(self.path).query
            return {k: v[-1] for k, v in urllib.parse.parse_qs(q, keep_blank_values=True).items()}

        def _authorised(self, params: dict[str, str]) -> bool:
            if token is None:
                return True
            got = self.headers.get("Authorization", "")
            got = got[7:] if got.startswith("Bearer ") else params.get("token", "")
            return hmac.compare_digest(got.encode(), token.encode())

        def _route(self, method: str) -> None:
            path = urllib.parse.urlsplit(self.path).path
            params = self._params()
            if path == "/" and method == "GET":
                return self._send(200, page.encode(), "text/html; charset=utf-8")
            if not self._authorised(params):
                return self._error(401, "a token is required", "send Authorization: Bearer <token> (mtx serve "
                                                               "printed it) or ?token=")
            try:
                if path == "/api/search" and method == "GET":
                    return self._json(200, service.search(params))
                if path == "/api/m3u" and method == "GET":
                    return self._send(200, service.m3u(params).encode(), "audio/x-mpegurl; charset=utf-8",
                                      {"Content-Disposition": 'attachment; filename="mtx.m3u"'})
                if path == "/api/playlist" and method == "POST":
                    n = int(self.headers.get("Content-Length") or 0)
                    if n > MAX_BODY:
                        return self._error(413, "request body too large")
                    try:
                        body = json.loads(self.rfile.read(n) or b"{}")
                    except json.JSONDecodeError:
                        return self._error(400, "the body is not JSON", 'send {"q": "...", "name": "..."}')
                    return self._json(200, service.playlist(body if isinstance(body, dict) else {}))
                if path.rstrip("/").removesuffix(".view") == "/rest/getSonicSimilarTracks":
                    hits = service.similar(params)
                    songs = [{"id": h["server_id"], "title": h.get("title"), "artist": h.get("artist"),
                              "duration": int(h["duration"]) if h.get("duration") else None,
                              "isDir": False, "similarity": round(h["score"], 6)} for h in hits]
                    return self._json(200, _subsonic({"sonicMatch": [{"entry": s, "similarity": s["similarity"]}
                                                                     for s in songs]}))
            except MtxError as e:
                if path.startswith("/rest/"):
                    return self._json(200, _subsonic({"error": {"code": 70, "message": e.message}}, ok=False))
                return self._error(400, e.message, e.hint)
            except Exception as e:  # noqa: BLE001 - one request fails, the server keeps serving
                log.exception("serve: %s %s failed", method, path)
                return self._error(500, f"internal error: {type(e).__name__}", "see mtx serve's log (--debug)")
            return self._error(404, f"no route {method} {path}", "GET /, /api/search, /api/m3u; POST /api/playlist")

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

    return Handler


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mtx search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
 form{display:flex;gap:.5rem;flex-wrap:wrap} input[type=text]{flex:1;min-width:16rem;padding:.5rem;font-size:1rem}
 button,a.button{padding:.5rem 1rem;font-size:1rem} table{border-collapse:collapse;width:100%;margin-top:1rem}
 td,th{border-bottom:1px solid #ddd;padding:.35rem;text-align:left} .score{color:#777;font-variant-numeric:tabular-nums}
 #status{color:#777;margin-top:.5rem}
</style></head><body>
<h1>mtx search</h1>
<form id="f"><input type="text" id="q" name="q" placeholder="dark ambient drone with choir" autofocus>
<input type="number" id="k" name="k" value="10" min="1" max="500" style="width:5rem">
<button type="submit">Search</button></form>
<form id="p" style="margin-top:.5rem"><input type="text" id="name" placeholder="playlist name">
<button type="submit">Save as server playlist</button><a class="button" id="m3u" href="#">Download M3U</a></form>
<div id="status"></div>
<table><thead><tr><th>#</th><th>score</th><th>track</th><th>tags</th></tr></thead><tbody id="hits"></tbody></table>
<script>
const token = new URLSearchParams(location.search).get("token");
const auth = token ? {"Authorization": "Bearer " + token} : {};
const $ = (id) => document.getElementById(id);
function params(){ const p = new URLSearchParams({q: $("q").value, k: $("k").value}); if (token) p.set("token", token); return p; }
function cell(tr, text, cls){ const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); }
async function run(){
  $("status").textContent = "searching...";
  const r = await fetch("/api/search?" + params(), {headers: auth});
  const d = await r.json();
  if (!r.ok){ $("status").textContent = d.error + (d.hint ? " (" + d.hint + ")" : ""); return; }
  const body = $("hits"); body.textContent = "";
  for (const h of d.hits){ const tr = document.createElement("tr");
    cell(tr, h.rank); cell(tr, h.score.toFixed(3), "score");
    cell(tr, [h.artist, h.title].filter(Boolean).join(" - ") || h.id); cell(tr, (h.tags || []).slice(0, 4).join(", "));
    body.appendChild(tr); }
  $("status").textContent = d.hits.length + " result(s), index " + d.index + ", " + d.search_ms.toFixed(1) + " ms";
  $("m3u").href = "/api/m3u?" + params();
}
$("f").addEventListener("submit", (e) => { e.preventDefault(); run(); });
$("p").addEventListener("submit", async (e) => { e.preventDefault();
  const r = await fetch("/api/playlist", {method: "POST", headers: {...auth, "Content-Type": "application/json"},
    body: JSON.stringify({q: $("q").value, k: $("k").value, name: $("name").value})});
  const d = await r.json();
  $("status").textContent = r.ok ? ("playlist " + d.playlist.name + " saved: " + d.playlist.tracks + " track(s)")
                                 : (d.error + (d.hint ? " (" + d.hint + ")" : "")); });
const first = new URLSearchParams(location.search).get("q");
if (first){ $("q").value = first; run(); }
</script></body></html>
"""


def required_token(host: str, token: str | None) -> str | None:
    """The token clients must send: the given one, or a new one when bound beyond loopback."""
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24)
    return token


def make_http_server(state: StateDir, cfg: ServeConfig) -> tuple[ThreadingHTTPServer, str | None]:
    """The bound server and the token it requires (None on loopback without one)."""
    token = required_token(cfg.host, cfg.token)
    try:
        httpd = ThreadingHTTPServer((cfg.host, cfg.port), make_handler(SearchService(state, cfg), token, PAGE))
    except OSError as e:
        raise MtxError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}",
                       hint="pick another --port, or stop what uses it") from None
    httpd.daemon_threads = True
    return httpd, token


def run_serve(state: StateDir, cfg: ServeConfig, on_ready=None) -> None:  # noqa: ANN001
    """Serve until interrupted; ``on_ready(url, token)`` is called once listening (the CLI prints it)."""
    httpd, token = make_http_server(state, cfg)
    host, port = httpd.server_address[:2]
    url = f"http://{host if ':' not in str(host) else f'[{host}]'}:{port}/"
    log.info("serving search on %s%s", url, " (token required)" if token else "")
    if on_ready is not None:
        on_ready(url, token)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()


__all__ = ["PAGE", "ServeConfig", "is_loopback", "make_http_server", "required_token", "run_serve"]
