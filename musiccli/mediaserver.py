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
    size: int | None = None          # bytes of the file, where the server says (Subsonic ``size``)


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
                 retries: int = 3, backoff: float = 0.5, timeout: float = 30.0,
                 form: Sequence[tuple[str, Any]] | None = None) -> Any:
    """One JSON call with retries on transient errors; raises MtxError with a redacted URL.

    ``body`` is sent as JSON; ``form`` as ``application/x-www-form-urlencoded`` (a Subsonic POST).
    """
    if form is not None:
        data: bytes | None = urllib.parse.urlencode(list(form)).encode()
    else:
        data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Accept": "application/json", "User-Agent": f"{CLIENT}/0.1", **(headers or {})}
    if data is not None:
        hdrs["Content-Type"] = "application/x-www-form-urlencoded" if form is not None else "application/json"
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


class NotAudio(MtxError):
    """A download that is not audio (an error body sent with HTTP 200): one item fails, nothing is saved."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, hint="check the media server's transcoding settings for the mtx client")
        self.reason = reason


# Content types a media server sends for original files ("application/octet-stream" when it does not know).
_AUDIO_TYPES = ("audio/", "video/", "application/ogg", "application/octet-stream", "application/x-flac",
                "binary/octet-stream")


def check_audio_response(content_type: str | None, head: bytes) -> None:
    """Refuse a response that is not an audio file: a Subsonic error body (JSON or XML, HTTP 200),
    or any text/JSON/XML/HTML content type. Called on the first bytes, before anything is written."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    text = head.lstrip()[:4096]
    if b"subsonic-response" in text:
        message = _subsonic_error_text(text)
        raise NotAudio(f"the server sent an error instead of audio: {message}", reason=f"not audio: {message}"[:200])
    if ctype and not ctype.startswith(_AUDIO_TYPES):
        raise NotAudio(f"the server sent {ctype} instead of audio", reason=f"not audio: {ctype}")
    if not ctype and text[:1] in (b"{", b"<"):
        raise NotAudio("the server sent text instead of audio", reason="not audio: text body")


def _subsonic_error_text(text: bytes) -> str:
    try:
        body = json.loads(text).get("subsonic-response", {})
        err = body.get("error") or {}
        return f"error {err.get('code')}: {err.get('message', '')}".strip()
    except (ValueError, AttributeError):
        import re

        m = re.search(rb'code="(\d+)"\s+message="([^"]*)"', text)
        return f"error {m.group(1).decode()}: {m.group(2).decode(errors='replace')}" if m else "a subsonic-response"


# --------------------------------------------------------------------------- clients
class MediaServer(abc.ABC):
    kind: str

    @abc.abstractmethod
    def tracks(self) -> Iterator[Track]:
        """Every audio track on the server, page by page."""

    @abc.abstractmethod
    def download(self, track_id: str) -> tuple[str, dict[str, str]]:
        """(url, headers) for the original file of ``track_id``."""

    def playlists(self) -> Iterator[tuple[str, list[str]]]:
        """(name, track ids) of the playlists the user sees on the server (Jellyfin, Navidrome); the
        local files have none."""
        return iter(())

    @abc.abstractmethod
    def save_playlist(self, name: str, track_ids: Sequence[str]) -> PlaylistResult:
        """Create playlist ``name`` with ``track_ids`` in order, or replace the contents of one that exists."""

    def describe(self) -> dict[str, str]:
        return {"server": self.kind}

    @staticmethod
    def check_download(content_type: str | None, head: bytes) -> None:
        """Raise :class:`NotAudio` when a download's first bytes are not audio (see ``fetch(accept=...)``)."""
        check_audio_response(content_type, head)


def _need(s: dict[str, str], *keys: str) -> None:
    missing = [k for k in keys if not s.get(k)]
    if missing:
        raise MtxError(f"the media server is not configured: {', '.join(missing)} not set",
                       hint="set them in the environment (as for AudioMuse-AI) or in MTX_MEDIASERVER_CONFIG")


