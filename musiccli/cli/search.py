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
    query: Annotated[str | None, typer.Argument(help="What to look for, e.g. \"dark ambient drone with choir\" "
                                                   "(optional with --like).")] = None,
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
    like: Annotated[str | None, typer.Option("--like", help="Find tracks that sound like this: a track id of "
                                                            "the library, or an audio file (embedded with the "
                                                            "library's encoder).")] = None,
    mix: Annotated[float, typer.Option("--mix", min=0.0, max=1.0, help="With --like and a query: the text's "
                                                                       "weight (0 = only --like, 1 = only text).")
                   ] = 0.5,
    max_per_artist: Annotated[int | None, typer.Option("--max-per-artist", min=1,
                                                       help="At most N results by one artist.")] = None,
    where: Annotated[str | None, typer.Option("--where", help="Only tracks whose metadata pass this filter, e.g. "
                                                              "\"duration < 600 and genre != 'Christmas'\" (fields: "
                                                              "artist, album, title, genre, year, duration, "
                                                              "dataset, path).")] = None,
    exclude_artist: Annotated[list[str] | None, typer.Option("--exclude-artist",
                                                             help="Leave out this artist (repeatable).")] = None,
    negative: Annotated[str | None, typer.Option("--not", help="Move the query away from this described sound, "
                                                               "e.g. --not \"drums\".")] = None,
    not_weight: Annotated[float, typer.Option("--not-weight", min=0.0, max=1.0,
                                              help="How far --not moves the query.")] = 0.5,
    backend: Annotated[str, typer.Option("--backend", "-b", help="auto (exact below 200k tracks, else ann), "
                                                                 "exact, ann (FAISS) or milvus.",
                                         autocompletion=completer(names.INDEX_BACKENDS))
                       ] = "auto",
    uri: Annotated[str | None, typer.Option("--uri", help="With --backend milvus: a Milvus Lite file (*.db) or a "
                                                          "server URL (http://host:19530); default: a Milvus "
                                                          "Lite file in the index folder.")] = None,
    query_runtime: Annotated[str, typer.Option("--query-runtime", help="auto: the run's ONNX export when it "
                                                                       "matches the checkpoint, else PyTorch; "
                                                                       "onnx or torch to insist.",
                                               autocompletion=completer(names.QUERY_RUNTIMES))
                             ] = "auto",
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="With a run: best or latest (default: best if saved).",
        autocompletion=completer(names.CHECKPOINTS))] = None,
    m3u: Annotated[Path | None, typer.Option("--m3u", help="Also write the results as an M3U playlist "
                                                           "(missing folders are created).")] = None,
    m3u_paths: Annotated[str, typer.Option("--m3u-paths", help="absolute (as the library was given), relative "
                                                               "(to --m3u-root, else the M3U's folder) or server "
                                                               "(the media server's own paths).")] = "absolute",
    m3u_root: Annotated[Path | None, typer.Option("--m3u-root", help="With --m3u-paths relative: the player's "
                                                                     "music folder; with server: the prefix for "
                                                                     "relative server paths.")] = None,
    playlist: Annotated[str | None, typer.Option("--playlist", help="Also create (or replace) this playlist on "
                                                                      "the media server with the hits.")] = None,
    server: Annotated[str | None, typer.Option("--server", help="With --playlist: jellyfin or navidrome "
                                                                "(default: MEDIASERVER_TYPE).",
                                               autocompletion=completer(names.MEDIA_SERVERS))] = None,
    device: Device = "auto",
    cont: Annotated[bool, typer.Option("--continue", help="Finish an interrupted index build, then search.")
                    ] = False,
    force: Annotated[bool, typer.Option("--force", "--rebuild", help="Rebuild the index before searching.")
                     ] = False,
    allow_degenerate_text: Annotated[bool, typer.Option(
        "--allow-degenerate-text", help="With --text-model native: use a text tower even when unrelated prompts "
                                        "embed to nearly the same vector (mean pairwise cosine > 0.99).")] = False,
    as_json: JsonOut = False,
) -> None:
    """Search the library with text, a track or file to sound like, or both. The index is built on first use and
    rebuilt when the run or store changes."""
    from ..playlists import M3U_PATHS, write_m3u
    from ..search import SearchConfig, search
    from ..state import Resume

    app = get_ctx(ctx, json_mode=as_json)
    if m3u_paths not in M3U_PATHS:
        raise typer.BadParameter(f"{m3u_paths!r}: choose one of {', '.join(M3U_PATHS)}", param_hint="--m3u-paths")
    if m3u is not None and m3u.is_dir():
        raise typer.BadParameter(f"{m3u} is a directory; give the playlist's file name, e.g. {m3u / 'results.m3u'}",
                                 param_hint="--m3u")
    resume = Resume.from_flags(cont, force)
    cfg = SearchConfig(query=query, run=run, index=index, k=k, device=device, rebuild=resume is Resume.FORCE,
                       text_model=text_model, audio_encoder=audio_encoder, manifest=manifest, model=model,
                       resume=resume, like=like, mix=mix, max_per_artist=max_per_artist,
                       where=where, exclude_artists=list(exclude_artist or []), negative=negative,
                       not_weight=not_weight, backend=backend, uri=uri,
                       query_runtime=query_runtime, checkpoint=checkpoint, playlist=playlist, server=server,
                       allow_degenerate_text=allow_degenerate_text)
    with app.progress(resume_hint="mtx search ... --continue (with the same options)") as progress:
        result = search(app.state, cfg, progress)
    source = f"run {result.run}" if result.text_model == "run" else \
        f"the native {result.encoder} text tower ({result.model_id})"
    app.out.info(escape(f"using {source}, index {result.index} ({result.backend})") + (" (updated in place)" if result.index_updated else " (rebuilt)" if result.rebuilt else "")
                 + f"; query encoded with {result.query_runtime}")
    for note in result.notes:
        app.out.info(escape(note))
    for line in result.warnings:
        app.out.warn(line)
    rows = []
    for h in result.hits:
        name = " - ".join(x for x in (h["artist"], h["title"]) if x) or h["id"]
        tags = ", ".join(h["tags"][:MAX_TAGS]) + (", ..." if len(h["tags"]) > MAX_TAGS else "")
        rows.append([h["rank"], round(h["score"], 4), name, h["dataset"] or "", tags, h["audio_path"] or ""])
    title = " + ".join(x for x in (f"\"{query}\"" if query else None, f"like {like}" if like else None) if x)
    table = make_table(escape(title), ["rank", "score", "track", "dataset", "tags", "path"], rows)
    for col in table.columns:
        col.overflow = "fold"   # wrap long titles and paths instead of cutting them off with "..."
    app.out.table(table)
    if m3u is not None:
        app.out.info(f"playlist: {escape(str(write_m3u(m3u, result.hits, paths=m3u_paths, root=m3u_root)))}")
    if result.playlist is not None:
        p = result.playlist
        app.out.info(f"{p['server']} playlist {p['name']!r} {'created' if p['created'] else 'replaced'}: "
                     f"{p['tracks']} track(s)" + (f", {len(p['unmapped'])} hit(s) without a server id left out"
                                                  if p["unmapped"] else ""))
    app.out.result(result)
