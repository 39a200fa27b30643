"""`mtx unify`: build one manifest from the downloaded datasets (sampled, split 80/10/10)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._context import get_ctx
from ._options import Continue, Force, JsonOut, Seed
from ._output import escape, make_table


def _split_list(values: list[str] | None) -> list[str] | None:
    """--datasets a,b --datasets c -> [a, b, c]."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()] or None


_RULES = {"tag": "from tags", "folder": "from the Artist/Album folder layout", "none": "without an artist",
          "file": "from the caption file"}


def command(
    ctx: typer.Context,
    datasets: Annotated[list[str] | None, typer.Option(
        "--datasets", "-d", help="Sources to include, comma list or repeated (default: every downloaded one).",
        show_default=False)] = None,
    max_samples: Annotated[int | None, typer.Option("--max-samples", min=1,
                                                    help="Total records to keep (default: all).")] = None,
    stratify_by: Annotated[str, typer.Option("--stratify-by", help="Balance the sample by dataset, duration "
                                                                   "or none.",
                                             autocompletion=lambda incomplete: ["dataset", "duration", "none"])
                           ] = "dataset",
    samples_per_dataset: Annotated[int | None, typer.Option("--samples-per-dataset", min=1,
                                                            help="Cap on records per dataset.")] = None,
    min_duration: Annotated[float | None, typer.Option("--min-duration", min=0.0,
                                                       help="Drop clips shorter than this (s).")] = None,
    max_duration: Annotated[float | None, typer.Option("--max-duration", min=0.0,
                                                       help="Drop clips longer than this (s).")] = None,
    seed: Seed = 0,
    name: Annotated[str, typer.Option("--name", "-n", help="Manifest name (manifests/<name>.json).")] = "default",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the composition; write nothing.")] = False,
    keep_official_splits: Annotated[bool, typer.Option("--keep-official-splits",
                                                       help="Keep train/val/test splits that sources define (a recording/artist "
                                                            "component whose official splits disagree goes to "
                                                            "the most held-out one: test, then val).")
                                    ] = False,
    captions: Annotated[str, typer.Option("--captions", help="For records without a human caption: tags "
                                                             "(synthesised from moods/features/tempo/key) or llm "
                                                             "(OPENAI_SERVER_URL / OPENAI_API_KEY / OPENAI_MODEL_NAME); "
                                                             "or a .csv/.jsonl FILE of your own captions and labels, "
                                                             "keyed by id or path (docs/reference/captions.md).",
                                          autocompletion=lambda incomplete: ["tags", "llm"])] = "tags",
    descriptions_per_song: Annotated[int, typer.Option("--descriptions-per-song", min=1,
                                                       help="--captions llm: descriptions per song (the first is "
                                                            "the caption, the rest alternatives).")] = 5,
    llm_concurrency: Annotated[int, typer.Option("--llm-concurrency", min=1,
                                                 help="--captions llm: requests in flight.")] = 4,
    cont: Continue = False,
    force: Force = False,
    as_json: JsonOut = False,
) -> None:
    """Merge downloaded datasets into one manifest with leak-free 80/10/10 splits (by recording and artist)."""
    from ..llm_captions import LLMConfig
    from ..state import Resume
    from ..unify import UnifyConfig, run_unify

    app = get_ctx(ctx, json_mode=as_json)
    caption_file = None
    if captions not in ("tags", "llm"):
        from ..caption_file import FORMATS

        if not captions.lower().endswith(tuple(FORMATS)):
            raise typer.BadParameter(f"{captions!r} is not one of tags, llm, or a caption file "
                                     f"({', '.join(FORMATS)})", param_hint="--captions")
        caption_file, captions = captions, "tags"
    if stratify_by not in ("dataset", "duration", "none"):
        raise typer.BadParameter(f"{stratify_by!r} is not one of dataset, duration, none",
                                 param_hint="--stratify-by")
    cfg = UnifyConfig(datasets=_split_list(datasets), max_samples=max_samples, stratify_by=stratify_by,
                      samples_per_dataset=samples_per_dataset, min_duration=min_duration,
                      max_duration=max_duration, seed=seed, name=name, dry_run=dry_run,
                      keep_official_splits=keep_official_splits, captions=captions, caption_file=caption_file,
                      descriptions_per_song=descriptions_per_song,
                      llm=LLMConfig(concurrency=llm_concurrency) if captions == "llm" else None,
                      resume=Resume.from_flags(cont, force))
    with app.progress(resume_hint="mtx unify --continue") as progress:
        result = run_unify(app.state, cfg, progress)

    rows = [[c.dataset, c.count, round(c.hours, 3), c.train, c.val, c.test] for c in result.composition]
    total = [sum(c.count for c in result.composition), round(sum(c.hours for c in result.composition), 3),
             sum(c.train for c in result.composition), sum(c.val for c in result.composition),
             sum(c.test for c in result.composition)]
    app.out.table(make_table(f"manifest {result.name}", ["dataset", "records", "hours", "train", "val", "test"],
                             rows + [["total", *total]]))
    for source, n_failed in result.download_failures.items():
        app.out.info(f"[yellow]{source}: {n_failed} item(s) failed to download and are not included[/] "
                     f"(`mtx download {source} --retry-failed` retries them)")
    if result.missing_audio:
        app.out.info(f"[yellow]{result.missing_audio} record(s) without an audio file were left out[/], e.g.:")
        for example in result.missing_examples:
            app.out.info(f"  {escape(example)}")
    if result.failed_verify:
        app.out.info(f"[yellow]{result.failed_verify} record(s) whose file `mtx verify` rejected were left out[/], "
                     "e.g.:")
        for example in result.failed_verify_examples:
            app.out.info(f"  {escape(example)}")
    if result.dropped_duration:
        app.out.info(f"{result.dropped_duration} record(s) outside the duration range were left out")
    if result.split_overridden:
        app.out.info(f"[yellow]{result.split_overridden} record(s) in {result.split_conflicts} recording/artist "
                     f"group(s) with conflicting official splits were moved to the most held-out split[/]")
    for source, rules in result.artist_sources.items():
        app.out.info(f"{source} artists: " + ", ".join(f"{n} {_RULES.get(rule, rule)}" for rule, n in rules.items()))
    for artist, n in result.dominant_artists:
        app.out.info(f"[yellow]artist {escape(str(artist))!r} holds {n} of {result.records} records: they all go "
                     f"to one split, so the splits cannot be balanced[/] (fix its artist tags, or give artists "
                     f"in a caption file: `--captions FILE`)")
    if result.folders:
        app.out.table(make_table("split by top-level folder", ["folder", "records", "hours", "train", "val", "test"],
                                 [[escape(c.dataset), c.count, round(c.hours, 3), c.train, c.val, c.test]
                                  for c in result.folders]))
    if result.caption_file is not None:
        m = result.caption_file
        labels = ", ".join(f"{f} ({n})" for f, n in sorted(m["labels"].items())) or "none"
        app.out.info(f"caption file {escape(m['file'])}: {m['matched']} of {m['rows']} row(s) matched; "
                     f"{m['captions']} record(s) took their captions from it; fields set: {escape(labels)}; "
                     f"{m['without_row']} scanned record(s) not in the file")
        if m["unknown"]:
            app.out.info(f"[yellow]{m['unknown']} row(s) name no scanned record and were ignored[/], e.g.:")
            for example in m["unknown_examples"]:
                app.out.info(f"  {escape(example)}")
    if result.llm is not None:
        m = result.llm
        app.out.info(f"captions: llm ({m['model']}): {m['records']} song(s), {m['calls']} call(s), {m['cached']} "
                     f"from the cache, {m['failed']} failed (kept their synthesised caption); tokens "
                     f"{m['prompt_tokens']} prompt + {m['completion_tokens']} completion")
    elif not result.skipped:
        app.out.info(f"captions: tags ({result.synthesised} synthesised from moods, features, tempo and key)"
                     if result.synthesised else "captions: tags (every record has its own caption)")
    if result.dry_run:
        app.out.info("dry run: nothing was written")
    elif result.skipped:
        app.out.info(f"already up to date: {escape(result.path)} (use --force to rebuild it)")
    else:
        app.out.info(f"wrote {result.records:,} records to {escape(result.path)}")
    app.out.result(result)
