"""Resumable, verified HTTP downloads for the dataset sources (stdlib only).

``fetch`` streams a URL into ``dest`` through a temporary sibling
``.tmp-<name>.part``. The partial file is kept when a transfer breaks, so the next
attempt (a retry, or a later ``mtx download --continue``) asks the server for the
rest with ``Range: bytes=N-``. The checksum is computed while the bytes are written
and checked before the file is renamed into place, so ``dest`` existing means
"complete and verified" (when a checksum is known).

Authorization headers (and the media servers' X-Emby-Token / X-Plex-Token) are never
logged, never written anywhere, and dropped on redirects to hosts that are not the
Hugging Face Hub (the Hub redirects file downloads to signed CDN URLs that must not
receive the token).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MtxError
from ..redact import redact_url, split_credentials

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..progress import Task

log = logging.getLogger(__name__)

CHUNK = 1 << 16
USER_AGENT = "mtx/0.1 (+https://github.com/; dataset downloader)"
HASHES = ("sha1", "sha256", "md5")
HF_HOSTS = ("huggingface.co", "hf.co")
_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
# Never forwarded to another host on a redirect (urllib capitalises header names this way).
SECRET_HEADERS = ("Authorization", "X-emby-token", "X-plex-token")


class DownloadError(MtxError):
    """A download that failed for good; ``reason`` is a short string for the ledger."""

    def __init__(self, message: str, reason: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason or self.message[:120]   # the message as redacted by MtxError


@dataclass
class FetchResult:
    path: Path
    bytes: int
    checksum: str | None      # hex digest in the requested algorithm (None when none was asked)
    resumed: bool             # True when some bytes came from an earlier partial transfer


class _Retry(Exception):
    """A transient failure inside one attempt: back off, then try again."""


class _Restart(Exception):
    """The partial file is useless: delete it and start from byte 0 (counts as an attempt)."""


# --------------------------------------------------------------------------- helpers
def base_url(default: str, mirror: str | None, env_var: str) -> str:
    """The base URL to download from: ``--mirror`` beats the environment variable beats the default."""
    for value in (mirror, os.environ.get(env_var), default):
        if value:
            return value.rstrip("/")
    return default.rstrip("/")


def join_url(base: str, name: str) -> str:
    """``base`` + ``/`` + ``name`` (``name`` may carry a query string such as ``?download=1``)."""
    return f"{base.rstrip('/')}/{name.lstrip('/')}"


def _is_hf_host(url: str) -> bool:
    host = (urllib.parse.urlparse(url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in HF_HOSTS)


def hf_headers(url: str) -> dict[str, str]:
    """``Authorization: Bearer $HF_TOKEN`` for Hugging Face URLs, else nothing.

    ``MTX_HF_TOKEN_ALL_HOSTS=1`` sends it to any host (for a private mirror of the Hub
    that needs the same token). The token is read from ``HF_TOKEN`` or
    ``HUGGING_FACE_HUB_TOKEN``.
    """
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        return {}
    if _is_hf_host(url) or os.environ.get("MTX_HF_TOKEN_ALL_HOSTS", "") not in ("", "0", "false"):
        return {"Authorization": f"Bearer {token}"}
    return {}


def file_digest(path: Path, algorithm: str) -> str:
    h = _new_hash(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _new_hash(algorithm: str):
    if algorithm not in HASHES:
        raise MtxError(f"unsupported checksum algorithm {algorithm!r}", hint=f"use one of {', '.join(HASHES)}")
    return hashlib.new(algorithm)


def _redact(url: str) -> str:
    """The URL as it may be shown: ``redact.redact_url`` (no userinfo, no secret query values)."""
    return redact_url(url)


def _with_basic_auth(url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A URL with ``user:password@`` is requested without it, with ``Authorization: Basic``.

    urllib would otherwise try to resolve ``user:password@host`` as a host name.
    """
    bare, creds = split_credentials(url)
    if creds is None:
        return url, headers
    token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode("ascii")
    return bare, {**headers, "Authorization": f"Basic {token}"}


class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never forward the token to a host outside the Hub."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            old_host = urllib.parse.urlparse(req.full_url).hostname
            new_host = urllib.parse.urlparse(new.full_url).hostname
            basic = str(req.get_header("Authorization") or "").startswith("Basic ")
            if new_host != old_host and (basic or not _is_hf_host(new.full_url)):
                for name in SECRET_HEADERS:   # media-server tokens travel in their own headers
                    new.remove_header(name)
                    new.unredirected_hdrs.pop(name, None)
        return new


_opener = urllib.request.build_opener(_SafeRedirect)


