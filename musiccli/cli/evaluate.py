"""`mtx eval`: retrieval metrics of a trained run next to random, untrained and native-text-tower baselines."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .. import names
from ..names import completer
from ._context import get_ctx
from ._options import BatchSize, Checkpoint, Continue, Device, Force, JsonOut, Manifest, Precision, Run, Seed
from ._output import escape, make_table

METRICS = ("R@1", "R@5", "R@10", "mAP@10", "MRR", "MedR", "MedR0")


def command(
    ctx: typer.Context,
    run: Run = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate: train, val or test.")] = "test",
    checkpoint: Checkpoint = "best",
    manifest: Manifest = None,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines",
                                            help="Also score random and untrained baselines, and the audio "
                                                 "encoder's own text tower (clap, muq).")] = True,
    zero_shot: Annotated[list[str] | None, typer.Option(
        "--zero-shot", help="Zero-shot classification of a label field (repeatable): a record field (style, "
                            "mood, instruments, genre_top), a tag family (genre---, mood/theme---, "
                            "instrument---) or `folder` (label/*.wav layout).")] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="How class names become text: raw, clap "
                                                         "(\"This audio is a {} song.\") or ensemble.",
                                        autocompletion=completer(names.PROMPTS))] = "raw",
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNGs and report.html next to the "
                                                                   "JSON report.")] = True,
    query_protocol: Annotated[str, typer.Option("--query-protocol",
                                                help="Text queries: 'main' (each distinct main caption) or "
                                                     "'all' (every caption, the Song Describer protocol).")
                              ] = "main",
    batch_size: BatchSize = 64,
    device: Device = "auto",
    precision: Precision = "auto",
    seed: Seed = 0,
    cont: Continue = False,
    force: Force = False,
    as_json: JsonOut = False,
) -> None:
    """Evaluate a run: text->music and music->text retrieval (R@K, AP@10, MRR, MedR), tag ROC/PR-AUC,
    optional zero-shot classification with a linear probe, and pictures in report.html.

    Default: the newest trained run, its manifest's test split, the best checkpoint.
    """
    from ..evaluate import MIN_TAG_POSITIVES, EvalConfig, run_eval
    from ..state import Resume

    app = get_ctx(ctx, json_mode=as_json)
    if query_protocol not in ("main", "all"):
        raise typer.BadParameter(f"{query_protocol!r} is not one of main, all", param_hint="--query-protocol")
    cfg = EvalConfig(query_protocol=query_protocol, run=run, split=split, manifest=manifest, checkpoint=checkpoint, batch_size=batch_size,
                     device=device, precision=precision, baselines=baselines, seed=seed,
                     resume=Resume.from_flags(cont, force), zero_shot=tuple(zero_shot or ()), prompt=prompt,
                     plots=plots)
    with app.progress(resume_hint="mtx eval --continue") as progress:
        result = run_eval(app.state, cfg, progress)
    rep = result.report
    if result.skipped:
        app.out.info(f"eval of run {result.run} ({result.checkpoint}, {result.split}) is up to date")
    app.out.table(make_table(f"run {result.run}, {result.split} split, {result.checkpoint} checkpoint",
                             *report_table(rep)))
    c = rep.get("counts", {})
    app.out.info(f"{c.get('tracks', 0)} tracks, {c.get('text_queries', 0)} text queries, "
                 f"{c.get('distinct_captions', 0)} distinct captions, tags used {c.get('tags_used', 0)} "
                 f"(skipped {c.get('tags_skipped', 0)}: < {MIN_TAG_POSITIVES} positives or no negatives); "
                 f"query protocol {rep.get('protocol', {}).get('query_protocol', 'main')}; MedR is 1-based, "
                 "MedR0 0-based")
    leaks = rep.get("leak_check") or {}
    if leaks.get("dropped_training_records"):
        app.out.info(f"[yellow]{leaks['dropped_training_records']} {result.split} record(s) were training records "
                     f"of this run and were left out[/]")
    line = lift_line(rep)
    if line:
        app.out.info(line)
    for system, note in (rep.get("baseline_notes") or {}).items():
        app.out.info(f"{system} baseline {note}")
    for d, r in (rep.get("ratio_r10_model_vs_random") or {}).items():
        if r is not None:
            app.out.info(f"{d.replace('_', ' ')}: model R@10 is {r:.2f}x random")
    if rep.get("zero_shot"):
        from ..plots import zero_shot_rows

        zs = rep["zero_shot"]
        app.out.table(make_table(f"zero-shot classification, prompt {escape(str(zs['prompt']))}",
                                 *zero_shot_rows(rep)))
    for teacher, cos in (rep.get("teacher_cosine") or {}).items():
        app.out.info(f"cosine to teacher {teacher}: {cos:.3f} (the student design's goal: > 0.7)")
    for teacher, cos in (rep.get("text_teacher_cosine") or {}).items():
        app.out.info(f"text tower cosine to the text teacher ({teacher} space): {cos:.3f}")
    for other, r in (rep.get("teacher_space_text_embedders") or {}).items():
        res = r.get("results")
        app.out.info(f"teacher-space text embedder {other} ({r['audio_encoder']}): " + (
            f"text->music R@10 {res['text_to_music']['R@10']:.3f}, tag ROC-AUC {res['tags'].get('roc_auc', 0):.3f}"
            if res else r.get("note", "")))
    app.out.info(f"report: {escape(str(result.path))}")
    if result.html is not None:
        app.out.info(f"report with pictures: {escape(str(result.html))}")
    for line in result.warnings:
        app.out.warn(line)
    app.out.result({**rep, "warnings": result.warnings})


def report_table(rep: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Rows = metrics per task; columns = the systems that were scored."""
    results = rep.get("results", {})
    # The trained model first, next to the zero-shot tower it should beat, then the floor baselines.
    systems = [s for s in ("model", "native", "untrained", "random") if s in results]
    rows: list[list[Any]] = []
    for task, label in (("text_to_music", "text->music"), ("music_to_text", "music->text")):
        for m in METRICS:
            rows.append([f"{label} {m}", *[results[s][task].get(m) for s in systems]])
    for m, label in (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")):
        rows.append([f"tags {label}", *[results[s].get("tags", {}).get(m) for s in systems]])
    if any("tag_music_p@10" in results[s] for s in systems):
        rows.append(['"<tag> music" P@10', *[(results[s].get("tag_music_p@10") or {}).get("mean") for s in systems]])
    return ["metric", *systems], rows


def lift_line(rep: dict[str, Any]) -> str | None:
    """One line: the lift over the zero-shot (or untrained) baseline, and what search does with it."""
    lifted = rep.get("lift")
    if not lifted:
        return None
    parts = []
    for key, label in (("tag_roc_auc", "tag ROC-AUC"), ("tag_ap", "tag AP"), ("tag_music_p@10", '"<tag> music" P@10')):
        d = lifted["metrics"][key]["lift"]
        if d is not None:
            parts.append(f"{label} {d:+.3f}")
    verdict = ("[green]beats it[/]" if lifted["beats_baseline"] else
               "[yellow]no lift: `mtx search` keeps the native tower[/]" if lifted["baseline"] == "native"
               else "[yellow]no lift[/]")
    return f"lift over the {lifted['baseline']} baseline: {', '.join(parts) or '-'}; {verdict}"
