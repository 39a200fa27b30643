"""`mtx search`: find music in an indexed library with a text query."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._context import get_ctx
from .. import names
from ..names import completer, listed
from ._options import Device, JsonOut, Manifest, Run
from ._output import escape, make_table

MAX_TAGS = 4


def _complete_indexes(incomplete: str) -> list[str]:
    from ..search import list_indexes
    from ._options import _state_from_env

    return [n for n in list_indexes(_state_from_env()) if n.startswith(incomplete)]


def command(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for, e.g. \"dark ambient drone with choir\".")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Number of results.")] = 10,
    run: Run = None,
    text_model: Annotated[str, typer.Option(
        "--text-model", "-t", help="run: the run's trained text embedder; native: the audio encoder's own "
                                   "text tower (clap, muq), no training needed.",
        autocompletion=lambda incomplete: ["run", "native"])] = "run",
    audio_encoder: Annotated[str | None, typer.Option(
        "--audio-encoder", "-e", help="With --text-model native: whose text tower and embeddings "
                                      f"({listed(names.NATIVE_TEXT_ENCODERS)}).",
        autocompletion=completer(names.NATIVE_TEXT_ENCODERS))] = None,
    manifest: Manifest = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="With --text-model native: tower checkpoint (Hub id or path); default: the one the "
                        "library was embedded with.")] = None,
    index: Annotated[str | None, typer.Option("--index", "-i", help="Index name; default <run>--<manifest> "
                                                                      "(native: native-<encoder>--<manifest>).",
                                              autocompletion=_complete_indexes)] = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="With a run: best or latest (default: best if saved).",
        autocompletion=completer(names.CHECKPOINTS))] = None,
    m3u: Annotated[Path | None, typer.Option("--m3u", help="Also write the results as an M3U playlist "
                                                           "(missing folders are created).")] = None,
    playlist: Annotated[str | None, typer.Option("--playlist", help="Also create (or replace) this playlist on "
                                                                      "the media server with the hits.")] = None,
    server: Annotated[str | None, typer.Option("--server", help="With --playlist: jellyfin or navidrome "
                                                                "(default: MEDIASERVER_TYPE).",
                                               autocompletion=lambda incomplete: ["jellyfin", "navidrome"])] = None,
    device: Device = "auto",
    cont: Annotated[bool, typer.Option("--continue", help="Finish an interrupted index build, then search.")
                    ] = False,
    force: Annotated[bool, typer.Option("--force", "--rebuild", help="Rebuild the index before searching.")
                     ] = False,
    as_json: JsonOut = False,
) -> None:
    """Search the library with text. The index is built on first use and rebuilt when the run or store changes."""
    from ..search import SearchConfig, search, write_m3u
    from ..state import Resume

    app = get_ctx(ctx, json_mode=as_json)
    if m3u is not None and m3u.is_dir():
        raise typer.BadParameter(f"{m3u} is a directory; give the playlist's file name, e.g. {m3u / 'results.m3u'}",
                                 param_hint="--m3u")
    resume = Resume.from_flags(cont, force)
    cfg = SearchConfig(query=query, run=run, index=index, k=k, device=device, rebuild=resume is Resume.FORCE,
                       text_model=text_model, audio_encoder=audio_encoder, manifest=manifest, model=model,
                       checkpoint=checkpoint, resume=resume, playlist=playlist, server=server)
    with app.progress(resume_hint=f"mtx search {query!r} --continue") as progress:
        result = search(app.state, cfg, progress)
    source = f"run {result.run}" if result.text_model == "run" else \
        f"the native {result.encoder} text tower ({result.model_id})"
    app.out.info(escape(f"using {source}, index {result.index}") + (" (rebuilt)" if result.rebuilt else ""))
    for line in result.warnings:
        app.out.warn(line)
    rows = []
    for h in result.hits:
        name = " - ".join(x for x in (h["artist"], h["title"]) if x) or h["id"]
        tags = ", ".join(h["tags"][:MAX_TAGS]) + (", ..." if len(h["tags"]) > MAX_TAGS else "")
        rows.append([h["rank"], round(h["score"], 4), name, h["dataset"] or "", tags, h["audio_path"] or ""])
    table = make_table(escape(f"\"{query}\""), ["rank", "score", "track", "dataset", "tags", "path"], rows)
    for col in table.columns:
        col.overflow = "fold"   # wrap long titles and paths instead of cutting them off with "..."
    app.out.table(table)
    if m3u is not None:
        app.out.info(f"playlist: {escape(str(write_m3u(m3u, result.hits)))}")
    if result.playlist is not None:
        p = result.playlist
        app.out.info(f"{p['server']} playlist {p['name']!r} {'created' if p['created'] else 'replaced'}: "
                     f"{p['tracks']} track(s)" + (f", {len(p['unmapped'])} hit(s) without a server id left out"
                                                  if p["unmapped"] else ""))
    app.out.result(result)