# --------------------------------------------------------------------------- fetch
def fetch(
    url: str,
    dest: Path,
    *,
    checksum: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 60.0,
    task: "Task | None" = None,
    accept: "Callable[[str | None, bytes], None] | None" = None,
) -> FetchResult:
    """Download ``url`` to ``dest`` with resume, retries and checksum verification.

    An existing ``dest`` whose checksum matches (or any existing ``dest`` when no
    checksum is given: it was renamed into place only after a complete transfer) is
    returned without touching the network. On a checksum mismatch the file is deleted
    and downloaded once more; a second mismatch raises ``DownloadError``.
    ``accept(content_type, first_bytes)`` may raise to refuse a fresh response before
    anything is written (a media server's error body sent with HTTP 200).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algorithm, expected = (checksum[0].lower(), checksum[1].lower()) if checksum else (None, None)
    if algorithm:
        _new_hash(algorithm)  # fail early on a typo in a source's declared data
    if dest.exists():
        if algorithm is None:
            return FetchResult(dest, dest.stat().st_size, None, resumed=False)
        digest = file_digest(dest, algorithm)
        if digest == expected:
            return FetchResult(dest, dest.stat().st_size, digest, resumed=False)
        log.warning("%s does not match its %s checksum; downloading it again", dest.name, algorithm)
        dest.unlink()

    part = dest.parent / f".tmp-{dest.name}.part"
    req_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    for round_ in range(2):
        nbytes, digest, resumed = _transfer(url, part, req_headers, algorithm, retries, backoff, timeout, task,
                                            accept)
        if expected is None or digest == expected:
            os.replace(part, dest)
            return FetchResult(dest, nbytes, digest, resumed=resumed)
        part.unlink(missing_ok=True)
        if round_ == 0:
            log.warning("checksum mismatch for %s (%s %s, expected %s); downloading it again",
                        dest.name, algorithm, digest, expected)
    raise DownloadError(f"checksum mismatch for {_redact(url)}: {algorithm} {digest}, expected {expected}",
                        reason="checksum mismatch",
                        hint="the server sent different bytes twice; try another --mirror or report it")


def _transfer(url: str, part: Path, headers: dict[str, str], algorithm: str | None, retries: int,
              backoff: float, timeout: float, task: "Task | None", accept=None) -> tuple[int, str | None, bool]:
    """Complete ``part`` from ``url``; returns (size, digest, resumed)."""
    resumed = False
    last: str = ""
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * (2 ** (attempt - 1))
            log.info("retrying %s in %.1fs (%s)", _redact(url), delay, last)
            time.sleep(delay)
        try:
            size, digest, from_partial = _attempt(url, part, headers, algorithm, timeout, task, accept)
            return size, digest, resumed or from_partial
        except _Restart as e:
            last = str(e)
            part.unlink(missing_ok=True)
        except _Retry as e:
            last = str(e)
            resumed = resumed or part.exists()
    raise DownloadError(f"download failed after {retries + 1} attempts: {_redact(url)}: {last}",
                        reason=last[:120] or "failed",
                        hint="rerun with --continue to resume the partial download")


def _attempt(url: str, part: Path, headers: dict[str, str], algorithm: str | None, timeout: float,
             task: "Task | None", accept=None) -> tuple[int, str | None, bool]:
    have = part.stat().st_size if part.exists() else 0
    req_headers = dict(headers)
    if have:
        req_headers["Range"] = f"bytes={have}-"
    try:
        url, req_headers = _with_basic_auth(url, req_headers)
        req = urllib.request.Request(url, headers=req_headers)
    except ValueError as e:
        # A malformed URL (e.g. one row of a third-party metadata file) fails this item, not the run.
        raise DownloadError(f"bad URL {_redact(url)!r}: {e}", reason=f"bad URL: {e}"[:120],
                            hint="check the URL, --mirror or the source's environment variable") from None
    try:
        resp = _opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 416 and have:
                return _after_416(part, have, e.headers.get("Content-Range"), algorithm)
            if e.code in _RETRYABLE_HTTP:
                raise _Retry(f"HTTP {e.code}") from None
            raise DownloadError(f"download failed: {_redact(url)}: HTTP {e.code} {e.reason}",
                                reason=f"HTTP {e.code}",
                                hint="check the URL or --mirror; the file is not available there") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(_describe(e)) from None

    with resp:
        status = resp.status
        hasher = _new_hash(algorithm) if algorithm else None
        total: int | None = None
        if status == 206 and have:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != have:
                raise _Restart(f"server resumed at byte {start}, not {have}")
            if hasher:
                _hash_prefix(part, hasher)
            mode, offset = "ab", have
            log.info("resuming %s at byte %d", part.name.removeprefix(".tmp-").removesuffix(".part"), have)
        else:
            # 200: a fresh transfer, or a server that ignores Range (so start over).
            if have:
                log.info("server ignored the range request; restarting %s", _redact(url))
            mode, offset = "wb", 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if task is not None:
            task.update(total=total, completed=offset)
        written = offset
        try:
            chunk = resp.read(CHUNK)
            if accept is not None and offset == 0:
                accept(resp.headers.get("Content-Type"), chunk)   # raises before a byte is written
            with open(part, mode) as f:
                while chunk:
                    f.write(chunk)
                    if hasher:
                        hasher.update(chunk)
                    written += len(chunk)
                    if task is not None:
                        task.advance(len(chunk))
                    chunk = resp.read(CHUNK)
        except (OSError, http.client.HTTPException) as e:
            # The bytes received so far stay in ``part`` for the next attempt.
            raise _Retry(_describe(e)) from None
    if total is not None and written != total:
        raise _Retry(f"connection closed at byte {written} of {total}")
    return written, hasher.hexdigest() if hasher else None, offset > 0


def _after_416(part: Path, have: int, content_range: str | None, algorithm: str | None):
    """Range not satisfiable: the partial is either already complete or longer than the file."""
    total = None
    if content_range:
        m = re.match(r"bytes \*/(\d+)", content_range.strip())
        total = int(m.group(1)) if m else None
    if total is not None and total == have:
        # Complete already; the caller still checks the checksum.
        return have, file_digest(part, algorithm) if algorithm else None, True
    if total is None and algorithm:
        # No size to compare with: the checksum decides (a mismatch makes fetch start over).
        return have, file_digest(part, algorithm), True
    raise _Restart(f"HTTP 416 with a {have}-byte partial file" + (f" (file is {total} bytes)" if total else ""))


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not m:
        raise _Restart(f"bad Content-Range {value!r}")
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), total


def _hash_prefix(part: Path, hasher) -> None:  # noqa: ANN001
    with open(part, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:120] if text else type(e).__name__
