"""`mtx download`: fetch a dataset source into the state dir (resumable)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ._context import get_ctx
from .. import names
from ..names import listed
from ._options import Continue, Force, JsonOut, MaxFailureRate, RetryFailed, _complete_sources
from ._output import escape, make_table


def command(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Argument(help=f"Dataset source: {listed(names.SOURCES)}; omit with --phase or --stats.",
                                                 autocompletion=_complete_sources, show_default=False)] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="synth: number of clips.")] = 1000,
    duration: Annotated[float, typer.Option("--duration", min=0.1, help="synth: seconds per clip.")] = 10.0,
    sample_rate: Annotated[int, typer.Option("--sample-rate", min=8000, help="synth: sample rate in Hz.")] = 24000,
    seed: Annotated[int, typer.Option("--seed", help="synth: generator seed (same seed, same files).")] = 0,
    max_items: Annotated[int | None, typer.Option("--max-items", min=0, help="Stop after this many items.")] = None,
    subset: Annotated[str | None, typer.Option("--subset", help="Source-specific subset name.")] = None,
    mirror: Annotated[str | None, typer.Option("--mirror", help="Base URL of a mirror to download from.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1,
                                                help="Parallel workers (default: min(4, CPU count)).",
                                                show_default=False)] = None,
    rate_limit: Annotated[float, typer.Option("--rate-limit", min=0.0,
                                              help="Max requests per second (0 = unlimited).")] = 0.0,
    keep_archives: Annotated[bool, typer.Option("--keep-archives", help="Keep archives after extraction.")] = False,
    size: Annotated[str, typer.Option("--size", help="fma: small / medium / large / full.")] = "small",
    quality: Annotated[str, typer.Option("--quality", help="mtg-jamendo: low / raw audio quality.")] = "low",
    max_shards: Annotated[int | None, typer.Option("--max-shards", min=1,
                                                   help="Download at most this many archive shards.")] = None,
    path: Annotated[Path | None, typer.Option("--path", help="folder: directory of your own music.")] = None,
    dsn: Annotated[str | None, typer.Option("--dsn",
                                            help="audiomuse: PostgreSQL connection string (default: DATABASE_URL, "
                                                 "else POSTGRES_HOST/PORT/USER/PASSWORD/DB).",
                                            show_default=False)] = None,
    server: Annotated[str | None, typer.Option("--server", help="audiomuse: where audio comes from: jellyfin, "
                                                                "navidrome or local (default: MEDIASERVER_TYPE, "
                                                                "else local).",
                                               autocompletion=lambda incomplete: ["jellyfin", "navidrome", "local"],
                                               show_default=False)] = None,
    phase: Annotated[int | None, typer.Option("--phase", min=1, max=2,
                                              help="Download every source of a phase: 1 short clips, "
                                                   "2 full songs.")] = None,
    stats: Annotated[bool, typer.Option("--stats", help="Show what is downloaded (items, audio files, GB and "
                                                        "hours, measured from the files).")] = False,
    cont: Continue = False,
    retry_failed: RetryFailed = False,
    max_failure_rate: MaxFailureRate = 0.5,
    force: Force = False,
    as_json: JsonOut = False,
) -> None:
    """Download (or generate) a dataset into the state dir; interrupted runs resume with --continue.

    Every item is recorded in a ledger (ok / failed + reason); single failures never stop the
    download. With nothing pending and some items failed the download is complete with failures:
    they are listed, later stages use the dataset, and --retry-failed retries them. More than
    --max-failure-rate failed items, or a systemic error, fail the download (exit 1).
    """
    from ..download import dataset_stats, download_phase, run_downloads
    from ..sources.base import DownloadConfig
    from ..state import Resume

    app = get_ctx(ctx, json_mode=as_json)
    if stats:
        rows = dataset_stats(app.state)
        if not rows:
            app.out.info(f"no datasets downloaded in {escape(str(app.state.root / 'datasets'))}")
        app.out.table(make_table("Datasets on disk", ["source", "items", "ok", "failed", "audio files", "GB",
                                                      "hours"],
                                 [[r.source, r.items, r.ok, r.failed, r.audio_files, r.gb,
                                   r.hours if r.hours is not None else "?"] for r in rows]))
        app.out.result(rows)
        return
    if source is None and phase is None:
        raise typer.BadParameter("give a SOURCE, --phase 1|2 or --stats", param_hint="SOURCE")
    if source is not None and phase is not None:
        raise typer.BadParameter("give either a SOURCE or --phase, not both", param_hint="--phase")

    names = download_phase(phase) if phase is not None else [source]
    cfg = DownloadConfig(source=names[0], max_items=max_items, subset=subset, mirror=mirror,
                         workers=workers, rate_limit=rate_limit,
                         keep_archives=keep_archives, seed=seed, n=n, duration=duration,
                         sample_rate=sample_rate, size=size, quality=quality, max_shards=max_shards,
                         path=Path(os.path.abspath(path.expanduser())) if path else None,  # symlinks kept
                         dsn=dsn, server=server)
    target = f"--phase {phase}" if phase is not None else source
    with app.progress(resume_hint=f"mtx download {target} --continue") as progress:
        results = run_downloads(app.state, names, cfg, Resume.from_flags(cont or retry_failed, force), progress,
                                max_failure_rate=max_failure_rate)

    app.out.table(make_table("Download summary", ["source", "ok", "failed", "pending", "GB", "seconds", "status"],
                             [[r.source, r.ok, r.failed, r.pending, round(r.bytes / 1e9, 4), r.seconds,
                               ("already " if r.skipped else "") + r.status]
                              for r in results]))
    for r in results:
        app.out.info(f"{r.source}: {escape(str(r.root))}")
        if r.changes and not r.skipped:   # a rescanned library (folder): what changed since the last scan
            app.out.info(f"{r.source}: " + ", ".join(f"{v} {k}" for k, v in r.changes.items()))
    app.out.result(results)
    for r in results:
        if not r.failed:
            continue
        lines = [f"  {i}: {reason}" for i, reason in r.failures[:20]]
        more = f"\n  ... and {len(r.failures) - 20} more" if len(r.failures) > 20 else ""
        listing = f"{r.source}: {r.failed} item(s) failed:\n" + "\n".join(lines) + more
        if r.status == "complete-with-failures":
            app.out.info(f"[yellow]{escape(listing)}[/]\nlater stages use {r.source} without them; "
                         f"`mtx download {r.source} --retry-failed` retries them")
        else:
            app.out.error(listing, f"rerun `mtx download {r.source} --continue` to retry them")
    # Complete with failures is a usable dataset (exit 0); failed or unfinished sources exit 1.
    if any(r.status in ("failed", "partial") for r in results):
        raise typer.Exit(1)
