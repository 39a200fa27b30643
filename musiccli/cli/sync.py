"""`mtx sync PATH`: scan a music folder and keep its manifest, embeddings and search index up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._context import get_ctx
from ._options import AudioEncoder, BatchSize, Device, JsonOut, MaxFailureRate
from ._output import escape, make_table


def command(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The folder that holds your music (files stay where they are).")],
    audio_encoder: AudioEncoder = "clap",
    manifest: Annotated[str, typer.Option("--name", "-n", help="Library name (manifests/<name>.json).")] = "library",
    model: Annotated[str | None, typer.Option("--model", help="The encoder's checkpoint (hub id or local path); "
                                                              "default: the encoder's own.")] = None,
    device: Device = "auto",
    batch_size: BatchSize = 64,
    num_workers: Annotated[int | None, typer.Option("--workers", "--num-workers", min=0,
                                                    help="Decoding worker processes (default: 2 on CPU).")] = None,
    no_index: Annotated[bool, typer.Option("--no-index", help="Do not update the search index.")] = False,
    max_failure_rate: MaxFailureRate = 0.5,
    as_json: JsonOut = False,
) -> None:
    """Scan a music folder and bring the library up to date: only new and changed files are embedded.

    Runs scan -> verify -> unify -> embed -> index, each incrementally: files added, changed, moved
    and removed since the last sync are found by path, size and mtime (confirmed by a content hash),
    a moved file keeps its identity, and a second sync with nothing changed runs no encoder. Safe to
    run from cron or a systemd timer; an interrupted sync resumes where it stopped. Then
    `mtx search "dark metal"` searches the library with the encoder's own text tower (no training).
    """
    from ..sync import SyncConfig, run_sync

    app = get_ctx(ctx, json_mode=as_json)
    cfg = SyncConfig(path=path, audio_encoder=audio_encoder, manifest=manifest, model=model, device=device,
                     batch_size=batch_size, num_workers=num_workers, index=not no_index,
                     max_failure_rate=max_failure_rate)
    with app.progress(resume_hint=f"mtx sync {path}") as progress:
        result = run_sync(app.state, cfg, progress)

    counts = result.counts()
    app.out.table(make_table(f"sync {escape(result.path)}", list(counts), [list(counts.values())]))
    if result.nothing_changed:
        app.out.info(f"nothing changed: {result.tracks:,} track(s) up to date, the encoder did not run")
    else:
        app.out.info(f"manifest {escape(result.manifest)}: {result.tracks:,} track(s); the {result.encoder} encoder "
                     f"ran on {result.embedded:,} of them; {result.seconds:.1f} s in all")
    for id_, why in result.failures[:10]:
        app.out.info(f"  [yellow]failed[/] {escape(id_)}: {escape(why)}")
    if result.index:
        app.out.info(f'search it: mtx search "dark metal"  (index {escape(result.index)})')
    elif result.index_note:
        app.out.info(escape(result.index_note))
    app.out.result(counts)
