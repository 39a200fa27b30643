"""Media-server clients (Jellyfin, Navidrome/OpenSubsonic, local files), configured like AudioMuse-AI.

Each client lists the server's tracks (paged), says how to download one track (a URL plus
headers for ``sources._http.fetch``, which does Range resume, retries and checksums), and
creates or replaces a playlist.

Configuration comes from AudioMuse-AI's own variables (``MEDIASERVER_TYPE``,
``JELLYFIN_URL/USER_ID/TOKEN``, ``NAVIDROME_URL/USER/PASSWORD/API_KEY``), optionally read
from a TOML/``KEY=VALUE`` file named by ``MTX_MEDIASERVER_CONFIG``; the environment wins.
Secrets are only ever placed in request headers or query strings: every URL that can reach
a log line, an error or a result goes through :func:`safe_url`, which drops the query.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MtxError, unknown_choice

log = logging.getLogger(__name__)

SERVER_KINDS = ("jellyfin", "navidrome", "local")
CLIENT = "mtx"
SUBSONIC_VERSION = "1.16.1"
PAGE = 500
PLAYLIST_BATCH = 100
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
SECRET_KEYS = ("JELLYFIN_TOKEN", "NAVIDROME_PASSWORD", "NAVIDROME_API_KEY")


@dataclass(frozen=True)
class Track:
    id: str
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    path: str | None = None
    suffix: str | None = None        # file extension without the dot ("flac")
    duration: float | None = None    # seconds


@dataclass(frozen=True)
class PlaylistResult:
    server: str
    name: str
    playlist_id: str
    tracks: int
    created: bool                    # False: an existing playlist of that name was replaced


def safe_url(url: str) -> str:
    """The URL without query string and user:password@ (Subsonic auth travels in the query)."""
    try:
        p = urllib.parse.urlsplit(url)
    except ValueError:
        return "<malformed URL>"
    return urllib.parse.urlunsplit((p.scheme, p.netloc.rsplit("@", 1)[-1], p.path, "", ""))


# --------------------------------------------------------------------------- configuration
def _config_file_values(env: dict[str, str]) -> dict[str, str]:
    path = env.get("MTX_MEDIASERVER_CONFIG")
    if not path:
        return {}
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise MtxError(f"cannot read MTX_MEDIASERVER_CONFIG {p}: {e.strerror}",
                       hint="point it at a file of KEY = \"value\" lines (TOML)") from None
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MtxError(f"{p} is not valid TOML: {e}", hint='write KEY = "value" lines, e.g. JELLYFIN_URL = "http://..."') from None
    return {str(k).upper(): str(v) for k, v in data.items() if not isinstance(v, dict)}


def settings(env: dict[str, str] | None = None) -> dict[str, str]:
    """AudioMuse-AI's media-server variables: the environment over the optional config file."""
    env = dict(os.environ if env is None else env)
    merged = _config_file_values(env)
    merged.update({k: v for k, v in env.items() if k.startswith(("MEDIASERVER_", "JELLYFIN_", "NAVIDROME_"))})
    return merged


def server_kind(requested: str | None, env: dict[str, str] | None = None) -> str:
    kind = (requested or settings(env).get("MEDIASERVER_TYPE") or "local").lower()
    if kind not in SERVER_KINDS:
        raise unknown_choice("media server", kind, SERVER_KINDS)
    return kind


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """The configured secrets (for tests and for scrubbing text)."""
    s = settings(env)
    return [s[k] for k in SECRET_KEYS if s.get(k)]


