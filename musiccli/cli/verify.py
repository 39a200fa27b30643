"""`mtx verify`: check a downloaded source file by file; exit 1 below the success threshold."""

from __future__ import annotations

from typing import Annotated

import typer

from ._context import get_ctx
from ._options import Continue, Force, JsonOut, Source
from ._output import make_table

SHOW_BAD = 20


def command(
    ctx: typer.Context,
    source: Source,
    min_success: Annotated[float, typer.Option("--min-success", min=0.0, max=1.0,
                                               help="Fraction of files that must be fine to pass.")] = 0.9,
    workers: Annotated[int | None, typer.Option("--workers", min=1, show_default=False,
                                                help="Checker threads (default: min(8, CPU count)).")] = None,
    duration_tolerance: Annotated[float | None, typer.Option(
        "--duration-tolerance", min=0.0, help="Allowed duration error in seconds (default: per source).",
        show_default=False)] = None,
    cont: Continue = False,
    force: Force = False,
    as_json: JsonOut = False,
) -> None:
    """Check every downloaded file: exists, decodes fully, duration, sample rate and checksum.

    Bad files are listed (never fatal); the command exits 1 when the share of good files
    is below --min-success.
    """
    from ..state import Resume
    from ..verify import PROBLEMS, VerifyConfig, run_verify

    app = get_ctx(ctx, json_mode=as_json)
    cfg = VerifyConfig(source=source, min_success=min_success, workers=workers,
                       duration_tolerance=duration_tolerance, resume=Resume.from_flags(cont, force))
    with app.progress(resume_hint=f"mtx verify {source} --continue") as progress:
        report = run_verify(app.state, cfg, progress)

    counts = report.counts()
    app.out.table(make_table(f"verify {report.source}", ["check", "files"],
                             [[k, counts[k]] for k in ("ok", *PROBLEMS)] + [["total", report.total]]))
    if report.bad:
        rows = [[b.id, b.problem, b.detail, b.path] for b in report.bad[:SHOW_BAD]]
        app.out.table(make_table("bad files", ["id", "problem", "detail", "path"], rows))
        if len(report.bad) > SHOW_BAD:
            app.out.info(f"... and {len(report.bad) - SHOW_BAD} more bad files (see --json for all)")
    if report.skipped:
        app.out.info("(already verified with the same inputs; use --force to check again)")
    app.out.result(report)
    rate = f"{report.success_rate:.1%}"
    if report.passed:
        app.out.info(f"[green]passed:[/] {rate} of {report.total} files are fine (threshold {min_success:.0%})")
        return
    app.out.error(f"verify failed: {rate} of {report.total} files are fine, below the "
                  f"--min-success threshold of {min_success:.0%}",
                  f"re-download the bad files with `mtx download {source} --force`, "
                  "or lower --min-success")
    raise typer.Exit(1)
