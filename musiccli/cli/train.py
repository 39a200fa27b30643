"""`mtx train`: fit a text embedder to an audio encoder's embeddings."""

from __future__ import annotations

from typing import Annotated

import typer

from ._context import get_ctx
from ._options import _complete_encoders, Continue, Device, Force, JsonOut, Manifest, Precision, Seed
from ._output import make_table

# Kept in sync with musiccli.training.losses.LOSSES by a test; importing the registry here
# would pull torch into `mtx --help`.
LOSS_NAMES = ("combined", "infonce", "mse", "triplet", "listmle", "distillation")
# Kept in sync with musiccli.training.objectives.OBJECTIVES by a test (same reason).
OBJECTIVE_NAMES = ("align", "student")


def _complete_objectives(incomplete: str) -> list[str]:
    return [n for n in OBJECTIVE_NAMES if n.startswith(incomplete)]


def _complete_losses(incomplete: str) -> list[str]:
    from ..training.losses import LOSSES

    return [n for n in LOSSES if n.startswith(incomplete)]


def command(
    ctx: typer.Context,
    audio_encoder: Annotated[str | None, typer.Option(
        "--audio-encoder", "-e", help="Audio encoder whose store the text tower aligns to (--objective align).",
        autocompletion=_complete_encoders)] = None,
    manifest: Manifest = None,
    objective: Annotated[str, typer.Option("--objective", help=f"What to train: {', '.join(OBJECTIVE_NAMES)} "
                                           "(student: small mel-CNN music tower + text tower, distilled from "
                                           "--teachers).", autocompletion=_complete_objectives)] = "align",
    run: Annotated[str | None, typer.Option("--run", "-r", help="Run name; default: <audio-encoder>-<manifest>.")]
    = None,
    text_backbone: Annotated[str, typer.Option("--text-backbone", help="minilm, roberta, distilbert, "
                                               "a Hub id or a local path.")] = "minilm",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 10,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1,
                                                   help="Batch size (default: align 64, student 32).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (align: the backbone's, the head uses "
                                             "10x; default align 5e-5, student 1e-3).")] = None,
    loss: Annotated[str, typer.Option("--loss", help=f"Loss: {', '.join(LOSS_NAMES)}.",
                                      autocompletion=_complete_losses)] = "combined",
    temperature: Annotated[float, typer.Option("--temperature", help="InfoNCE temperature.")] = 0.07,
    learn_temperature: Annotated[bool, typer.Option("--learn-temperature",
                                                    help="Learn the temperature (log-parameterised).")] = False,
    mse_weight: Annotated[float, typer.Option("--mse-weight", help="Weight of MSE in the combined loss.")] = 0.1,
    patience: Annotated[int | None, typer.Option("--patience", min=1,
                                                 help="Stop after N epochs without val R@10 improvement.")] = None,
    head_hidden: Annotated[int, typer.Option("--head-hidden", min=1, help="Hidden width of the projection head.")]
    = 1024,
    max_length: Annotated[int, typer.Option("--max-length", min=8, help="Max caption tokens.")] = 64,
    freeze_embeddings: Annotated[bool, typer.Option("--freeze-embeddings/--train-embeddings",
                                                    help="Keep the backbone's token embeddings frozen "
                                                         "(about 3x faster steps on a CPU).")] = True,
    freeze_layers: Annotated[int, typer.Option("--freeze-layers", min=0,
                                               help="Also freeze the lowest N transformer layers.")] = 0,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    teacher: Annotated[str | None, typer.Option("--teacher", help="Distil a (smaller) --text-backbone student "
                                                "from this trained run.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", min=1,
                                                         help="Also checkpoint every N steps "
                                                              "(always at epoch end).")] = None,
    teachers: Annotated[str, typer.Option("--teachers", help="student: teacher stores NAME:WEIGHT,... "
                                          "(the design's pair is musicnn:0.3,clap:0.4).")] = "musicnn:0.3,dsp:0.4",
    contrastive_weight: Annotated[float, typer.Option("--contrastive-weight", min=0.0,
                                                      help="student: weight of music-text InfoNCE.")] = 0.3,
    distill_loss: Annotated[str, typer.Option("--distill-loss", help="student: mse or cosine, on standardised "
                                              "teacher vectors.")] = "mse",
    student_blocks: Annotated[int, typer.Option("--student-blocks", min=1, max=6,
                                                help="student: conv blocks (channels 32, 64, 128, ...).")] = 3,
    student_channels: Annotated[int, typer.Option("--student-channels", min=1,
                                                  help="student: channels of the first block.")] = 32,
    student_residual: Annotated[bool, typer.Option("--student-residual",
                                                   help="student: residual conv blocks.")] = False,
    crop: Annotated[float, typer.Option("--crop", min=0.1, help="student: seconds per random audio crop.")] = 30.0,
    text_tower: Annotated[str, typer.Option("--text-tower", help="student: mean (token mean) or transformer "
                                            "(2 layers, 4 heads).")] = "mean",
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=16, help="student: WordPiece vocabulary "
                                            "trained on the captions (3072 keeps the text ONNX under 8 MB).")]
    = 3072,
    num_workers: Annotated[int, typer.Option("--num-workers", min=0, help="student: audio/mel loader "
                                             "processes.")] = 2,
    cont: Continue = False,
    force: Force = False,
    as_json: JsonOut = False,
) -> None:
    """Train a text embedder into an audio encoder's space, or (--objective student) a small two-tower model."""
    from ..errors import MtxError
    from ..state import Resume
    from ..training import TrainConfig
    from ..training.objectives import get_objective

    app = get_ctx(ctx, json_mode=as_json)
    resume = Resume.from_flags(cont, force)
    obj = get_objective(objective)
    if objective == "student":
        from ..training.student import StudentTrainConfig

        cfg = StudentTrainConfig(
            manifest=manifest, run=run, teachers=teachers, contrastive_weight=contrastive_weight,
            distill_loss=distill_loss, temperature=temperature, epochs=epochs, batch_size=batch_size or 32,
            lr=lr if lr is not None else 1e-3, patience=patience, blocks=student_blocks,
            base_channels=student_channels, residual=student_residual, crop_s=crop, text_encoder=text_tower,
            vocab_size=vocab_size, max_length=max_length, seed=seed, device=device, precision=precision,
            num_workers=num_workers, checkpoint_every=checkpoint_every, resume=resume)
    elif audio_encoder is None:
        raise MtxError("--audio-encoder is required for --objective align",
                       hint="e.g. mtx train --audio-encoder dsp, or mtx train --objective student")
    else:
        cfg = TrainConfig(audio_encoder=audio_encoder, manifest=manifest, run=run, text_backbone=text_backbone,
                      epochs=epochs, batch_size=batch_size or 64, lr=lr if lr is not None else 5e-5, loss=loss,
                      temperature=temperature,
                      learn_temperature=learn_temperature, mse_weight=mse_weight, patience=patience, seed=seed,
                      head_hidden=head_hidden, max_length=max_length, freeze_embeddings=freeze_embeddings,
                      freeze_layers=freeze_layers, device=device, precision=precision, teacher=teacher, checkpoint_every=checkpoint_every,
                      resume=resume)

    def on_epoch(e: dict) -> None:
        val = "-" if e["val_loss"] is None else f"{e['val_loss']:.4f}"
        r10 = "-" if e["val_R@10"] is None else f"{e['val_R@10']:.3f}"
        star = " [green]*best[/]" if e["best"] else ""
        cosines = "".join(f", {k[len('val_cosine_'):]} cos {v:.3f}" for k, v in e.items()
                          if k.startswith("val_cosine_") and v is not None)
        app.out.info(f"epoch {e['epoch']}/{epochs}: train loss {e['epoch_train_loss']:.4f}, "
                     f"val loss {val}, val R@10 {r10}{cosines}{star}")

    with app.progress(resume_hint="mtx train --continue (with the same options)") as progress:
        result = obj.runner()(app.state, cfg, progress, on_epoch=on_epoch)

    if result.skipped:
        app.out.info(f"run {result.run} is already complete (use --force to train it again)")
    rows = [["run", result.run], ["loss", result.loss], ["epochs", result.epochs_done], ["steps", result.steps],
            ["best epoch", result.best_epoch], ["best val R@10", result.best_val_r10],
            ["final train loss", result.final_train_loss], ["final val loss", result.final_val_loss]]
    if not result.skipped:
        rows += [["steps/s", result.steps_per_s], ["seconds", result.seconds]]
    if result.stopped_early:
        rows.append(["stopped early", "yes (patience)"])
    app.out.table(make_table("Training", ["", "value"], rows))
    app.out.info(f"saved to {result.run_dir}")
    app.out.result(result)
