"""Loopback Jellyfin and Navidrome (OpenSubsonic) servers with their real response shapes and auth checks.

Only the endpoints mtx calls are implemented. Jellyfin accepts ``Authorization: MediaBrowser
Token="..."`` (``modern=True``) or only ``X-Emby-Token`` (``modern=False``, an older server).
Navidrome accepts ``apiKey``, ``u`` + ``p=enc:<hex>`` and ``u`` + ``t=md5(password+salt)`` + ``s``.
Both serve track bytes with Range support and keep playlists in memory.

They refuse what the real servers refuse:
- Jellyfin 10.9-10.11 with an API key (``api_key=True``, no user behind the token): removing
  playlist entries (``DELETE /Playlists/{id}/Items``) answers 400 "Guid can't be empty"
  (jellyfin/jellyfin#13476, #14910, #15600); deleting the playlist item itself is allowed.
  ``Fields=`` values that are not ``ItemFields`` are recorded in ``unknown_fields`` (the
  server ignores them), the ``DeviceId`` of every request in ``device_ids``.
- Navidrome behind a stock nginx: a request line over 8 KiB answers HTTP 414. Another user's
  public playlist is listed (with its ``owner``) and, for an admin, could be overwritten.
  ``token_auth=False`` answers token auth with error 41 (as for LDAP users).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeTrack:
    id: str
    title: str
    artist: str
    data: bytes
    suffix: str = "wav"
    duration: float = 2.0


@dataclass
class FakeServer:
    url: str
    tracks: dict[str, FakeTrack]
    playlists: dict[str, dict] = field(default_factory=dict)   # id -> {"name", "ids"}
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path+query, headers
    cut_first: dict[str, int] = field(default_factory=dict)   # track id -> bytes to send before hanging up
    unknown_fields: set[str] = field(default_factory=set)     # Jellyfin Fields= values that are not ItemFields
    device_ids: set[str] = field(default_factory=set)         # Jellyfin DeviceId of every request
    errors_for: set[str] = field(default_factory=set)          # Subsonic: stream answers an error body (HTTP 200)

    def paths(self, prefix: str) -> list[str]:
        return [p for _, p, _ in self.requests if p.startswith(prefix)]


def _send_bytes(h: BaseHTTPRequestHandler, data: bytes, server: FakeServer, track_id: str) -> None:
    start, end, status = 0, len(data) - 1, 200
    rng = h.headers.get("Range")
    if rng:
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        if not m or int(m.group(1)) >= len(data):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start, status = int(m.group(1)), 206
        end = int(m.group(2)) if m.group(2) else end
    body = data[start:end + 1]
    h.send_response(status)
    h.send_header("Content-Type", "audio/wav")
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Accept-Ranges", "bytes")
    if status == 206:
        h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
    h.end_headers()
    cut = server.cut_first.pop(track_id, None)
    if cut is not None and cut < len(body):
        h.wfile.write(body[:cut])
        h.wfile.flush()
        h.close_connection = True
        return
    h.wfile.write(body)


def _json(h: BaseHTTPRequestHandler, code: int, obj) -> None:
    body = json.dumps(obj).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@contextmanager
def _serve(handler_factory, tracks: list[FakeTrack]) -> Iterator[FakeServer]:
    state = FakeServer(url="", tracks={t.id: t for t in tracks})
    lock = threading.Lock()
    Handler = handler_factory(state, lock)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


# Jellyfin 10.10/10.11 ItemFields (MediaBrowser.Model.Querying.ItemFields).
ITEM_FIELDS = frozenset(
    "AirTime CanDelete CanDownload ChannelInfo Chapters Trickplay ChildCount CumulativeRunTimeTicks CustomRating "
    "DateCreated DateLastMediaAdded DisplayPreferencesId Etag ExternalUrls Genres ItemCounts MediaSourceCount "
    "MediaSources OriginalTitle Overview ParentId Path People PlayAccess ProductionLocations ProviderIds "
    "PrimaryImageAspectRatio RecursiveItemCount Settings SeriesStudio SortName SpecialEpisodeNumbers Studios "
    "Taglines Tags RemoteTrailers MediaStreams SeasonUserData DateLastRefreshed DateLastSaved RefreshState "
    "ChannelImage EnableMediaSourceDisplay Width Height ExtraIds LocalTrailerCount IsHD SpecialFeatureCount".split())


@contextmanager
def jellyfin(tracks: list[FakeTrack], token: str, user_id: str, modern: bool = True,
             api_key: bool = True) -> Iterator[FakeServer]:
    def factory(state: FakeServer, lock: threading.Lock):
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # noqa: ANN002
                pass

            def _authorised(self) -> bool:
                if modern:
                    m = re.search(r'Token="([^"]*)"', self.headers.get("Authorization", ""))
                    if m and m.group(1) == token:
                        return True
                return self.headers.get("X-Emby-Token") == token

            def _handle(self, method: str) -> None:
                with lock:
                    state.requests.append((method, self.path, dict(self.headers.items())))
                    m = re.search(r'DeviceId="([^"]*)"', self.headers.get("Authorization", ""))
                    if m:
                        state.device_ids.add(m.group(1))
                if not self._authorised():
                    _json(self, 401, {"error": "Unauthorized"})
                    return
                u = urllib.parse.urlsplit(self.path)
                # ASP.NET binds query names and JSON properties case-insensitively.
                q = {k.lower(): v[-1] for k, v in urllib.parse.parse_qs(u.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = json.loads(self.rfile.read(length)) if length else None
                body = {k.lower(): v for k, v in raw.items()} if isinstance(raw, dict) else raw
                parts = u.path.strip("/").split("/")
                if method == "GET" and u.path == f"/Users/{user_id}":
                    return _json(self, 200, {"Id": user_id, "Name": "me"})
                if method == "GET" and u.path == "/Items":
                    if q.get("userid") != user_id:
                        return _json(self, 400, {"error": "userId"})
                    if q.get("includeitemtypes") == "Playlist":
                        items = [{"Id": pid, "Name": p["name"], "Type": "Playlist"} for pid, p in state.playlists.items()
                                 if q.get("searchterm", "").lower() in p["name"].lower()]
                        return _json(self, 200, {"Items": items, "TotalRecordCount": len(items)})
                    state.unknown_fields.update(f for f in q.get("fields", "").split(",") if f and f not in ITEM_FIELDS)
                    start, limit = int(q.get("startindex", 0)), int(q.get("limit", 100))
                    all_items = [{"Id": t.id, "Name": t.title, "Album": "A", "AlbumArtist": t.artist,
                                  "Artists": [t.artist], "Path": f"/music/{t.id}.{t.suffix}", "Container": t.suffix,
                                  "RunTimeTicks": int(t.duration * 1e7), "Type": "Audio"}
                                 for t in state.tracks.values()]
                    return _json(self, 200, {"Items": all_items[start:start + limit],
                                             "TotalRecordCount": len(all_items), "StartIndex": start})
                if method == "GET" and len(parts) == 3 and parts[0] == "Items" and parts[2] == "Download":
                    t = state.tracks.get(parts[1])
                    if t is None:
                        return _json(self, 404, {"error": "not found"})
                    return _send_bytes(self, t.data, state, t.id)
                if method == "POST" and u.path == "/Playlists":
                    pid = f"pl{len(state.requests)}"   # unique, also after a deletion
                    ids = list(body.get("ids") or [])
                    state.playlists[pid] = {"name": body["name"], "ids": ids, "user": body.get("userid"),
                                            "entries": [uuid.uuid4().hex for _ in ids]}
                    return _json(self, 200, {"Id": pid})
                if len(parts) == 3 and parts[0] == "Playlists" and parts[2] == "Items" and parts[1] in state.playlists:
                    pl = state.playlists[parts[1]]
                    if method == "GET":
                        return _json(self, 200, {"Items": [{"Id": i, "PlaylistItemId": e}
                                                           for i, e in zip(pl["ids"], pl["entries"])]})
                    if method == "DELETE":
                        if api_key:   # 10.9-10.11: the user comes from the token; an API key has none
                            return _json(self, 400, {"type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
                                                     "title": "Guid can't be empty (Parameter 'id')", "status": 400})
                        drop = set(q.get("entryids", "").split(","))
                        keep = [(i, e) for i, e in zip(pl["ids"], pl["entries"]) if e not in drop]
                        pl["ids"], pl["entries"] = [i for i, _ in keep], [e for _, e in keep]
                        return self._empty(204)
                    if method == "POST":
                        new = [i for i in q.get("ids", "").split(",") if i]
                        pl["ids"] += new
                        pl["entries"] += [uuid.uuid4().hex for _ in new]
                        return self._empty(204)
                if method == "DELETE" and len(parts) == 2 and parts[0] == "Items":
                    if state.playlists.pop(parts[1], None) is None:
                        return _json(self, 404, {"error": "not found"})
                    return self._empty(204)
                _json(self, 404, {"error": "no route"})

            def _empty(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):  # noqa: N802
                self._handle("GET")

            def do_POST(self):  # noqa: N802
                self._handle("POST")

            def do_DELETE(self):  # noqa: N802
                self._handle("DELETE")

        return H

    with _serve(factory, tracks) as s:
        yield s


NAVIDROME_EXTENSIONS = ("formPost", "apiKeyAuthentication", "songLyrics", "transcodeOffset")
URI_LIMIT = 8192   # nginx large_client_header_buffers 4 8k: a longer request line gets HTTP 414


@contextmanager
def navidrome(tracks: list[FakeTrack], user: str, password: str, api_key: str,
              extensions: tuple[str, ...] = NAVIDROME_EXTENSIONS, token_auth: bool = True,
              others: dict[str, list[str]] | None = None) -> Iterator[FakeServer]:
    """``others``: playlists of other users, name -> owners (public, so Navidrome lists them)."""
    def factory(state: FakeServer, lock: threading.Lock):
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # noqa: ANN002
                pass

            def _ok(self, **payload) -> None:
                _json(self, 200, {"subsonic-response": {"status": "ok", "version": "1.16.1", "type": "navidrome",
                                                        "openSubsonic": True, **payload}})

            def _fail(self, code: int, message: str) -> None:
                _json(self, 200, {"subsonic-response": {"status": "failed", "version": "1.16.1", "type": "navidrome",
                                                        "openSubsonic": True,
                                                        "error": {"code": code, "message": message}}})

            def _authorised(self, q: dict[str, list[str]]) -> bool | int:
                one = {k: v[-1] for k, v in q.items()}
                if "apiKey" in one:
                    return one["apiKey"] == api_key or 44
                if one.get("u") != user:
                    return False
                if "p" in one:
                    p = one["p"]
                    return (bytes.fromhex(p[4:]).decode() if p.startswith("enc:") else p) == password
                if "t" in one and "s" in one:
                    if not token_auth:
                        return 41
                    return one["t"] == hashlib.md5((password + one["s"]).encode()).hexdigest()  # noqa: S324
                return False

            def do_GET(self):  # noqa: N802
                self._handle("GET", urllib.parse.urlsplit(self.path).query)

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                self._handle("POST", self.rfile.read(length).decode())

            def _handle(self, method: str, query: str) -> None:
                with lock:
                    state.requests.append((method, self.path, dict(self.headers.items())))
                if len(self.path) > URI_LIMIT:
                    h = b"<html><head><title>414 Request-URI Too Large</title></head></html>"
                    self.send_response(414)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(h)))
                    self.end_headers()
                    self.wfile.write(h)
                    return
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(query, keep_blank_values=True)
                m = re.fullmatch(r"/rest/(\w+)(?:\.view)?", u.path)
                if not m:
                    return _json(self, 404, {"error": "no route"})
                ep = m.group(1)
                if method == "POST" and "formPost" not in extensions:
                    return _json(self, 405, {"error": "method not allowed"})
                if ep == "getOpenSubsonicExtensions":   # public, as the OpenSubsonic spec requires
                    return self._ok(openSubsonicExtensions=[{"name": n, "versions": [1]} for n in extensions])
                if q.get("f", [""])[-1] != "json" or q.get("c", [""])[-1] == "" or "v" not in q:
                    return self._fail(10, "Required parameter is missing")
                auth = self._authorised(q)
                if "apiKey" in q and "apiKeyAuthentication" not in extensions:
                    return self._fail(42, "Provided authentication mechanism not supported")
                if auth == 41:
                    return self._fail(41, "Token authentication not supported for LDAP users")
                if auth == 44:
                    return self._fail(44, "Invalid API key")
                if not auth:
                    return self._fail(40, "Wrong username or password")
                one = {k: v[-1] for k, v in q.items()}
                if ep == "ping":
                    return self._ok()
                if ep == "tokenInfo":
                    return self._ok(tokenInfo={"username": user})
                if ep == "search3":
                    off, count = int(one.get("songOffset", 0)), int(one.get("songCount", 20))
                    songs = [{"id": t.id, "title": t.title, "artist": t.artist, "album": "A", "suffix": t.suffix,
                              "duration": int(t.duration), "path": f"{t.artist}/A/{t.title}.{t.suffix}",
                              "isDir": False} for t in state.tracks.values()]
                    return self._ok(searchResult3={"song": songs[off:off + count]})
                if ep == "stream":
                    t = state.tracks.get(one.get("id", ""))
                    if t is None:
                        return self._fail(70, "Song not found")
                    if t.id in state.errors_for:   # a transcoder that fails: the error comes with HTTP 200
                        return self._fail(0, "Error while running the transcoding process")
                    return _send_bytes(self, t.data, state, t.id)
                if ep == "getPlaylists":
                    return self._ok(playlists={"playlist": [
                        {"id": pid, "name": p["name"], "owner": p.get("owner", user), "public": p.get("public", False),
                         "songCount": len(p["ids"])} for pid, p in state.playlists.items()]})
                if ep == "createPlaylist":
                    ids = q.get("songId", [])
                    if "playlistId" in one:
                        if one["playlistId"] not in state.playlists:
                            return self._fail(70, "Playlist not found")
                        pid = one["playlistId"]
                        if state.playlists[pid].get("owner", user) != user:
                            return self._fail(50, "User not authorized for the given operation")
                        state.playlists[pid]["ids"] = list(ids)
                    else:
                        pid = f"nd{len(state.playlists) + 1}"
                        state.playlists[pid] = {"name": one.get("name", ""), "ids": list(ids), "owner": user}
                    return self._ok(playlist={"id": pid, "name": state.playlists[pid]["name"],
                                              "songCount": len(state.playlists[pid]["ids"])})
                if ep == "updatePlaylist":
                    pl = state.playlists.get(one.get("playlistId", ""))
                    if pl is None:
                        return self._fail(70, "Playlist not found")
                    pl["ids"] += q.get("songIdToAdd", [])
                    return self._ok()
                return self._fail(0, f"unknown endpoint {ep}")

        return H

    with _serve(factory, tracks) as s:
        for name, owners in (others or {}).items():
            for owner in owners:
                s.playlists[f"other{len(s.playlists) + 1}"] = {"name": name, "ids": ["x"], "owner": owner,
                                                               "public": True}
        yield s
