"""What `mtx train` is asked to do (:class:`TrainConfig`, one for every model family) and what it
returns (:class:`TrainResult`). Nothing here knows a family: a family reads the fields it uses
(``families.<name>.train``), and the stage (``training.loop.run_train``) fills each family's defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ..state import Resume, check_name
from . import recipes
from .losses import LossConfig
from .train_state import TrainState

DEFAULT_OBJECTIVE = "align"
# The shared optimiser defaults (a fine-tuned text backbone under small heads); a family may bring its own.
SHARED_DEFAULTS: dict[str, Any] = {"lr": 5e-5, "weight_decay": 0.01, "warmup_ratio": 0.1}


@dataclass
class TrainConfig:
    audio_encoder: str | None = None      # align/joint: the store the towers train on (student: none)
    manifest: str | None = None           # name or path; None = newest
    run: str | None = None                # None = "<audio_encoder>-<manifest>" ("student-<manifest>")
    objective: str | None = None          # align | joint | student (musiccli.families.OBJECTIVES); None = align,
                                          # or the --init-from run's objective (training.loop.run_train)
    joint_dim: int | None = None          # joint: shared space width (None = 128, TTMR's)
    recipe: str | None = None             # fills unset backbone / batch size / pooling per encoder
    text_backbone: str | None = None      # alias, HF id or local path (None = recipe or minilm)
    text_pooling: str | None = None       # mean | cls | layers (None = recipe or mean)
    text_rep: str = "caption"             # caption | tag | stochastic | mixed (TTMR)
    epochs: int = 10
    batch_size: int | None = None         # per process and step (None = recipe or 64; student 32)
    accum_steps: int = 1                  # GradCache: one step = accum_steps sub-batches of batch_size
    lr: float | None = None               # backbone learning rate (None = the objective's: 5e-5; student 1e-3)
    head_lr_mult: float = 10.0            # the freshly initialised heads learn faster
    weight_decay: float | None = None     # None = the objective's (0.01; student 1e-4)
    warmup_ratio: float | None = None     # None = the objective's (0.1; student 0.05)
    loss: str | None = None               # a registered loss or a combination ("infonce+0.5*listmle");
                                          # None = the objective's default
    temperature: float = 0.07
    learn_temperature: bool = False
    mse_weight: float = 0.1
    margin: float = 0.2
    distill_metric: str = "mse"
    distill_kl_weight: float = 1.0
    head_hidden: int = 1024
    dropout: float = 0.1
    freeze_embeddings: bool = True        # the token-embedding matrix dominates CPU step time (see README)
    freeze_layers: int = 0                # also freeze the lowest N transformer layers
    grad_checkpointing: bool = False
    max_length: int = 64
    grad_clip: float | None = 1.0
    patience: int | None = None           # epochs without val R@10 improvement before stopping
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    checkpoint_every: int | None = None   # steps; a checkpoint is also written at every epoch end
    eval_every: int | None = None         # steps; validate mid-epoch too (logged, never changes best)
    report_to: str = "none"               # none | tensorboard | wandb
    teacher: str | None = None            # run name to distil from (switches the loss to distillation)
    init_from: str | None = None          # RUN[:best|latest]: start from that run's weights
    val_split: str = "val"
    use_alt_captions: bool = True
    export: bool = True                   # write exports/<run>/<checkpoint>/onnx at the end (torch-free search)
    library: bool = False                 # adapt to the synced library: its defaults (training.library) filled in
    # --objective student only (read by musiccli/families/student/train.py)
    teachers: str | None = None           # teacher stores "NAME:WEIGHT,..." (None = musicnn:0.3,dsp:0.4)
    contrastive_weight: float = 0.3       # weight of the music-text InfoNCE
    distill_loss: str = "mse"             # mse | cosine on standardised teacher vectors
    student_blocks: int = 3               # conv blocks (channels 32, 64, 128, ...)
    student_channels: int = 32            # channels of the first block
    student_residual: bool = False
    crop: float = 30.0                    # seconds per random audio crop
    text_tower: str = "mean"              # mean | transformer (2 layers, 4 heads)
    vocab_size: int = 3072                # WordPiece pieces trained on the captions
    num_workers: int = 2                  # audio/mel DataLoader processes
    mel_cache: bool = False               # crops from a once-computed full-track mel cache (not bit-identical)
    text_teacher: str | None = None       # RUN[:WEIGHT]: distil the text tower from an align run's text embedder
    resume: Resume = Resume.FRESH

    # Fields that never change what a run computes (where/how often it is saved or logged, how it was
    # started, whether activations are recomputed in backward, whether it is exported at the end).
    NOT_RESULT_AFFECTING = ("device", "checkpoint_every", "resume", "run", "manifest", "report_to", "eval_every",
                            "grad_checkpointing", "export", "library")
    # Fields only the student objective reads: other objectives refuse them when set and leave them out
    # of their run config (so align/joint stage records are what they were before the student existed).
    STUDENT_FIELDS = ("teachers", "contrastive_weight", "distill_loss", "student_blocks", "student_channels",
                      "student_residual", "crop", "text_tower", "vocab_size", "num_workers", "mel_cache",
                      "text_teacher")

    def loss_config(self) -> LossConfig:
        return LossConfig(temperature=self.temperature, learn_temperature=self.learn_temperature,
                          mse_weight=self.mse_weight, margin=self.margin, distill_metric=self.distill_metric,
                          distill_kl_weight=self.distill_kl_weight)

    def resolved(self, defaults: dict[str, Any] | None = None, use_recipes: bool = True) -> "TrainConfig":
        """A copy with the family's ``defaults`` (None: the shared ones), the recipe's (when the family
        trains on a store) and the built-in defaults filled in (learning rate, weight decay, warmup,
        backbone, batch size, pooling)."""
        values = {k: v for k, v in (SHARED_DEFAULTS if defaults is None else defaults).items()
                  if getattr(self, k) is None}
        if use_recipes:
            values.update(recipes.resolve({k: getattr(self, k) for k in recipes.BUILTIN}, self.recipe,
                                          str(self.audio_encoder)))
        return dataclasses.replace(self, **values)


@dataclass
class TrainResult:
    run: str
    run_dir: str
    manifest: str
    embeddings: str
    loss: str
    epochs_done: int
    steps: int
    best_epoch: int | None
    best_val_r10: float | None
    final_train_loss: float | None
    final_val_loss: float | None
    seconds: float
    steps_per_s: float
    stopped_early: bool
    objective: str = DEFAULT_OBJECTIVE
    logs: str | None = None               # where --report-to wrote its logs
    skipped: bool = False
    epochs: list[dict[str, Any]] = field(default_factory=list)
    onnx: str | None = None               # the ONNX text tower written at the end (None: not exported)
    onnx_note: str | None = None          # why it was not

    @classmethod
    def from_state(cls, ts: TrainState, seconds: float, steps_now: int, patience: int | None,
                   **fields_: Any) -> "TrainResult":
        """The result of a finished fit: the loop's numbers from ``ts``, the run's identity in ``fields_``."""
        last = ts.epoch_summaries[-1] if ts.epoch_summaries else {}
        return cls(epochs_done=ts.epoch, steps=ts.step, best_epoch=ts.best["epoch"], best_val_r10=ts.best["val_R@10"],
                   final_train_loss=last.get("epoch_train_loss"), final_val_loss=last.get("val_loss"),
                   seconds=seconds, steps_per_s=steps_now / seconds if seconds > 0 else 0.0,
                   stopped_early=ts.out_of_patience(patience), epochs=ts.epoch_summaries, **fields_)

    @classmethod
    def skipped_from(cls, recorded: dict[str, Any]) -> "TrainResult":
        """The result a complete stage recorded, marked skipped (nothing was trained now)."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in recorded.items() if k in known}, "skipped": True})


EpochCallback = Callable[[dict[str, Any]], None]


def default_run_name(audio_encoder: str, manifest_name: str) -> str:
    return check_name("run", f"{audio_encoder}-{manifest_name}")
