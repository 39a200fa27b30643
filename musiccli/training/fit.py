"""The plain fit loop: epochs of batches, a step per batch, an epoch end, Ctrl-C at step boundaries.

It knows nothing about models or files: what a step, an epoch end, an evaluation or a
checkpoint is comes in as :class:`FitHooks`, and what it advances is a :class:`TrainState`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import Interrupted, MtxError
from ..progress import Progress
from .train_state import TrainState


class Trainer(Protocol):
    """One training invocation, in the order :func:`run_trainer` calls it."""

    def setup(self) -> Any:
        """Validate, begin the stage; a complete run's result (``skipped``) or None to train."""

    def build(self) -> None:
        """Data, model, optimizer, restore; raises ``MtxError`` before any step for bad inputs."""

    def fit(self) -> Any:
        """Train to the end; the result."""

    def abandon(self) -> None:
        """``build`` failed: forget a fresh run so the corrected command starts cleanly."""

    def close(self) -> None:
        """Release stores and trackers (always called)."""


def run_trainer(trainer: Trainer) -> Any:
    """setup -> skipped? -> build (abandon on MtxError) -> fit, then close: every objective's trainer."""
    try:
        skipped = trainer.setup()
        if skipped is not None:
            return skipped
        try:
            trainer.build()
        except MtxError:
            trainer.abandon()
            raise
        return trainer.fit()
    finally:
        trainer.close()


@dataclass
class FitHooks:
    batches: Callable[[int], Sequence[np.ndarray]]     # epoch -> this rank's batches
    step: Callable[[np.ndarray], dict[str, Any]]       # one optimizer step; "train_loss" + logged extras
    log_step: Callable[[dict[str, Any]], None]         # a step's event (metrics log, trackers)
    end_epoch: Callable[[], None]                      # validate, best, patience, checkpoint
    save: Callable[[], None]                           # checkpoint the current step (a collective)
    any_rank: Callable[[bool], bool]                   # a flag raised on any rank (a collective)
    evaluate: Callable[[], None] | None = None         # periodic mid-epoch evaluation


def fit(ts: TrainState, epochs: int, hooks: FitHooks, progress: Progress, total_steps: int,
        checkpoint_every: int | None = None, eval_every: int | None = None,
        patience: int | None = None) -> None:
    """Advance ``ts`` until ``epochs`` are done or patience runs out."""
    with progress.task("Training", total=total_steps, unit="steps", completed=ts.step) as task:
        while ts.epoch < epochs and not ts.out_of_patience(patience):
            batches = hooks.batches(ts.epoch)
            while ts.batch < len(batches):
                event = hooks.step(batches[ts.batch])
                ts.record_step(float(event["train_loss"]))
                hooks.log_step({"step": ts.step, "epoch": ts.epoch + 1, **event})
                task.advance(1)
                mid_epoch = ts.batch < len(batches)
                if eval_every and hooks.evaluate is not None and ts.step % eval_every == 0 and mid_epoch:
                    hooks.evaluate()
                if checkpoint_every and ts.step % checkpoint_every == 0 and mid_epoch:
                    hooks.save()
                try:
                    progress.check_interrupt()
                    interrupted = None
                except Interrupted as e:
                    interrupted = e
                # Ranks see Ctrl-C at slightly different times; they must stop after the same step,
                # or one waits in save's barrier while another waits in the next step's gather.
                if hooks.any_rank(interrupted is not None):
                    hooks.save()  # the step is complete: commit it before stopping
                    raise interrupted or Interrupted("interrupted on another rank")
            hooks.end_epoch()
