"""`mtx embed`: run a frozen audio encoder over a manifest into an HDF5 embedding store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ._context import AppContext, get_ctx
from .. import names
from ..names import completer
from ._options import (AudioEncoder, BatchSize, Continue, Device, Force, JsonOut, Manifest, MaxFailureRate,
                       Precision, RetryFailed, _complete_aggregations)
from ._output import escape, make_table

if TYPE_CHECKING:
    from ..tagging import TagSummary

SHOWN_FAILURES = 5


def _parse_options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--encoder-option")
        out[key.strip()] = value.strip()
    return out


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers",
                                 param_hint="--layers") from None


def _show_tags(app: AppContext, summary: TagSummary) -> None:
    # make_table escapes cell text itself.
    rows = [[t.label, ", ".join(f"{name} {p:.2f}" for name, p in t.top)] for t in summary.tracks]
    title = f"top tags (first {len(summary.tracks)} of {summary.n_tracks} tracks)"
    app.out.table(make_table(title, ["track", "tags (probability)"], rows))
    common = [[name, count] for name, count in summary.top1_counts]
    app.out.table(make_table("most frequent top-1 tags", ["tag", "tracks"], common))


def _retry_command(encoder: str, manifest: str | None, tags: bool) -> str:
    return (f"mtx embed --audio-encoder {encoder}" + (f" --manifest {manifest}" if manifest else "")
            + (" --tags" if tags else "") + " --retry-failed")


def command(
    ctx: typer.Context,
    audio_encoder: AudioEncoder = "dsp",
    manifest: Manifest = None,
    model: Annotated[str | None, typer.Option("--model", help="Model id or local path [default: the "
                                                              "encoder's default].")] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="Hidden layers to keep, comma separated "
                                                                "(e.g. 0,6,12; negative counts from the end).")
                      ] = None,
    encoder_option: Annotated[list[str] | None, typer.Option(
        "--encoder-option", "-O", help="Encoder-specific KEY=VALUE (repeatable), e.g. "
                                       "music2latent representation=latent.")] = None,
    aggregation: Annotated[str | None, typer.Option(
        "--aggregation", help="mean, stats ([mean, robust_sigma, dmean], 3x dim) or none (keep windows) "
                              "[default: the encoder's].",
        autocompletion=_complete_aggregations)] = None,
    window: Annotated[float | None, typer.Option("--window", min=0.0, help="Window length in seconds "
                                                                           "[default: the encoder's].")] = None,
    hop: Annotated[float | None, typer.Option("--hop", min=0.0, help="Hop between windows in seconds "
                                                                     "[default: the encoder's].")] = None,
    max_windows: Annotated[int | None, typer.Option("--max-windows", min=1,
                                                    help="At most this many windows per track, spread evenly "
                                                         "over the whole track.")] = None,
    batch_size: BatchSize = 64,
    num_workers: Annotated[int | None, typer.Option("--workers", "--num-workers", min=0,
                                                    help="Decoding worker processes [default: 2 on CPU, up to "
                                                         "8 with a GPU].")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype: float32 or float16.",
                                       autocompletion=completer(names.DTYPES))] = "float32",
    device: Device = "auto",
    precision: Precision = "auto",
    shard: Annotated[str | None, typer.Option("--shard", help="Embed only shard K of N (K/N); the last shard "
                                                              "to finish assembles the store.")] = None,
    chunk_tracks: Annotated[int, typer.Option("--chunk-tracks", min=1,
                                              help="Tracks per committed unit (resume granularity).")] = 128,
    tags: Annotated[bool, typer.Option("--tags", help="Also store zero-shot tag probabilities per track "
                                                      "(tag_probs; encoders with a tagger, e.g. musicnn) "
                                                      "and show the top tags. On a finished store without "
                                                      "tags, computes only the tags, beside it.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Let the model run Python code from its own repository. MERT needs it "
                                    "(the official m-a-p/MERT-v1-* checkpoints ship their model code); "
                                    "off by default, use it only for repos you trust.")] = False,
    max_failure_rate: MaxFailureRate = 0.5,
    cont: Continue = False,
    retry_failed: RetryFailed = False,
    force: Force = False,
    as_json: JsonOut = False,
) -> None:
    """Embed every track of a manifest with a frozen audio encoder (default: dsp, offline, no weights).

    Writes <state>/embeddings/<encoder>/<manifest>.h5. Work is committed every --chunk-tracks tracks, so
    Ctrl-C or a crash loses at most one chunk: resume with --continue. A store that is complete with
    failed tracks is kept: --retry-failed embeds only those tracks and merges them in. After the manifest
    changes (`mtx unify` over a rescanned library), rerunning embeds only new and changed tracks
    (rows are keyed by track id and content hash), drops removed ones and keeps every other row.
    """
    from ..embed import EmbedConfig, run_embed
    from ..encoders import get_spec
    from ..state import Resume

    app = get_ctx(ctx, json_mode=as_json)
    get_spec(audio_encoder)  # an unknown name fails here with the list of choices
    cfg = EmbedConfig(
        audio_encoder=audio_encoder, manifest=manifest, model=model, layers=_parse_layers(layers),
        aggregation=aggregation, window=window, hop=hop, max_windows=max_windows, batch_size=batch_size,
        num_workers=num_workers, dtype=dtype, device=device, precision=precision, shard=shard,
        chunk_tracks=chunk_tracks, tags=tags, encoder_options=_parse_options(encoder_option or []),
        trust_remote_code=trust_remote_code,
        max_failure_rate=max_failure_rate, resume=Resume.from_flags(cont or retry_failed, force),
    )
    hint = (f"mtx embed --audio-encoder {audio_encoder}" + (f" --shard {shard}" if shard else "")
            + (" --tags" if tags else "") + " --continue")
    with app.progress(resume_hint=hint) as progress:
        result = run_embed(app.state, cfg, progress)

    if result.tags_only and not result.skipped:
        app.out.info(f"embeddings already complete: {escape(str(result.path))}; computed the zero-shot tags only "
                     f"(kept in {escape(str(result.tags_path))})")
    elif result.skipped and result.n_failed:
        app.out.info(f"already complete with {result.n_failed} failed track(s): {escape(str(result.path))} "
                     f"(`{escape(_retry_command(audio_encoder, manifest, tags))}` embeds only those)")
    elif result.skipped and retry_failed:
        app.out.info(f"nothing to retry: {escape(str(result.path))} is complete and no track failed")
    elif result.skipped:
        app.out.info(f"already complete: {escape(str(result.path))}; nothing changed, no track was embedded "
                     "(use --force to redo it)")
    elif result.retried:
        app.out.info(f"retried {result.retried} failed track(s): {result.retried - result.n_failed} embedded and "
                     f"merged into {escape(str(result.path))}, {result.n_failed} still fail")
    elif result.updated:
        app.out.info(f"updated {escape(str(result.path))} in place: {result.embedded} new or changed track(s) "
                     "embedded, every other row kept")
    rows = [["store", str(result.path) if result.assembled else f"{result.path} (pending other shards)"],
            ["encoder", result.encoder], ["manifest", result.manifest], ["dim", result.dim],
            ["tagged" if result.tags_only else "embedded", result.n_ok], ["failed", result.n_failed]]
    if result.tags_path is not None:
        rows.insert(1, ["tags", str(result.tags_path)])
    if not result.skipped:
        rows.append(["clips/s", result.clips_per_s])
    app.out.table(make_table(None, ["embed", ""], rows))
    if result.failures:
        app.out.info(f"[yellow]{result.n_failed} track(s) failed[/] (all listed in --json output; "
                     f"first {min(SHOWN_FAILURES, len(result.failures))}):")
        for id_, why in result.failures[:SHOWN_FAILURES]:
            app.out.info(f"  {escape(id_)}: {escape(why)}")
    if result.tag_summary is not None:
        _show_tags(app, result.tag_summary)
    if not result.assembled:
        app.out.info("this shard is done; the store is assembled when every shard has finished "
                     "(or run `mtx embed --continue` without --shard)")
    app.out.result(result.to_dict())
