"""The one URL redaction used by every log line, error, ledger entry and ``--json`` output.

A URL loses its userinfo (``user:password@``) and the values of query parameters that carry
secrets (``token``, ``key``, ``password``, ``sig``, ``signature`` and their common spellings
such as ``access_token``, ``api_key`` or ``X-Amz-Signature``). Everything else is kept, so a
redacted URL still says which host and file were meant.
"""

from __future__ import annotations

import re
import urllib.parse

REDACTED = "REDACTED"
SECRET_PARAMS = frozenset({"token", "key", "password", "sig", "signature", "secret", "auth", "pass", "pwd",
                           "access_token", "api_key", "apikey", "auth_token", "client_secret", "credential",
                           "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature"})
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>`]+")


def _secret(name: str) -> bool:
    n = name.lower()
    return n in SECRET_PARAMS or n.endswith(("_token", "-token", "_key", "-key", "_secret", "password", "signature"))


def redact_url(url: str) -> str:
    """``url`` without credentials: no userinfo, secret query values replaced by ``REDACTED``."""
    try:
        p = urllib.parse.urlsplit(url)
    except ValueError:
        return "<malformed URL>"
    netloc = p.netloc.rsplit("@", 1)[-1] if "@" in p.netloc else p.netloc
    query = p.query
    if query:
        parts = []
        for piece in query.split("&"):
            name, eq, _value = piece.partition("=")
            parts.append(f"{name}={REDACTED}" if eq and _secret(urllib.parse.unquote_plus(name)) else piece)
        query = "&".join(parts)
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, query, p.fragment))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` redacted (for messages that embed URLs)."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact_obj(obj):
    """``obj`` (JSON-like: dicts, lists, strings) with every URL in every string redacted."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(URL without userinfo, (user, password) or None): credentials in a mirror URL become HTTP basic auth."""
    p = urllib.parse.urlsplit(url)
    if "@" not in p.netloc:
        return url, None
    userinfo, host = p.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit((p.scheme, host, p.path, p.query, p.fragment))
    return bare, (urllib.parse.unquote(user), urllib.parse.unquote(password))