# --------------------------------------------------------------------------- HTTP (JSON)
def request_json(method: str, url: str, headers: dict[str, str] | None = None, body: Any = None,
                 retries: int = 3, backoff: float = 0.5, timeout: float = 30.0) -> Any:
    """One JSON call with retries on transient errors; raises MtxError with a redacted URL."""
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Accept": "application/json", "User-Agent": f"{CLIENT}/0.1", **(headers or {})}
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            with e:
                if e.code in _RETRYABLE:
                    last = f"HTTP {e.code}"
                    continue
                raise HTTPStatusError(e.code, f"{method} {safe_url(url)}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            last = f"{type(reason).__name__}: {reason}"
            continue
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise MtxError(f"{method} {safe_url(url)} did not return JSON",
                           hint="check the server URL: it should be the media server's base address") from None
    raise MtxError(f"{method} {safe_url(url)} failed after {retries + 1} attempts ({last})",
                   hint="check that the media server is running and reachable")


class HTTPStatusError(MtxError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, hint=None)
        self.status = status


# --------------------------------------------------------------------------- clients
class MediaServer(abc.ABC):
    kind: str

    @abc.abstractmethod
    def tracks(self) -> Iterator[Track]:
        """Every audio track on the server, page by page."""

    @abc.abstractmethod
    def download(self, track_id: str) -> tuple[str, dict[str, str]]:
        """(url, headers) for the original file of ``track_id``."""

    @abc.abstractmethod
    def save_playlist(self, name: str, track_ids: Sequence[str]) -> PlaylistResult:
        """Create playlist ``name`` with ``track_ids`` in order, or replace the contents of one that exists."""

    def describe(self) -> dict[str, str]:
        return {"server": self.kind}


def _need(s: dict[str, str], *keys: str) -> None:
    missing = [k for k in keys if not s.get(k)]
    if missing:
        raise MtxError(f"the media server is not configured: {', '.join(missing)} not set",
                       hint="set them in the environment (as for AudioMuse-AI) or in MTX_MEDIASERVER_CONFIG")


class Jellyfin(MediaServer):
    kind = "jellyfin"

    def __init__(self, s: dict[str, str]) -> None:
        _need(s, "JELLYFIN_URL", "JELLYFIN_USER_ID", "JELLYFIN_TOKEN")
        self.url = s["JELLYFIN_URL"].rstrip("/")
        self.user_id = s["JELLYFIN_USER_ID"]
        self._token = s["JELLYFIN_TOKEN"]
        self._legacy_header = False   # True once the server refused the MediaBrowser header but took X-Emby-Token
        self._probed = False

    def describe(self) -> dict[str, str]:
        return {"server": self.kind, "url": safe_url(self.url)}

    def headers(self) -> dict[str, str]:
        if self._legacy_header:
            return {"X-Emby-Token": self._token}
        return {"Authorization": f'MediaBrowser Client="{CLIENT}", Device="{CLIENT}", '
                                 f'DeviceId="{CLIENT}-cli", Version="0.1", Token="{self._token}"'}

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params, doseq=True)}" if params else "")
        try:
            return request_json(method, url, self.headers(), body)
        except HTTPStatusError as e:
            if e.status != 401:
                raise
            if not self._legacy_header:
                # Older servers (and AudioMuse-AI's older code) use X-Emby-Token; try it once.
                self._legacy_header = True
                log.info("jellyfin: the MediaBrowser token header was refused; trying X-Emby-Token")
                try:
                    return request_json(method, url, self.headers(), body)
                except HTTPStatusError as e2:
                    if e2.status != 401:
                        raise
            raise MtxError(f"Jellyfin at {safe_url(self.url)} refused the token (HTTP 401)",
                           hint="check JELLYFIN_TOKEN (an API key from Dashboard > API Keys) and JELLYFIN_USER_ID"
                           ) from None

    def tracks(self) -> Iterator[Track]:
        start = 0
        while True:
            page = self._call("GET", "/Items", {
                "userId": self.user_id, "IncludeItemTypes": "Audio", "Recursive": "true", "StartIndex": start,
                "Limit": PAGE, "Fields": "Path,ProductionYear,IndexNumber,ParentIndexNumber,AlbumArtist,Album,"
                                         "ArtistItems,Artists,RunTimeTicks"}) or {}
            items = page.get("Items") or []
            for it in items:
                path = it.get("Path")
                suffix = it.get("Container") or (Path(path).suffix.lstrip(".") if path else None)
                ticks = it.get("RunTimeTicks")
                artists = it.get("Artists") or []
                yield Track(id=str(it["Id"]), title=it.get("Name"), artist=it.get("AlbumArtist") or
                            (artists[0] if artists else None), album=it.get("Album"), path=path,
                            suffix=(suffix or "").split(",")[0] or None,
                            duration=ticks / 1e7 if isinstance(ticks, (int, float)) else None)
            start += len(items)
            total = page.get("TotalRecordCount")
            if not items or (isinstance(total, int) and start >= total):
                return

    def download(self, track_id: str) -> tuple[str, dict[str, str]]:
        if not self._probed:
            self._probe()
        return f"{self.url}/Items/{urllib.parse.quote(track_id, safe='')}/Download", self.headers()

    def _probe(self) -> None:
        """Settle which auth header works before handing headers to the file downloader."""
        self._call("GET", f"/Users/{urllib.parse.quote(self.user_id, safe='')}")
        self._probed = True

    def save_playlist(self, name: str, track_ids: Sequence[str]) -> PlaylistResult:
        ids = list(track_ids)
        found = self._call("GET", "/Items", {"userId": self.user_id, "IncludeItemTypes": "Playlist",
                                             "Recursive": "true", "searchTerm": name}) or {}
        existing = next((it for it in found.get("Items") or [] if it.get("Name") == name), None)
        if existing is None:
            made = self._call("POST", "/Playlists", body={"Name": name, "Ids": ids[:PLAYLIST_BATCH],
                                                          "UserId": self.user_id, "MediaType": "Audio"}) or {}
            pid = str(made.get("Id") or "")
            if not pid:
                raise MtxError("Jellyfin did not return the new playlist's id", hint="check the server's log")
            rest, created = ids[PLAYLIST_BATCH:], True
        else:
            pid = str(existing["Id"])
            entries = self._call("GET", f"/Playlists/{pid}/Items", {"userId": self.user_id}) or {}
            entry_ids = [str(e["PlaylistItemId"]) for e in entries.get("Items") or [] if e.get("PlaylistItemId")]
            for i in range(0, len(entry_ids), PLAYLIST_BATCH):
                self._call("DELETE", f"/Playlists/{pid}/Items",
                           {"entryIds": ",".join(entry_ids[i:i + PLAYLIST_BATCH])})
            rest, created = ids, False
        for i in range(0, len(rest), PLAYLIST_BATCH):
            self._call("POST", f"/Playlists/{pid}/Items", {"ids": ",".join(rest[i:i + PLAYLIST_BATCH]),
                                                           "userId": self.user_id})
        return PlaylistResult(self.kind, name, pid, len(ids), created)