def server_url(value: str, variable: str) -> tuple[str, tuple[str, str] | None]:
    """(base URL without userinfo, (user, password) or None) from a ``*_URL`` setting.

    ``http://user:pass@host`` is not something urllib can open ("Name or service not known"):
    the credentials are taken out here, and the caller uses them or refuses with a hint.
    """
    from .redact import split_credentials

    value = value.strip()
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise MtxError(f"{variable} is not a valid URL", hint="e.g. http://192.168.1.10:8096") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MtxError(f"{variable} must be an http(s) URL, not {safe_url(value)!r}",
                       hint="e.g. http://192.168.1.10:8096") from None
    bare, creds = split_credentials(value)
    return bare.rstrip("/"), creds


def device_id(state_root: Path | None) -> str:
    """This install's Jellyfin DeviceId: random once, then kept in ``<state>/mediaserver/device_id``.

    Jellyfin keys sessions and access tokens by DeviceId, so every mtx install sharing one
    id would see (and end) each other's sessions.
    """
    if state_root is None:
        return f"{CLIENT}-{secrets.token_hex(8)}"
    path = Path(state_root) / "mediaserver" / "device_id"
    try:
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    except (OSError, UnicodeDecodeError):
        pass
    from .state import atomic_write_text

    value = f"{CLIENT}-{secrets.token_hex(8)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, value + "\n")
    return value


# Jellyfin's ItemFields: only these are item fields (Name, Container, RunTimeTicks, Album,
# AlbumArtist and Artists come with every audio item anyway).
JELLYFIN_FIELDS = ("Path", "MediaSources")


