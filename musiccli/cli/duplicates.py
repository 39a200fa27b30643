"""`mtx duplicates`: the same recording stored more than once (re-encodes, other rips, byte copies)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import names
from ..names import completer, listed
from ._context import get_ctx
from ._options import JsonOut, Manifest
from ._output import escape, make_table


def command(
    ctx: typer.Context,
    manifest: Manifest = None,
    audio_encoder: Annotated[str | None, typer.Option(
        "--audio-encoder", "-e", help=f"Whose embeddings to compare ({listed(names.AUDIO_ENCODERS)}); default: "
                                      "one with a measured threshold that the manifest was embedded with.",
        autocompletion=completer(names.AUDIO_ENCODERS))] = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="Cosine similarity at or above which two tracks are the same recording "
                            "(default: the encoder's measured threshold).", show_default=False)] = None,
    duration_tolerance: Annotated[float, typer.Option(
        "--duration-tolerance", min=0.0, help="Seconds two copies may differ in length (or 2%, if larger).")] = 2.0,
    identical_only: Annotated[bool, typer.Option(
        "--identical-only", help="Only byte-identical copies (no embeddings needed).")] = False,
    m3u: Annotated[Path | None, typer.Option("--m3u", help="Also write every group's files to this M3U playlist.",
                                             dir_okay=False)] = None,
    as_json: JsonOut = False,
) -> None:
    """Find the same recording stored more than once: FLAC and MP3 of one rip, other rips, byte copies.

    Reads the library's manifest and its stored embeddings (run `mtx sync` or `mtx embed` first);
    nothing is decoded. Groups never join two different songs: every pair in a group is alike.
    """
    from ..duplicates import DuplicatesConfig, m3u_hits, run_duplicates
    from ..playlists import write_m3u

    app = get_ctx(ctx, json_mode=as_json)
    cfg = DuplicatesConfig(manifest=manifest, encoder=audio_encoder, threshold=threshold,
                           duration_tolerance=duration_tolerance, identical_only=identical_only)
    with app.progress() as progress:
        result = run_duplicates(app.state, cfg, progress)
    if m3u is not None:
        write_m3u(m3u, m3u_hits(result))
    rows = []
    for n, g in enumerate(result.groups, 1):
        for it in g.items:
            rate = f"{it.bitrate} kb/s" if it.bitrate else ""
            rows.append([str(n), f"{g.similarity:.4f}" if g.kind == "audio" else "identical",
                         escape(it.artist or ""), escape(it.title or ""), it.format, rate, escape(it.path)])
    if rows:
        app.out.table(make_table(f"duplicates in {result.manifest}",
                                 ["group", "similarity", "artist", "title", "format", "bitrate", "path"], rows))
    how = (f"{result.encoder} embeddings, threshold {result.threshold:.4f} ({result.threshold_source})"
           if result.encoder else result.threshold_source)
    app.out.info(f"{len(result.groups)} group(s), {result.duplicate_files} file(s) beyond one copy each, "
                 f"among {result.tracks} tracks; {how}")
    if result.without_embeddings:
        app.out.info(f"{result.without_embeddings} track(s) have no embedding and were compared by bytes only")
    if m3u is not None:
        app.out.info(f"wrote {m3u}")
    app.out.result(result)
