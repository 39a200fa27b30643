"""`mtx demo`: the whole pipeline on the embedded synthetic dataset, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._context import get_ctx
from ._options import Continue, Device, Force, Precision, Seed, _complete_encoders
from ._output import escape, make_table


def command(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=20, help="Number of synthetic clips.")] = 1000,
    duration: Annotated[float, typer.Option("--duration", min=1.0, help="Clip length in seconds.")] = 10.0,
    audio_encoder: Annotated[str | None, typer.Option(
        "--audio-encoder", "-e", autocompletion=_complete_encoders,
        help="Audio encoder [default: musicnn when the musicnn wheel is installed, else dsp].")] = None,
    text_backbone: Annotated[str, typer.Option("--text-backbone", help="minilm (offline), an HF id or a path.")
                             ] = "minilm",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 8,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes for generation/decoding.")] = 2,
    query: Annotated[list[str] | None, typer.Option("--query", help="Extra search queries (repeatable).")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    cont: Continue = False,
    force: Force = False,
) -> None:
    """Run download -> verify -> unify -> embed -> train -> eval -> export -> search offline on `synth`.

    Uses --state-dir if given, else a fresh `./mtx-demo` directory (never your main state dir).
    """
    from ..demo import DEFAULT_QUERIES, DemoConfig, run_demo
    from ..state import Resume, StateDir

    app = get_ctx(ctx)
    state = app.state if app.state_root else StateDir.resolve(Path("mtx-demo"))
    cfg = DemoConfig(n=n, duration=duration, audio_encoder=audio_encoder, text_backbone=text_backbone, epochs=epochs,
                     workers=workers, queries=(*DEFAULT_QUERIES, *(query or [])), seed=seed, device=device,
                     precision=precision, resume=Resume.from_flags(cont, force))
    with app.progress(resume_hint="rerun `mtx demo` with the same options and --continue") as progress:
        result = run_demo(state, cfg, progress)

    for q, hits in result.searches.items():
        app.out.table(make_table(f'search: "{q}"', ["#", "score", "title", "artist", "tags"],
                                 [[h["rank"], h["score"], h.get("title") or h["id"], h.get("artist") or "",
                                   ", ".join((h.get("tags") or [])[:5])] for h in hits]))
    if result.sentences is not None:
        app.out.table(make_table("sentence queries (test split)", ["query", "P@10"],
                                 [[q, p] for q, p in zip(result.sentences.queries, result.sentences.per_query)]))
    app.out.table(make_table("stages", ["stage", "seconds", "summary"],
                             [[s.stage, s.seconds, s.summary + (" (already done)" if s.skipped else "")]
                              for s in result.stages]))
    app.out.table(make_table("quality checks (test split)", ["check", "value", "target", "ok"],
                             [[c.name, c.value, c.target, "yes" if c.passed else "NO"] for c in result.checks]))
    app.out.info(f"state dir: {escape(str(result.state_dir))}   export: {escape(str(result.export_dir))}   total {result.seconds:.0f} s")
    app.out.info(f"This demo shows the pipeline and its resume contract. Its model learned only from "
                 f"{escape(result.trained_on or 'synthetic clips')}: it is not a search model for real music, where "
                 "it ranks near chance. For your own library, train on real captioned data (`mtx download "
                 "musiccaps`, `mtx unify`, `mtx train`) or search with `--text-model native` and clap or muq.")
    app.out.info("next: mtx --state-dir " + result.state_dir + ' search "dark metal"')
    if not result.passed:
        app.out.error("the demo finished but some quality checks failed", "see the table above")
        raise typer.Exit(1)
