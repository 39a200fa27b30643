"""`mtx train`: fit a text embedder to an audio encoder's embeddings."""

from __future__ import annotations

from typing import Annotated

import typer

from ._context import get_ctx
from .. import names
from ..names import listed
from ._options import (AudioEncoder, BatchSize, Continue, Device, Force, JsonOut, Manifest, Precision, Seed,
                       _complete_backbones, _complete_losses)
from ._output import escape, make_table

# musiccli.names mirrors the LOSSES registry (checked by a test); importing the registry here
# would pull torch into `mtx --help`.
LOSS_NAMES = names.LOSSES


def _positive(value: float) -> float:
    if not value > 0:  # also refuses NaN
        raise typer.BadParameter(f"must be a positive number (got {value})")
    return value


def command(
    ctx: typer.Context,
    audio_encoder: AudioEncoder,
    manifest: Manifest = None,
    run: Annotated[str | None, typer.Option("--run", "-r", help="Run name; default: <audio-encoder>-<manifest>.")]
    = None,
    text_backbone: Annotated[str, typer.Option("--text-backbone", help=f"{', '.join(names.TEXT_BACKBONES)}, "
                                               "a Hub id or a local path.",
                                               autocompletion=_complete_backbones)] = "minilm",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 10,
    batch_size: BatchSize = 64,
    lr: Annotated[float, typer.Option("--lr", help="Backbone learning rate (the head uses 10x).",
                                      callback=_positive)] = 5e-5,
    loss: Annotated[str, typer.Option("--loss", help=f"Loss: {listed(LOSS_NAMES)}.",
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
    cont: Continue = False,
    force: Force = False,
    as_json: JsonOut = False,
) -> None:
    """Train a text embedder whose vectors land in the audio encoder's embedding space."""
    from ..state import Resume
    from ..training import TrainConfig, run_train

    app = get_ctx(ctx, json_mode=as_json)
    cfg = TrainConfig(audio_encoder=audio_encoder, manifest=manifest, run=run, text_backbone=text_backbone,
                      epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, temperature=temperature,
                      learn_temperature=learn_temperature, mse_weight=mse_weight, patience=patience, seed=seed,
                      head_hidden=head_hidden, max_length=max_length, freeze_embeddings=freeze_embeddings,
                      freeze_layers=freeze_layers, device=device, precision=precision, teacher=teacher, checkpoint_every=checkpoint_every,
                      resume=Resume.from_flags(cont, force))

    def on_epoch(e: dict) -> None:
        val = "-" if e["val_loss"] is None else f"{e['val_loss']:.4f}"
        r10 = "-" if e["val_R@10"] is None else f"{e['val_R@10']:.3f}"
        star = " [green]*best[/]" if e["best"] else ""
        app.out.info(f"epoch {e['epoch']}/{epochs}: train loss {e['epoch_train_loss']:.4f}, "
                     f"val loss {val}, val R@10 {r10}{star}")

    with app.progress(resume_hint="mtx train --continue (with the same options)") as progress:
        result = run_train(app.state, cfg, progress, on_epoch=on_epoch)

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
    app.out.info(f"saved to {escape(str(result.run_dir))}")
    app.out.result(result)