class Jellyfin(MediaServer):
    kind = "jellyfin"

    def __init__(self, s: dict[str, str], state_root: Path | None = None) -> None:
        _need(s, "JELLYFIN_URL", "JELLYFIN_USER_ID", "JELLYFIN_TOKEN")
        self.url, creds = server_url(s["JELLYFIN_URL"], "JELLYFIN_URL")
        if creds is not None:
            raise MtxError("JELLYFIN_URL carries user:password@; Jellyfin authenticates with a token",
                           hint="remove user:password@ from JELLYFIN_URL and set JELLYFIN_TOKEN (an API key "
                                "from Dashboard > API Keys) and JELLYFIN_USER_ID")
        self.user_id = s["JELLYFIN_USER_ID"]
        self._token = s["JELLYFIN_TOKEN"]
        self._device_id = device_id(state_root)
        self._legacy_header = False   # True once the server refused the MediaBrowser header but took X-Emby-Token
        self._probed = False

    def describe(self) -> dict[str, str]:
        return {"server": self.kind, "url": safe_url(self.url)}

    def headers(self) -> dict[str, str]:
        if self._legacy_header:
            return {"X-Emby-Token": self._token}
        return {"Authorization": f'MediaBrowser Client="{CLIENT}", Device="{CLIENT}", '
                                 f'DeviceId="{self._device_id}", Version="0.1", Token="{self._token}"'}

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
                "Limit": PAGE, "Fields": ",".join(JELLYFIN_FIELDS)}) or {}
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

    def playlists(self) -> Iterator[tuple[str, list[str]]]:
        """The user's playlists (``/Items`` of type Playlist) with their tracks (``/Playlists/{id}/Items``)."""
        found = self._call("GET", "/Items", {"userId": self.user_id, "IncludeItemTypes": "Playlist",
                                             "Recursive": "true"}) or {}
        for it in found.get("Items") or []:
            entries = self._call("GET", f"/Playlists/{urllib.parse.quote(str(it['Id']), safe='')}/Items",
                                 {"userId": self.user_id}) or {}
            yield str(it.get("Name") or it["Id"]), [str(e["Id"]) for e in entries.get("Items") or [] if e.get("Id")]

    def save_playlist(self, name: str, track_ids: Sequence[str]) -> PlaylistResult:
        ids = list(track_ids)
        found = self._call("GET", "/Items", {"userId": self.user_id, "IncludeItemTypes": "Playlist",
                                             "Recursive": "true", "searchTerm": name}) or {}
        existing = next((it for it in found.get("Items") or [] if it.get("Name") == name), None)
        created = existing is None
        if existing is not None and not self._clear_playlist(str(existing["Id"])):
            existing = None   # deleted as a whole: made again below
        if existing is None:
            made = self._call("POST", "/Playlists", body={"Name": name, "Ids": ids[:PLAYLIST_BATCH],
                                                          "UserId": self.user_id, "MediaType": "Audio"}) or {}
            pid = str(made.get("Id") or "")
            if not pid:
                raise MtxError("Jellyfin did not return the new playlist's id", hint="check the server's log")
            rest = ids[PLAYLIST_BATCH:]
        else:
            pid, rest = str(existing["Id"]), ids
        for i in range(0, len(rest), PLAYLIST_BATCH):
            self._call("POST", f"/Playlists/{pid}/Items", {"ids": ",".join(rest[i:i + PLAYLIST_BATCH]),
                                                           "userId": self.user_id})
        return PlaylistResult(self.kind, name, pid, len(ids), created)

    def _clear_playlist(self, pid: str) -> bool:
        """Empty playlist ``pid``; False when it had to be deleted instead (then the caller makes it again).

        Jellyfin 10.9-10.11 take the user for ``DELETE /Playlists/{id}/Items`` from the token, and
        an API key has none: the server answers 400 ("Guid can't be empty"; Jellyfin issues
        #13476, #14910, #15600). ``userId`` in the query is honoured where the server knows it;
        otherwise the playlist is deleted as an item (an API key may delete items) and recreated.
        """
        entries = self._call("GET", f"/Playlists/{pid}/Items", {"userId": self.user_id}) or {}
        entry_ids = [str(e["PlaylistItemId"]) for e in entries.get("Items") or [] if e.get("PlaylistItemId")]
        try:
            for i in range(0, len(entry_ids), PLAYLIST_BATCH):
                self._call("DELETE", f"/Playlists/{pid}/Items",
                           {"entryIds": ",".join(entry_ids[i:i + PLAYLIST_BATCH]), "userId": self.user_id})
            return True
        except HTTPStatusError as e:
            if e.status not in (400, 403, 404):
                raise
            log.info("jellyfin: the server refused to remove playlist entries with this token (HTTP %d); "
                     "deleting playlist %s and creating it again", e.status, pid)
        self._call("DELETE", f"/Items/{urllib.parse.quote(pid, safe='')}")
        return False


def _version(text: Any) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split(".")[:3])
    except ValueError:
        return (0,)


TOKEN_AUTH_SINCE = (1, 13, 0)   # Subsonic API version that introduced t + s
SUBSONIC_AUTH = ("token", "enc", "plain", "apikey")


