"""Search hits back onto the user's media server as a playlist (``mtx search --playlist``).

Hits carry mtx record ids (``audiomuse:<item_id>``); the server needs its own track ids. The
library manifest of the index holds them (``server_item_id``, recorded by ``mtx download
audiomuse`` from ``score.item_id`` or ``track_server_map.provider_track_id``). Hits without a
server id (tracks from other datasets) are left out and counted.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MtxError, unknown_choice
from .manifest import from_state_dir, read_manifest
from .mediaserver import make_server
from .state import StateDir, atomic_write_text, read_json

log = logging.getLogger(__name__)


@dataclass
class PlaylistOutcome:
    server: str
    name: str
    playlist_id: str
    tracks: int
    created: bool
    unmapped: list[str] = field(default_factory=list)   # hit ids with no server id


def server_ids_for(state: StateDir, index: str, hit_ids: list[str]) -> tuple[list[str], list[str]]:
    """(server ids in hit order, hit ids that have none) from the index's library manifest."""
    meta = read_json(state.index_dir(index) / "meta.json")
    # Index metadata stores paths inside the state dir relative to it (a moved state dir keeps working).
    mpath = Path(from_state_dir(str(meta.get("manifest_path") or ""), state.root))
    if not meta.get("manifest_path") or not mpath.is_file():
        raise MtxError(f"the library manifest of index {index!r} is gone ({mpath})",
                       hint="rebuild the index with `mtx search --force`")
    by_id = {r.id: r for r in read_manifest(mpath)}
    mapped, unmapped = [], []
    for hid in hit_ids:
        rec = by_id.get(hid)
        sid = rec.extra.get("server_item_id") if rec is not None else None
        (mapped.append(str(sid)) if sid else unmapped.append(hid))
    return list(dict.fromkeys(mapped)), unmapped


def save_playlist(state: StateDir, index: str, hits: list[dict[str, Any]], name: str,
                  server: str | None) -> PlaylistOutcome:
    if not name.strip():
        raise MtxError("empty playlist name", hint='pass --playlist "Rainy day"')
    client = make_server(server, state_root=state.root)
    if client.kind == "local":
        client.save_playlist(name, [])   # refuses: says how to configure a server (or use --m3u)
    ids, unmapped = server_ids_for(state, index, [h["id"] for h in hits])
    if not ids:
        raise MtxError(f"none of the {len(hits)} hit(s) has a {client.kind} track id",
                       hint="playlists work for libraries imported with `mtx download audiomuse`")
    res = client.save_playlist(name, ids)
    log.info("%s playlist %r (%s): %d track(s)%s", client.kind, name, "created" if res.created else "replaced",
             res.tracks, f", {len(unmapped)} hit(s) without a server id left out" if unmapped else "")
    return PlaylistOutcome(client.kind, name, res.playlist_id, res.tracks, res.created, unmapped)


__all__ = ["M3U_PATHS", "PlaylistOutcome", "m3u_entry", "save_playlist", "server_ids_for", "write_m3u"]


def _m3u_text(text: str) -> str:
    """``text`` on one line: control characters (newlines included) become spaces."""
    return "".join(c if c.isprintable() else " " for c in text)


M3U_PATHS = ("absolute", "relative", "server")


def m3u_entry(hit: dict[str, Any], paths: str = "absolute", root: str | Path | None = None,
              base: str | Path | None = None) -> str | None:
    """The path line for one hit, or None when it has no path in that mode.

    Paths are written as the library was given, never through ``realpath``: a player whose music
    folder is a symlink (MPD's ``music_directory``) matches entries by that folder's own path.
    - ``absolute``: the hit's path, made absolute against the current folder;
    - ``relative``: relative to ``root`` (a player's music folder; default ``base``, the M3U's
      folder); a file outside an explicit ``root`` has no entry;
    - ``server``: the media server's own path of the track (``server_path``, recorded by `mtx
      download audiomuse`), under ``root`` when the server's path is relative (Subsonic).
    """
    if paths == "server":
        sp = hit.get("server_path")
        if not sp:
            return None
        if root is not None and not sp.startswith("/") and not re.match(r"^[A-Za-z]:[\\/]", sp):
            return posixpath.join(str(root).rstrip("/"), sp)
        return sp
    ap = hit.get("audio_path")
    if not ap:
        return None
    full = os.path.abspath(os.path.expanduser(str(ap)))
    if paths == "absolute":
        return full
    start = os.path.abspath(os.path.expanduser(str(root if root is not None else base or ".")))
    rel = os.path.relpath(full, start)
    if root is not None and (rel == os.pardir or rel.startswith(os.pardir + os.sep)):
        return None
    return rel


def write_m3u(path: Path, hits: list[dict[str, Any]], *, paths: str = "absolute",
              root: str | Path | None = None) -> Path:
    """Extended M3U playlist of the hits (``#EXTINF:seconds,artist - title``), written atomically.

    ``paths`` is one of :data:`M3U_PATHS` (see :func:`m3u_entry`); hits with no entry in that
    mode are left out, with a warning that counts them.
    """
    if paths not in M3U_PATHS:
        raise unknown_choice("M3U path mode", paths, M3U_PATHS)
    path = Path(path)
    lines = ["#EXTM3U"]
    missing = 0
    for h in hits:
        entry = m3u_entry(h, paths, root, base=path.parent)
        if entry is None:
            missing += h.get("audio_path") is not None or paths == "server"
            continue
        dur = h.get("duration")
        secs = int(round(float(dur))) if dur is not None else -1
        label = " - ".join(x for x in (h.get("artist"), h.get("title")) if x) or h.get("id") or ""
        # One entry is exactly two lines: a newline in a tag or path must not inject lines.
        lines += [f"#EXTINF:{secs},{_m3u_text(label)}", _m3u_text(entry)]
    if missing:
        why = {"server": "no media-server path (only `mtx download audiomuse` libraries have one)",
               "relative": f"outside {root}"}.get(paths, "no path")
        log.warning("M3U %s: %d hit(s) left out: %s", path.name, missing, why)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
