"""The one trainer: the stage contract, checkpoints and the fit loop around a family's training parts.

Every model family trains through :class:`Trainer`. What differs between families (which data,
which models, what one step does, what validation compares, what ``run.json`` records) comes in
as :class:`TrainParts` (``musiccli.families.<name>.train``); what does not (the stage record and
its four outcomes, ``latest/`` and ``best/``, the :class:`TrainState`, RNG states, the metrics log,
trackers, patience, Ctrl-C at a step boundary) lives here once. So ``--continue`` means the same
thing for every family, and a resumed run replays exactly the steps an uninterrupted one takes.

Order of a build (what the resume-equality tests rely on): the parts' data, the latest checkpoint,
``prepare`` (work that may consume randomness of its own, such as building a mel cache), then the
seed, then the models and optimizer, then the restored optimizer state and RNG streams.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import MtxError
from ..progress import Progress
from ..retrieval import caption_relevance, text_to_music
from ..runs import RunMeta
from ..runtime import Runtime, restore_rng_state, seed_everything
from ..state import StageRun, StateDir, begin_stage, load_stage
from . import checkpoint as ckpt
from .checkpointer import Checkpointer
from .config import EpochCallback, TrainResult
from .distributed import Collective
from .fit import FitHooks, fit
from .tracking import Tracker, build_tracker, check_tracker
from .train_state import TrainState

log = logging.getLogger(__name__)

RENAME_HINT = "choose another run name with --run"


@dataclass
class TrainContext:
    """What a family's training parts are built from."""

    state: StateDir
    # A resolved TrainConfig (the family's defaults filled in), or a family's own config with the fields the
    # trainer reads: epochs, batch_size, seed, resume, patience, checkpoint_every, eval_every, report_to.
    cfg: Any
    progress: Progress


@dataclass
class ValVectors:
    """One validation pass: unit text vectors of the split's main captions and unit audio vectors of its
    tracks (row i of each belongs to record i), the mean loss, and extra logged means (teacher cosines)."""

    records: list[Any]
    text: np.ndarray
    audio: np.ndarray
    loss: float
    extras: dict[str, float]


class TrainParts(Protocol):
    """What a family gives the one trainer. ``setup`` runs before the stage record is touched and may
    only validate and resolve inputs; everything after it may assume the stage has begun."""

    run_name: str
    run_dir: Path
    runtime: Runtime
    collective: Collective
    result_config: dict[str, Any]    # what changes results: the checkpoint's "config", meta.json
    stage_config: dict[str, Any]     # result_config plus the identity of the inputs (the stage key's config)

    def setup(self) -> None: ...
    def build_data(self) -> int:
        """Splits and sampler; returns the steps per epoch (an MtxError before any step for bad inputs)."""
    def prepare(self, resumed: bool) -> None:
        """Work done before the seed is set (it may use randomness of its own)."""
    def build_model(self, resume_state: dict[str, Any] | None, total_steps: int) -> None: ...
    def batches(self, epoch: int, start: int) -> list[np.ndarray]: ...
    def step(self, indices: np.ndarray, step: int, epoch: int) -> dict[str, Any]: ...
    def epoch_done(self) -> None:
        """The epoch's batches are all stepped (before validation)."""
    def validate(self, batch_size: int) -> ValVectors | None: ...
    def train_mode(self, on: bool) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def save_models(self, path: Path) -> None: ...
    def run_meta(self, status: str, ts: TrainState) -> RunMeta: ...
    def result_fields(self) -> dict[str, Any]: ...
    def describe_epoch(self, summary: dict[str, Any]) -> str: ...
    def close(self) -> None: ...


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup to the peak, then cosine decay to zero."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def val_metrics(val: ValVectors | None) -> dict[str, Any]:
    """The shared protocol (``musiccli.retrieval``), text -> music on the main captions."""
    if val is None:
        return {"val_loss": None, "val_R@10": None}
    rel = caption_relevance(val.records, "main")
    m = text_to_music(val.text[rel.main_item[rel.queries]], val.audio, rel)
    return {"val_loss": val.loss, **{f"val_{k}": v for k, v in m.items()}, **val.extras}