class Navidrome(MediaServer):
    """A Subsonic / OpenSubsonic server (Navidrome, supysonic, Gonic, Airsonic, ...).

    Auth: ``apiKey`` (OpenSubsonic, checked against the server's extensions), else token+salt,
    falling back to ``p=enc:<hex>`` when the server answers error 41 (token auth not supported)
    or predates token auth (API < 1.13.0); ``NAVIDROME_AUTH=enc|plain`` chooses one up front.
    """

    kind = "navidrome"

    def __init__(self, s: dict[str, str], state_root: Path | None = None) -> None:
        _need(s, "NAVIDROME_URL")
        self.url, creds = server_url(s["NAVIDROME_URL"], "NAVIDROME_URL")
        self._api_key = s.get("NAVIDROME_API_KEY") or None
        self.user = s.get("NAVIDROME_USER") or (creds[0] if creds else None)
        self._password = s.get("NAVIDROME_PASSWORD") or (creds[1] if creds else None)
        self.auth = "apikey" if self._api_key else (s.get("NAVIDROME_AUTH") or "token").lower()
        if self.auth not in SUBSONIC_AUTH:
            raise unknown_choice("NAVIDROME_AUTH", self.auth, SUBSONIC_AUTH[:3])
        if not self._api_key and not (self.user and self._password):
            raise MtxError("the media server is not configured: set NAVIDROME_API_KEY, or NAVIDROME_USER and "
                           "NAVIDROME_PASSWORD", hint="as for AudioMuse-AI; see `mtx download --help`")
        self._probed = False
        self.version: tuple[int, ...] = (0,)
        self.extensions: set[str] = set()
        self._owner: str | None = None

    def describe(self) -> dict[str, str]:
        return {"server": self.kind, "url": safe_url(self.url), "auth": self.auth}

    def _auth(self) -> list[tuple[str, str]]:
        if self.auth == "apikey":
            return [("apiKey", self._api_key or "")]
        if self.auth == "enc":
            return [("u", self.user or ""), ("p", "enc:" + (self._password or "").encode().hex())]
        if self.auth == "plain":
            return [("u", self.user or ""), ("p", self._password or "")]
        salt = secrets.token_hex(6)
        token = hashlib.md5(((self._password or "") + salt).encode()).hexdigest()  # noqa: S324 - Subsonic's scheme
        return [("u", self.user or ""), ("t", token), ("s", salt)]

    def _query(self, params: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return [("v", SUBSONIC_VERSION), ("c", CLIENT), ("f", "json"), *self._auth(), *params]

    def _url(self, endpoint: str, params: Sequence[tuple[str, Any]] = ()) -> str:
        return f"{self.url}/rest/{endpoint}.view?{urllib.parse.urlencode(self._query(params))}"

    # ------------------------------------------------------------------ calls
    def _raw(self, endpoint: str, params: Sequence[tuple[str, Any]] = (), post: bool = False) -> dict[str, Any]:
        """The ``subsonic-response`` object, ok or failed."""
        try:
            if post:   # OpenSubsonic formPost: the parameters go in the body, so no URL grows with them
                data = request_json("POST", f"{self.url}/rest/{endpoint}.view", form=self._query(params))
            else:
                data = request_json("GET", self._url(endpoint, params))
        except HTTPStatusError as e:
            if e.status in (401, 403):
                raise self._refused(f"HTTP {e.status}") from None
            if e.status == 414:
                raise MtxError(f"{safe_url(self.url)} refused a request as too long (HTTP 414)",
                               hint="a proxy in front of the server limits URL length") from None
            raise
        body = (data or {}).get("subsonic-response") if isinstance(data, dict) else None
        if not isinstance(body, dict):
            raise MtxError(f"{safe_url(self.url)}/rest/{endpoint}.view did not answer as a Subsonic server",
                           hint="check NAVIDROME_URL")
        return body

    def _call(self, endpoint: str, params: Sequence[tuple[str, Any]] = (), post: bool = False) -> dict[str, Any]:
        if not self._probed:
            self._probe()
        body = self._raw(endpoint, params, post)
        self._raise_for(body, endpoint)
        return body

    def _raise_for(self, body: dict[str, Any], endpoint: str) -> None:
        if body.get("status") == "ok":
            return
        err = body.get("error") or {}
        if err.get("code") in (40, 41, 42, 43, 44):
            raise self._refused(f"code {err.get('code')}: {err.get('message', '')}".strip())
        raise MtxError(f"Subsonic {endpoint} failed: error {err.get('code')}: {err.get('message', 'unknown error')}",
                       hint="check the server's log")

    def _probe(self) -> None:
        """Once per client: settle the auth mode and read what the server supports."""
        if self.auth == "apikey":
            self.extensions = self._read_extensions()
            if "apiKeyAuthentication" not in self.extensions:
                raise MtxError(f"{safe_url(self.url)} does not accept API keys (no OpenSubsonic "
                               "apiKeyAuthentication extension)",
                               hint="unset NAVIDROME_API_KEY and set NAVIDROME_USER and NAVIDROME_PASSWORD")
            body = self._raw("ping")
        else:
            body = self._raw("ping")
            err = body.get("error") or {}
            no_token = err.get("code") == 41 or (err.get("code") == 10 and
                                                 _version(body.get("version")) < TOKEN_AUTH_SINCE)
            if self.auth == "token" and body.get("status") != "ok" and no_token:
                log.warning("%s does not take token authentication (error %s: %s); sending the password as "
                            "enc:<hex> instead (NAVIDROME_AUTH=enc skips this check)", safe_url(self.url),
                            err.get("code"), err.get("message", ""))
                self.auth = "enc"
                body = self._raw("ping")
            if body.get("openSubsonic"):
                self.extensions = self._read_extensions()
        self._raise_for(body, "ping")
        self.version = _version(body.get("version"))
        self._probed = True
        log.info("subsonic server %s: API %s, auth %s%s", safe_url(self.url), body.get("version"), self.auth,
                 f", extensions {sorted(self.extensions)}" if self.extensions else "")

    def _read_extensions(self) -> set[str]:
        try:
            body = self._raw("getOpenSubsonicExtensions")
        except (HTTPStatusError, MtxError):
            return set()
        if body.get("status") != "ok":
            return set()
        return {str(e.get("name")) for e in body.get("openSubsonicExtensions") or [] if isinstance(e, dict)}

    def _refused(self, why: str) -> MtxError:
        what = "NAVIDROME_API_KEY" if self.auth == "apikey" else "NAVIDROME_USER / NAVIDROME_PASSWORD"
        return MtxError(f"Navidrome at {safe_url(self.url)} refused the credentials ({why})", hint=f"check {what}")

    # ------------------------------------------------------------------ library
    def tracks(self) -> Iterator[Track]:
        offset = 0
        while True:
            body = self._call("search3", [("query", ""), ("songCount", PAGE), ("songOffset", offset),
                                          ("artistCount", 0), ("albumCount", 0)])
            songs = (body.get("searchResult3") or {}).get("song") or []
            for s in songs:
                yield Track(id=str(s["id"]), title=s.get("title"), artist=s.get("artist"), album=s.get("album"),
                            path=s.get("path"), suffix=s.get("suffix"),
                            duration=float(s["duration"]) if isinstance(s.get("duration"), (int, float)) else None,
                            size=int(s["size"]) if isinstance(s.get("size"), int) else None)
            offset += len(songs)
            if len(songs) < PAGE:
                return

    def download(self, track_id: str) -> tuple[str, dict[str, str]]:
        # The original bytes: format=raw overrides a transcoding preference the server keeps for this
        # client; check_download refuses an error body sent with HTTP 200 anyway.
        if not self._probed:
            self._probe()
        return self._url("stream", [("id", track_id), ("format", "raw")]), {}

    # ------------------------------------------------------------------ playlists
    def owner(self) -> str | None:
        """The user the credentials belong to (an API key: from OpenSubsonic ``tokenInfo``)."""
        if self._owner is None:
            if self.user:
                self._owner = self.user
            elif self.auth == "apikey":
                info = self._call("tokenInfo").get("tokenInfo") or {}
                self._owner = info.get("username") or info.get("userName")
        return self._owner

    def own_playlists(self, name: str) -> list[dict[str, Any]]:
        """The user's own playlists called ``name`` (another user's public one is never touched)."""
        lists = (self._call("getPlaylists").get("playlists") or {}).get("playlist") or []
        me = self.owner()
        if me is None:
            raise MtxError("cannot tell which user this API key belongs to (no tokenInfo)",
                           hint="set NAVIDROME_USER and NAVIDROME_PASSWORD to save playlists")
        return [p for p in lists if p.get("name") == name and p.get("owner") == me]

    def playlists(self) -> Iterator[tuple[str, list[str]]]:
        """Every playlist the user sees (``getPlaylists``: their own and public ones), with its songs
        (``getPlaylist``)."""
        if not self._probed:
            self._probe()
        for p in (self._call("getPlaylists").get("playlists") or {}).get("playlist") or []:
            entries = (self._call("getPlaylist", [("id", p["id"])]).get("playlist") or {}).get("entry") or []
            yield str(p.get("name") or p["id"]), [str(e["id"]) for e in entries if "id" in e]

    def save_playlist(self, name: str, track_ids: Sequence[str]) -> PlaylistResult:
        ids = list(track_ids)
        if not self._probed:
            self._probe()
        mine = self.own_playlists(name)
        existing = mine[0] if mine else None
        target = [("playlistId", existing["id"])] if existing is not None else [("name", name)]
        if "formPost" in self.extensions:
            body = self._call("createPlaylist", [*target, *[("songId", i) for i in ids]], post=True)
            rest: list[str] = []
        else:
            # No POST: a URL with every songId overflows proxies (nginx: HTTP 414 near 180 ids),
            # so the list goes in batches: create (or replace) with the first, then add the rest.
            body = self._call("createPlaylist", [*target, *[("songId", i) for i in ids[:PLAYLIST_BATCH]]])
            rest = ids[PLAYLIST_BATCH:]
        if existing is not None:
            pid = str(existing["id"])
        else:
            pid = str((body.get("playlist") or {}).get("id") or "")
            if not pid:   # servers on API < 1.14 answer without the playlist: the new one of that name
                before = {str(p["id"]) for p in mine}
                pid = next((str(p["id"]) for p in self.own_playlists(name) if str(p["id"]) not in before), "")
            if not pid:
                raise MtxError(f"the server did not say which playlist it created for {name!r}",
                               hint="check the server's log")
        for i in range(0, len(rest), PLAYLIST_BATCH):
            self._call("updatePlaylist", [("playlistId", pid),
                                          *[("songIdToAdd", x) for x in rest[i:i + PLAYLIST_BATCH]]])
        return PlaylistResult(self.kind, name, pid, len(ids), existing is None)


class LocalFiles(MediaServer):
    """The files AudioMuse-AI analysed, read where they are mounted (``score.file_path``)."""

    kind = "local"

    def tracks(self) -> Iterator[Track]:
        return iter(())

    def download(self, track_id: str) -> tuple[str, dict[str, str]]:
        raise MtxError("local files are read in place, not downloaded")

    def save_playlist(self, name: str, track_ids: Sequence[str]) -> PlaylistResult:
        raise MtxError("--playlist saves the results on your media server, and none is configured",
                       hint="pass --server jellyfin or --server navidrome (configured as for AudioMuse-AI: "
                            "JELLYFIN_URL/USER_ID/TOKEN or NAVIDROME_URL/USER/PASSWORD), or write a file "
                            "with --m3u")


def make_server(kind: str | None, env: dict[str, str] | None = None,
                state_root: Path | None = None) -> MediaServer:
    """The configured client; ``state_root`` (the state dir) keeps this install's Jellyfin DeviceId."""
    kind = server_kind(kind, env)
    s = settings(env)
    if kind == "jellyfin":
        return Jellyfin(s, state_root)
    if kind == "navidrome":
        return Navidrome(s, state_root)
    return LocalFiles()


__all__ = ["SERVER_KINDS", "MediaServer", "NotAudio", "check_audio_response", "device_id", "server_url", "PlaylistResult", "Track", "make_server", "safe_url", "secret_values",
           "server_kind", "settings"]
