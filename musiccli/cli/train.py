"""`mtx train`: fit a text embedder (and, for joint runs, an audio tower) to an audio encoder's embeddings,
or (--objective student) a small two-tower model distilled from teacher stores."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import names
from ..names import listed
from ._context import get_ctx
from ._options import (Continue, Device, Force, JsonOut, Manifest, Precision, Seed, _complete_backbones,
                       _complete_encoders, _complete_losses)
from ._output import escape, make_table

# Kept in sync with the registries (LOSSES, OBJECTIVES, TEXT_REPS, TRACKERS, RECIPES) by a test;
# importing them here would pull torch into `mtx --help`.
LOSS_NAMES = ("combined", "infonce", "mse", "triplet", "listmle", "distillation")
OBJECTIVE_NAMES = ("align", "joint", "student")
TEXT_REP_NAMES = ("caption", "tag", "stochastic", "mixed", "blend")
POOLING_NAMES = ("mean", "cls", "layers")
TRACKER_NAMES = ("none", "tensorboard", "wandb")
RECIPE_NAMES = ("navidrome",)
STUDENT_TEXT_TOWERS = ("mean", "transformer")


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:  # also refuses NaN (None: the objective's default)
        raise typer.BadParameter(f"must be a positive number (got {value})")
    return value


def _temperature(value: float) -> float:
    if not value > 0:  # also refuses NaN
        raise typer.BadParameter(f"must be a positive number (got {value}): the similarities are divided by it; "
                                 "0.07 is CLIP's, --learn-temperature learns it")
    return value


def _choices(names: tuple[str, ...]):
    return lambda incomplete: [n for n in names if n.startswith(incomplete)]


def _opt(*names: str, help: str, **kw):
    return typer.Option(*names, help=help, **kw)


def command(
    ctx: typer.Context,
    audio_encoder: Annotated[str | None, _opt("--audio-encoder", "-e", help="Audio encoder whose store the towers "
                                              f"train on: {listed(names.AUDIO_ENCODERS)} (align and joint; a "
                                              "student reads audio and --teachers).",
                                              autocompletion=_complete_encoders)] = None,
    manifest: Manifest = None,
    run: Annotated[str | None, _opt("--run", "-r", help="Run name; default: <audio-encoder>-<manifest>.")] = None,
    objective: Annotated[str | None, _opt("--objective", help=f"What trains: {', '.join(OBJECTIVE_NAMES)} (align: "
                                          "text into the frozen audio space; joint: both towers into a shared "
                                          "space; student: small mel-CNN music tower + text tower, distilled from "
                                          "--teachers). Default: align, or the --init-from run's.",
                                          autocompletion=_choices(OBJECTIVE_NAMES))] = None,
    joint_dim: Annotated[int | None, _opt("--joint-dim", min=2, help="Joint objective: width of the shared "
                                          "space (default: 128).")] = None,
    recipe: Annotated[str | None, _opt("--recipe", help="Per-encoder defaults for backbone, pooling and batch "
                                       f"size ({', '.join(RECIPE_NAMES)}); explicit flags still win.",
                                       autocompletion=_choices(RECIPE_NAMES))] = None,
    text_backbone: Annotated[str | None, _opt("--text-backbone", help="minilm, roberta, distilbert, a Hub id or "
                                              "a local path (default: recipe or minilm).",
                                              autocompletion=_complete_backbones)] = None,
    text_pooling: Annotated[str | None, _opt("--text-pooling", help=f"{', '.join(POOLING_NAMES)} (layers: every "
                                             "hidden layer mean-pooled and concatenated) (default: recipe or mean).",
                                             autocompletion=_choices(POOLING_NAMES))] = None,
    text_rep: Annotated[str, _opt("--text-rep", help=f"Training text: {', '.join(TEXT_REP_NAMES)} (stochastic: "
                                  "k ~ U{1..L} tags joined; mixed: caption, alt caption, tags or 'title by artist'; "
                                  "blend: caption, tags or a sentence from a subset of the clip's own tags).",
                                  autocompletion=_choices(TEXT_REP_NAMES))] = "caption",
    epochs: Annotated[int, _opt("--epochs", min=1, help="Training epochs.")] = 10,
    batch_size: Annotated[int | None, _opt("--batch-size", "-b", min=1, help="Batch size per process and "
                                           "sub-batch (default: recipe or 64; student 32).")] = None,
    accum_steps: Annotated[int, _opt("--accum-steps", min=1, help="GradCache: each step is N sub-batches with "
                                     "the exact gradients of one N x larger batch.")] = 1,
    lr: Annotated[float | None, _opt("--lr", help="Backbone learning rate (default 5e-5; student 1e-3).",
                                     callback=_positive)] = None,
    head_lr_mult: Annotated[float, _opt("--head-lr-mult", min=0.0, help="Heads learn at lr x this.")] = 10.0,
    weight_decay: Annotated[float | None, _opt("--weight-decay", min=0.0, help="AdamW weight decay "
                                               "(default 0.01; student 1e-4).")] = None,
    warmup_ratio: Annotated[float | None, _opt("--warmup-ratio", min=0.0, max=1.0, help="Linear warmup share of "
                                               "the steps, then cosine decay (default 0.1; student 0.05).")] = None,
    loss: Annotated[str | None, _opt("--loss", help=f"Loss: {', '.join(LOSS_NAMES)}, or a combination such as "
                                     "infonce+0.5*listmle (default: combined for align, infonce for joint).",
                                     autocompletion=_complete_losses)] = None,
    temperature: Annotated[float, _opt("--temperature", callback=_temperature,
                                       help="InfoNCE / ListMLE temperature.")] = 0.07,
    learn_temperature: Annotated[bool, _opt("--learn-temperature",
                                            help="Learn the temperature (log-parameterised).")] = False,
    mse_weight: Annotated[float, _opt("--mse-weight", help="Weight of MSE in the combined loss.")] = 0.1,
    margin: Annotated[float, _opt("--margin", help="Triplet loss margin.")] = 0.2,
    distill_metric: Annotated[str, _opt("--distill-metric", help="Distillation point loss: mse or cosine.",
                                        autocompletion=_choices(("mse", "cosine")))] = "mse",
    distill_kl_weight: Annotated[float, _opt("--distill-kl-weight", min=0.0, help="Weight of the in-batch "
                                             "similarity KL in distillation (0 = off).")] = 1.0,
    head_hidden: Annotated[int, _opt("--head-hidden", min=1, help="Hidden width of the projection heads.")] = 1024,
    dropout: Annotated[float, _opt("--dropout", min=0.0, max=1.0, help="Dropout in the heads.")] = 0.1,
    freeze_embeddings: Annotated[bool, _opt("--freeze-embeddings/--train-embeddings",
                                            help="Keep the backbone's token embeddings frozen "
                                                 "(about 3x faster steps on a CPU).")] = True,
    freeze_layers: Annotated[int, _opt("--freeze-layers", min=0,
                                       help="Also freeze the lowest N transformer layers.")] = 0,
    grad_checkpointing: Annotated[bool, _opt("--grad-checkpointing", help="Recompute backbone activations in "
                                             "backward (less memory, slower steps).")] = False,
    max_length: Annotated[int, _opt("--max-length", min=8, help="Max caption tokens.")] = 64,
    grad_clip: Annotated[float, _opt("--grad-clip", min=0.0, help="Clip the gradient norm (0 = off).")] = 1.0,
    patience: Annotated[int | None, _opt("--patience", min=1,
                                         help="Stop after N epochs without val R@10 improvement.")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    teacher: Annotated[str | None, _opt("--teacher", help="Distil a (smaller) --text-backbone student "
                                        "from this trained run.")] = None,
    init_from: Annotated[str | None, _opt("--init-from", help="Start from another run's weights: RUN, RUN:best "
                                          "or RUN:latest (fresh optimiser and schedule); native: the audio "
                                          "encoder's own text tower (clap), which the run adapts.")] = None,
    library: Annotated[bool, _opt("--library", help="Adapt a text tower to your synced library: its tags, "
                                  "AudioMuse-AI moods and playlist names as captions, splits that keep artists "
                                  "and albums whole, --init-from native where the encoder has a tower, --text-rep "
                                  "blend; refused when the library is too thinly labelled. `mtx eval` then "
                                  "reports the lift over zero-shot.")] = False,
    checkpoint_every: Annotated[int | None, _opt("--checkpoint-every", min=1,
                                                 help="Also checkpoint every N steps (always at epoch end).")] = None,
    eval_every: Annotated[int | None, _opt("--eval-every", min=1, help="Also validate every N steps "
                                           "(logged; best/ is still chosen at epoch ends).")] = None,
    report_to: Annotated[str, _opt("--report-to", help=f"Experiment tracker: {', '.join(TRACKER_NAMES)} "
                                   "(metrics.jsonl is always written).",
                                   autocompletion=_choices(TRACKER_NAMES))] = "none",
    val_split: Annotated[str, _opt("--val-split", help="Split used for validation: train, val or test.",
                                   autocompletion=_choices(("train", "val", "test")))] = "val",
    use_alt_captions: Annotated[bool, _opt("--alt-captions/--no-alt-captions",
                                           help="Draw from alternative captions too.")] = True,
    teachers: Annotated[str | None, _opt("--teachers", help="student: teacher stores NAME:WEIGHT,... (default "
                                         "musicnn:0.3,dsp:0.4; the design's pair is musicnn:0.3,clap:0.4).")] = None,
    contrastive_weight: Annotated[float, _opt("--contrastive-weight", min=0.0,
                                              help="student: weight of music-text InfoNCE.")] = 0.3,
    distill_loss: Annotated[str, _opt("--distill-loss", help="student: mse or cosine, on standardised teacher "
                                      "vectors.", autocompletion=_choices(("mse", "cosine")))] = "mse",
    student_blocks: Annotated[int, _opt("--student-blocks", min=1, max=6,
                                        help="student: conv blocks (channels 32, 64, 128, ...).")] = 3,
    student_channels: Annotated[int, _opt("--student-channels", min=1,
                                          help="student: channels of the first block.")] = 32,
    student_residual: Annotated[bool, _opt("--student-residual", help="student: residual conv blocks.")] = False,
    crop: Annotated[float, _opt("--crop", min=0.1, help="student: seconds per random audio crop.")] = 30.0,
    text_tower: Annotated[str, _opt("--text-tower", help="student: mean (token mean) or transformer "
                                    "(2 layers, 4 heads).", autocompletion=_choices(STUDENT_TEXT_TOWERS))] = "mean",
    vocab_size: Annotated[int, _opt("--vocab-size", min=16, help="student: WordPiece vocabulary trained on the "
                                    "captions (3072 keeps the text ONNX under 8 MB).")] = 3072,
    num_workers: Annotated[int, _opt("--num-workers", min=0, help="student: audio/mel loader processes.")] = 2,
    mel_cache: Annotated[bool, _opt("--mel-cache", help="student: compute each track's log-mel once into "
                                    "<state>/cache/mel and crop from it (hop-aligned crops, real audio at crop "
                                    "edges: not bit-identical to uncached training).")] = False,
    text_teacher: Annotated[str | None, _opt("--text-teacher", help="student: distil the text tower from an "
                                             "align run's text embedder, RUN or RUN:WEIGHT (default weight 0.3); "
                                             "its audio encoder must be one of --teachers.")] = None,
    export: Annotated[bool, _opt("--export/--no-export",
                                 help="Export the ONNX towers at the end (exports/<run>/best/onnx), so "
                                      "`mtx search` starts without PyTorch.")] = True,
    cont: Continue = False,
    force: Force = False,
    as_json: JsonOut = False,
) -> None:
    """Train a text embedder whose vectors land in the audio encoder's space (or a joint space), or
    (--objective student) a small two-tower model."""
    from ..state import Resume
    from ..training import TrainConfig, run_train

    app = get_ctx(ctx, json_mode=as_json)
    cfg = TrainConfig(
        audio_encoder=audio_encoder, manifest=manifest, run=run, objective=objective, joint_dim=joint_dim,
        recipe=recipe, text_backbone=text_backbone, text_pooling=text_pooling, text_rep=text_rep, epochs=epochs,
        batch_size=batch_size, accum_steps=accum_steps, lr=lr, head_lr_mult=head_lr_mult, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, loss=loss, temperature=temperature, learn_temperature=learn_temperature,
        mse_weight=mse_weight, margin=margin, distill_metric=distill_metric, distill_kl_weight=distill_kl_weight,
        head_hidden=head_hidden, dropout=dropout, freeze_embeddings=freeze_embeddings, freeze_layers=freeze_layers,
        grad_checkpointing=grad_checkpointing, max_length=max_length, grad_clip=grad_clip or None,
        patience=patience, seed=seed, device=device, precision=precision, checkpoint_every=checkpoint_every,
        eval_every=eval_every, report_to=report_to, teacher=teacher, init_from=init_from, val_split=val_split,
        use_alt_captions=use_alt_captions, teachers=teachers, contrastive_weight=contrastive_weight,
        distill_loss=distill_loss, student_blocks=student_blocks, student_channels=student_channels,
        student_residual=student_residual, crop=crop, text_tower=text_tower, vocab_size=vocab_size,
        num_workers=num_workers, mel_cache=mel_cache, text_teacher=text_teacher, export=export, library=library,
        resume=Resume.from_flags(cont, force))

    def on_epoch(e: dict) -> None:
        val = "-" if e["val_loss"] is None else f"{e['val_loss']:.4f}"
        r10 = "-" if e["val_R@10"] is None else f"{e['val_R@10']:.3f}"
        star = " [green]*best[/]" if e["best"] else ""
        cosines = "".join(f", {k[len('val_cosine_'):]} cos {v:.3f}" for k, v in e.items()
                          if k.startswith("val_cosine_") and v is not None)
        cosines += "".join(f", {k[len('val_text_cosine_'):]} text cos {v:.3f}" for k, v in e.items()
                           if k.startswith("val_text_cosine_") and v is not None)
        app.out.info(f"epoch {e['epoch']}/{epochs}: train loss {e['epoch_train_loss']:.4f}, "
                     f"val loss {val}, val R@10 {r10}{cosines}{star}")

    with app.progress(resume_hint="mtx train --continue (with the same options)") as progress:
        result = run_train(app.state, cfg, progress, on_epoch=on_epoch)

    if result.skipped:
        app.out.info(f"run {result.run} is already complete (use --force to train it again)")
    rows = [["run", result.run], ["objective", result.objective], ["loss", result.loss],
            ["epochs", result.epochs_done], ["steps", result.steps], ["best epoch", result.best_epoch],
            ["best val R@10", result.best_val_r10], ["final train loss", result.final_train_loss],
            ["final val loss", result.final_val_loss]]
    if not result.skipped:
        rows += [["steps/s", result.steps_per_s], ["seconds", result.seconds]]
    if result.stopped_early:
        rows.append(["stopped early", "yes (patience)"])
    app.out.table(make_table("Training", ["", "value"], rows))
    app.out.info(f"saved to {escape(str(result.run_dir))}")
    if result.logs:
        app.out.info(f"{report_to} logs: {result.logs}")
    if result.onnx:
        app.out.info(f"ONNX export: {escape(str(result.onnx))}")
    elif export and not result.skipped and result.onnx_note:
        app.out.info(f"no ONNX export ({escape(result.onnx_note)}); search will use PyTorch")
    app.out.result(result)