class Trainer:
    """One training invocation of any family (see the module docstring)."""

    def __init__(self, parts: TrainParts, ctx: TrainContext, on_epoch: EpochCallback | None = None) -> None:
        self.parts, self.state, self.cfg, self.progress, self.on_epoch = parts, ctx.state, ctx.cfg, ctx.progress, on_epoch
        self.tracker: Tracker | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> TrainResult | None:
        p = self.parts
        if self.cfg.epochs < 1:
            raise MtxError(f"--epochs must be at least 1, got {self.cfg.epochs}")
        check_tracker(self.cfg.report_to)
        p.setup()
        self.collective = p.collective
        self.run_dir = p.run_dir
        self.checkpointer = Checkpointer(self.run_dir, self.collective)
        self.stage = self._begin_stage(f"train:{p.run_name}", p.stage_config)
        if self.stage.already_complete:
            return TrainResult.skipped_from(self.stage.record.result)
        if self.collective.is_main and not self.stage.resumed:
            self._discard()  # leftovers of a run whose stage record is gone
        self.checkpointer.recover()
        self.collective.barrier()
        return None

    def _begin_stage(self, key: str, config: dict[str, Any]) -> StageRun:
        """Apply the stage contract on rank 0 only; other ranks follow its decision (no record races)."""
        if not self.collective.enabled:
            return begin_stage(self.state, "train", key, config, self.cfg.resume, discard=self._discard,
                               rename_hint=RENAME_HINT)
        main_stage: list[StageRun] = []

        def decide() -> tuple[bool, bool]:
            main_stage.append(begin_stage(self.state, "train", key, config, self.cfg.resume, discard=self._discard,
                                          rename_hint=RENAME_HINT))
            return main_stage[0].resumed, main_stage[0].already_complete

        resumed, complete = self.collective.decide(decide)
        if main_stage:
            return main_stage[0]
        return StageRun(self.state, load_stage(self.state, key), resumed=resumed, already_complete=complete)

    def _discard(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        p, cfg = self.parts, self.cfg
        self.steps_per_epoch = p.build_data()
        self.total_steps = cfg.epochs * self.steps_per_epoch
        resume_state = self.checkpointer.load_latest() if self.stage.resumed else None
        if self.stage.resumed and resume_state is None:
            log.info("no checkpoint was saved before the interruption; starting from step 0")
            if self.collective.is_main:
                self._discard()
        p.prepare(resumed=resume_state is not None)
        seed_everything(cfg.seed)
        p.build_model(resume_state, self.total_steps)
        self.metrics = ckpt.MetricsLog(self.run_dir / ckpt.METRICS, enabled=self.collective.is_main)
        self.ts = TrainState()
        if resume_state is not None:
            self._restore(resume_state)
        elif self.collective.is_main:
            self._write_run_json("running")
        if self.collective.is_main:
            self.tracker = build_tracker(cfg.report_to, self.run_dir, p.run_name, p.result_config, self.ts.step)

    def _restore(self, s: dict[str, Any]) -> None:
        self.parts.load_state_dict(s)
        self.ts = TrainState.from_dict(s)
        self.metrics.truncate_to(self.ts.step, epochs_done=self.ts.epoch)
        # Every rank continues its own RNG stream (dropout masks differ per rank).
        restore_rng_state(Checkpointer.rng_for(s, self.collective))
        log.info("resuming %s at step %d (epoch %d, batch %d)", self.parts.run_name, self.ts.step, self.ts.epoch + 1,
                 self.ts.batch)

    # ------------------------------------------------------------------ persistence
    def _write_run_json(self, status: str) -> None:
        self.parts.run_meta(status, self.ts).write(self.run_dir)

    def save_latest(self) -> None:
        ts = self.ts
        state = {**self.parts.state_dict(), **ts.to_dict(), "config": self.parts.result_config}
        meta = ts.meta(self.parts.run_name, self.total_steps, self.parts.result_config)
        if self.checkpointer.save_latest(self.parts.save_models, state, meta):
            self.stage.update(step=ts.step, epoch=ts.epoch, batch=ts.batch)

    # ------------------------------------------------------------------ loop hooks
    def _log(self, event: dict[str, Any], prefix: str) -> None:
        self.metrics.append(event)
        if self.tracker is not None:
            self.tracker.log(int(event["step"]), event, prefix)

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        self.parts.train_mode(False)
        try:
            return val_metrics(self.parts.validate(int(self.cfg.batch_size)))
        finally:
            self.parts.train_mode(True)

    def _periodic_eval(self) -> None:
        val = self.validate()
        event = {"step": self.ts.step, "epoch": self.ts.epoch + 1,
                 **{k.replace("val_", "eval_", 1): v for k, v in val.items()}}
        self._log(event, "eval")

    def _end_epoch(self) -> None:
        ts = self.ts
        self.parts.epoch_done()
        val = self.validate()
        train_loss = ts.epoch_train_loss()
        improved = ts.record_val(val["val_R@10"])
        if improved:
            self.checkpointer.save_best(self.parts.save_models)
        summary = {"epoch": ts.epoch + 1, "step": ts.step, "epoch_train_loss": train_loss, **val, "best": improved}
        ts.epoch_summaries.append(summary)
        self._log(summary, "val")
        if self.collective.is_main:
            if self.on_epoch is not None:
                self.on_epoch(summary)
            else:
                log.info("epoch %d/%d: %s", ts.epoch + 1, self.cfg.epochs, self.parts.describe_epoch(summary))
        if ts.out_of_patience(self.cfg.patience):
            log.info("stopping early: val R@10 did not improve for %d epochs", ts.bad_epochs)
        ts.next_epoch()
        self.save_latest()
        if self.collective.is_main:
            self._write_run_json("running")

    def _step(self, indices: np.ndarray) -> dict[str, Any]:
        return self.parts.step(indices, self.ts.step, self.ts.epoch)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        start_time, start_step = time.time(), self.ts.step
        cfg = self.cfg
        hooks = FitHooks(batches=lambda epoch: self.parts.batches(epoch, self.ts.batch), step=self._step,
                         log_step=lambda e: self._log(e, "train"), end_epoch=self._end_epoch, save=self.save_latest,
                         any_rank=self.collective.any, evaluate=self._periodic_eval)
        fit(self.ts, cfg.epochs, hooks, self.progress, self.total_steps, checkpoint_every=cfg.checkpoint_every,
            eval_every=cfg.eval_every, patience=cfg.patience)
        return self._finish(time.time() - start_time, self.ts.step - start_step)

    def _finish(self, seconds: float, steps_now: int) -> TrainResult:
        result = TrainResult.from_state(
            self.ts, seconds, steps_now, self.cfg.patience, run=self.parts.run_name, run_dir=str(self.run_dir),
            logs=self.tracker.location if self.tracker is not None else None, **self.parts.result_fields())
        if self.collective.is_main:
            self._write_run_json("complete")
            self.stage.complete(result=asdict(result))
        self.collective.barrier()
        return result

    def abandon(self) -> None:
        """Setup failed before any step (bad backbone, too little data): forget a fresh run entirely,
        so that the corrected command starts cleanly instead of being refused as interrupted."""
        if self.collective.is_main and not self.stage.resumed:
            self.stage.path.unlink(missing_ok=True)
            self._discard()

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        self.parts.close()
