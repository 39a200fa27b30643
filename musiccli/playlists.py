"""Search hits back onto the user's media server as a playlist (``mtx search --playlist``).

Hits carry mtx record ids (``audiomuse:<item_id>``); the server needs its own track ids. The
library manifest of the index holds them (``server_item_id``, recorded by ``mtx download
audiomuse`` from ``score.item_id`` or ``track_server_map.provider_track_id``). Hits without a
server id (tracks from other datasets) are left out and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MtxError
from .manifest import read_manifest
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
    mpath = Path(meta.get("manifest_path") or "")
    if not mpath.is_file():
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
    client = make_server(server)
    ids, unmapped = server_ids_for(state, index, [h["id"] for h in hits])
    if not ids:
        raise MtxError(f"none of the {len(hits)} hit(s) has a {client.kind} track id",
                       hint="playlists work for libraries imported with `mtx download audiomuse`")
    res = client.save_playlist(name, ids)
    log.info("%s playlist %r (%s): %d track(s)%s", client.kind, name, "created" if res.created else "replaced",
             res.tracks, f", {len(unmapped)} hit(s) without a server id left out" if unmapped else "")
    return PlaylistOutcome(client.kind, name, res.playlist_id, res.tracks, res.created, unmapped)


__all__ = ["PlaylistOutcome", "save_playlist", "server_ids_for"]


def _m3u_text(text: str) -> str:
    """``text`` on one line: control characters (newlines included) become spaces."""
    return "".join(c if c.isprintable() else " " for c in text)


def write_m3u(path: Path, hits: list[dict[str, Any]]) -> Path:
    """Extended M3U playlist of the hits (``#EXTINF:seconds,artist - title``), written atomically."""
    lines = ["#EXTM3U"]
    for h in hits:
        if not h.get("audio_path"):
            continue
        dur = h.get("duration")
        secs = int(round(float(dur))) if dur is not None else -1
        label = " - ".join(x for x in (h.get("artist"), h.get("title")) if x) or h["id"]
        # One entry is exactly two lines: a newline in a tag or path must not inject lines.
        lines += [f"#EXTINF:{secs},{_m3u_text(label)}", _m3u_text(str(h["audio_path"]))]
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