class Navidrome(MediaServer):
    """OpenSubsonic: ``apiKey``, else the standard token+salt, or AudioMuse-AI's ``p=enc:`` (NAVIDROME_AUTH=enc)."""

    kind = "navidrome"

    def __init__(self, s: dict[str, str]) -> None:
        _need(s, "NAVIDROME_URL")
        self.url = s["NAVIDROME_URL"].rstrip("/")
        self._api_key = s.get("NAVIDROME_API_KEY") or None
        self.user = s.get("NAVIDROME_USER") or None
        self._password = s.get("NAVIDROME_PASSWORD") or None
        self.auth = "apikey" if self._api_key else (s.get("NAVIDROME_AUTH") or "token").lower()
        if self.auth not in ("apikey", "token", "enc"):
            raise unknown_choice("NAVIDROME_AUTH", self.auth, ("token", "enc"))
        if not self._api_key and not (self.user and self._password):
            raise MtxError("the media server is not configured: set NAVIDROME_API_KEY, or NAVIDROME_USER and "
                           "NAVIDROME_PASSWORD", hint="as for AudioMuse-AI; see `mtx download --help`")

    def describe(self) -> dict[str, str]:
        return {"server": self.kind, "url": safe_url(self.url), "auth": self.auth}

    def _auth(self) -> list[tuple[str, str]]:
        if self.auth == "apikey":
            return [("apiKey", self._api_key or "")]
        if self.auth == "enc":
            return [("u", self.user or ""), ("p", "enc:" + (self._password or "").encode().hex())]
        salt = secrets.token_hex(6)
        token = hashlib.md5(((self._password or "") + salt).encode()).hexdigest()  # noqa: S324 - Subsonic's scheme
        return [("u", self.user or ""), ("t", token), ("s", salt)]

    def _url(self, endpoint: str, params: Sequence[tuple[str, Any]] = ()) -> str:
        query = [("v", SUBSONIC_VERSION), ("c", CLIENT), ("f", "json"), *self._auth(), *params]
        return f"{self.url}/rest/{endpoint}.view?{urllib.parse.urlencode(query)}"

    def _call(self, endpoint: str, params: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
        try:
            data = request_json("GET", self._url(endpoint, params))
        except HTTPStatusError as e:
            if e.status in (401, 403):
                raise self._refused(str(e.status)) from None
            raise
        body = (data or {}).get("subsonic-response") if isinstance(data, dict) else None
        if not isinstance(body, dict):
            raise MtxError(f"{safe_url(self.url)}/rest/{endpoint}.view did not answer as a Subsonic server",
                           hint="check NAVIDROME_URL")
        if body.get("status") != "ok":
            err = body.get("error") or {}
            if err.get("code") in (40, 41, 42, 43, 44):
                raise self._refused(f"code {err.get('code')}: {err.get('message', '')}".strip())
            raise MtxError(f"Navidrome {endpoint} failed: {err.get('message', 'unknown error')}",
                           hint="check the server's log")
        return body

    def _refused(self, why: str) -> MtxError:
        what = "NAVIDROME_API_KEY" if self.auth == "apikey" else "NAVIDROME_USER / NAVIDROME_PASSWORD"
        return MtxError(f"Navidrome at {safe_url(self.url)} refused the credentials ({why})", hint=f"check {what}")

    def tracks(self) -> Iterator[Track]:
        offset = 0
        while True:
            body = self._call("search3", [("query", ""), ("songCount", PAGE), ("songOffset", offset),
                                          ("artistCount", 0), ("albumCount", 0)])
            songs = (body.get("searchResult3") or {}).get("song") or []
            for s in songs:
                yield Track(id=str(s["id"]), title=s.get("title"), artist=s.get("artist"), album=s.get("album"),
                            path=s.get("path"), suffix=s.get("suffix"),
                            duration=float(s["duration"]) if isinstance(s.get("duration"), (int, float)) else None)
            offset += len(songs)
            if len(songs) < PAGE:
                return

    def download(self, track_id: str) -> tuple[str, dict[str, str]]:
        # AudioMuse-AI streams the original (no transcoding parameters), so the bytes are the file's.
        return self._url("stream", [("id", track_id)]), {}

    def save_playlist(self, name: str, track_ids: Sequence[str]) -> PlaylistResult:
        ids = list(track_ids)
        lists = (self._call("getPlaylists").get("playlists") or {}).get("playlist") or []
        existing = next((p for p in lists if p.get("name") == name), None)
        songs = [("songId", i) for i in ids]
        if existing is None:
            body = self._call("createPlaylist", [("name", name), *songs])
            pid = str((body.get("playlist") or {}).get("id") or "")
            if not pid:  # servers on API < 1.14 answer without the playlist; look it up
                lists = (self._call("getPlaylists").get("playlists") or {}).get("playlist") or []
                pid = next((str(p["id"]) for p in lists if p.get("name") == name), "")
            return PlaylistResult(self.kind, name, pid, len(ids), True)
        # createPlaylist with playlistId replaces the song list (Subsonic API).
        self._call("createPlaylist", [("playlistId", existing["id"]), *songs])
        return PlaylistResult(self.kind, name, str(existing["id"]), len(ids), False)


class LocalFiles(MediaServer):
    """The files AudioMuse-AI analysed, read where they are mounted (``score.file_path``)."""

    kind = "local"

    def tracks(self) -> Iterator[Track]:
        return iter(())

    def download(self, track_id: str) -> tuple[str, dict[str, str]]:
        raise MtxError("local files are read in place, not downloaded")

    def save_playlist(self, name: str, track_ids: Sequence[str]) -> PlaylistResult:
        raise MtxError("playlists need a media server", hint="use --server jellyfin or --server navidrome")


def make_server(kind: str | None, env: dict[str, str] | None = None) -> MediaServer:
    kind = server_kind(kind, env)
    s = settings(env)
    if kind == "jellyfin":
        return Jellyfin(s)
    if kind == "navidrome":
        return Navidrome(s)
    return LocalFiles()


__all__ = ["SERVER_KINDS", "MediaServer", "PlaylistResult", "Track", "make_server", "safe_url", "secret_values",
           "server_kind", "settings"]
