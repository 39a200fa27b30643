"""The training stage: ``run_train(state, TrainConfig, progress) -> TrainResult``.

One run lives in ``state.run_dir(run)`` (``run.json``, ``best/``, ``latest/``,
``metrics.jsonl``). The unit of work is one optimizer step. A checkpoint in
``latest/`` holds both towers, optimizer, scheduler, scaler, the loss's learnable
temperature, the :class:`TrainState` (data position, best epoch, losses) and every
rank's python/numpy/torch RNG states (dropout included), so ``--continue`` replays
exactly the steps an uninterrupted run would have taken (torchtune's resume test checks this).

The parts, each testable alone: :mod:`.objectives` (which towers train), :mod:`.step`
(one optimizer step, GradCache included), :mod:`.fit` (the plain loop),
:mod:`.checkpointer`, :mod:`.distributed`, :mod:`.train_state`, :mod:`.tracking`.
This module wires them to the stage contract.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..encoders.towers import Towers
from ..runs import load_towers
from ..errors import MtxError, unknown_choice
from ..manifest import manifest_hash, read_manifest, resolve_manifest
from ..progress import NullProgress, Progress
from ..provenance import training_data
from ..retrieval import caption_relevance, text_to_music
from ..runtime import Runtime, init_distributed, restore_rng_state, seed_everything, select_runtime
from ..state import (Resume, StageRun, StateDir, begin_stage, check_name, file_sha256, load_stage, stage_function,
                     to_jsonable)
from ..store import EmbeddingStore
from . import checkpoint as ckpt
from . import recipes
from .checkpointer import Checkpointer
from .data import EpochSampler, PairDataset, Split, split_pairs
from .distributed import Collective
from .fit import FitHooks, fit, run_trainer
from .losses import LossConfig, build_loss, local_only, loss_names
from .objectives import DEFAULT_OBJECTIVE, Objective, TowerSpec, check_loss, get_objective
from .step import Stepper
from .textrep import TEXT_REPS
from .tracking import Tracker, build_tracker, check_tracker
from .train_state import TrainState

log = logging.getLogger(__name__)

RENAME_HINT = "choose another run name with --run"
CHECKPOINTS = ("best", "latest")


@dataclass
class TrainConfig:
    audio_encoder: str | None = None      # align/joint: the store the towers train on (student: none)
    manifest: str | None = None           # name or path; None = newest
    run: str | None = None                # None = "<audio_encoder>-<manifest>" ("student-<manifest>")
    objective: str = DEFAULT_OBJECTIVE    # align | joint | student (see training/objectives)
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
    # --objective student only (the student's own trainer, training/student.py)
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
                            "grad_checkpointing", "export")
    # Fields only the student objective reads: other objectives refuse them when set and leave them out
    # of their run config (so align/joint stage records are what they were before the student existed).
    STUDENT_FIELDS = ("teachers", "contrastive_weight", "distill_loss", "student_blocks", "student_channels",
                      "student_residual", "crop", "text_tower", "vocab_size", "num_workers", "mel_cache",
                      "text_teacher")

    def loss_config(self) -> LossConfig:
        return LossConfig(temperature=self.temperature, learn_temperature=self.learn_temperature,
                          mse_weight=self.mse_weight, margin=self.margin, distill_metric=self.distill_metric,
                          distill_kl_weight=self.distill_kl_weight)

    def resolved(self) -> "TrainConfig":
        """A copy with the objective's, the recipe's and the built-in defaults filled in (learning rate,
        weight decay, warmup, backbone, batch size, pooling)."""
        defaults = get_objective(self.objective).defaults
        values = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.objective == "student":
            return dataclasses.replace(self, **values)
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


# --------------------------------------------------------------------------- setup helpers
def default_run_name(audio_encoder: str, manifest_name: str) -> str:
    return check_name("run", f"{audio_encoder}-{manifest_name}")


_LAYER_RE = re.compile(r"\.layers?\.(\d+)\.")


def freeze_backbone_parts(model: torch.nn.Module, embeddings: bool, lowest_layers: int) -> None:
    """Freeze what should not train.

    - The backbone's own pooler: TextEmbedder pools token states itself, so the pooler never gets a
      gradient; freezing it keeps DDP from waiting for those gradients (and AdamW from decaying it).
    - Optionally the embeddings: the 30k x hidden token matrix's dense gradient and AdamW update cost
      more than the whole transformer on a CPU (MiniLM: 3.4 s -> 1.0 s per step of 64 captions), and
      a few thousand captions cannot train a vocabulary-sized matrix anyway.
    - Optionally the lowest N transformer layers (BERT/RoBERTa ``encoder.layer.i``, DistilBERT
      ``transformer.layer.i``).
    """
    for name, p in model.named_parameters():
        if not name.startswith("backbone."):
            continue
        layer = _LAYER_RE.search(name)
        if (name.startswith("backbone.pooler.")
                or (embeddings and name.startswith("backbone.embeddings."))
                or (layer is not None and int(layer.group(1)) < lowest_layers)):
            p.requires_grad_(False)


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup to the peak, then cosine decay to zero."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def param_groups(model: torch.nn.Module, loss_fn: torch.nn.Module, cfg: TrainConfig,
                 audio_tower: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """AdamW groups: backbone vs head learning rate; no weight decay on biases and norms.

    The audio tower (joint runs) is a freshly initialised head too: it learns at the head rate.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    named = list(model.named_parameters())
    if audio_tower is not None:
        named += [(f"audio_tower.{n}", p) for n, p in audio_tower.named_parameters()]
    for name, p in named:
        if not p.requires_grad:
            continue
        is_head = not name.startswith("backbone.")
        no_decay = p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()
        groups.setdefault((is_head, no_decay), []).append(p)
    out = [{"params": ps, "lr": cfg.lr * (cfg.head_lr_mult if head else 1.0),
            "weight_decay": 0.0 if no_decay else cfg.weight_decay, "name": f"{'head' if head else 'backbone'}"
            f"{'-no_decay' if no_decay else ''}"} for (head, no_decay), ps in sorted(groups.items())]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:
        out.append({"params": loss_params, "lr": cfg.lr * cfg.head_lr_mult, "weight_decay": 0.0, "name": "loss"})
    return out


def _result_config(cfg: TrainConfig, runtime: Runtime, loss_name: str) -> dict[str, Any]:
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg)
         if f.name not in TrainConfig.NOT_RESULT_AFFECTING and f.name not in TrainConfig.STUDENT_FIELDS}
    d["loss"] = loss_name
    d["precision"] = runtime.precision  # "auto" resolves differently per machine; the resolved one matters
    return to_jsonable(d)


def _store_identity(store: EmbeddingStore) -> dict[str, Any]:
    return {"path": str(store.path), "rows": len(store), "dim": store.dim, "encoder": store.encoder,
            "manifest_hash": store.attrs.get("manifest_hash"), "size": store.path.stat().st_size}


def _checkpoint_dir(state: StateDir, name: str, checkpoint: str | None = None) -> Path | None:
    """A run's saved checkpoint: the named one, or best then latest."""
    run_dir = state.run_dir(name)
    for sub in ([checkpoint] if checkpoint else list(CHECKPOINTS)):
        if (run_dir / sub / "model.safetensors").exists():
            return run_dir / sub
    return None


def _load_teacher(state: StateDir, name: str, device: torch.device):
    from ..encoders.text import TextEmbedder

    path = _checkpoint_dir(state, name)
    if path is None:
        raise unknown_choice("teacher run", name, state.list_runs(complete_only=True) or ["(none trained yet)"])
    teacher = TextEmbedder.from_pretrained(path, device=device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    log.info("distilling from teacher run %s (%s/)", name, path.name)
    return teacher


def parse_init_from(spec: str) -> tuple[str, str | None]:
    """``RUN`` or ``RUN:best`` / ``RUN:latest``."""
    name, sep, which = spec.partition(":")
    if sep and which not in CHECKPOINTS:
        raise unknown_choice("checkpoint", which, CHECKPOINTS)
    return check_name("run", name), (which if sep else None)


def _init_source(state: StateDir, spec: str) -> dict[str, Any]:
    """The lineage record of ``--init-from``: which run and checkpoint, and the weights' identity."""
    name, which = parse_init_from(spec)
    path = _checkpoint_dir(state, name, which)
    if path is None:
        raise unknown_choice(f"run to init from ({which or 'best or latest'} checkpoint)", name,
                             state.list_runs(complete_only=False) or ["(none trained yet)"])
    return {"run": name, "checkpoint": path.name, "path": str(path),
            "head_sha256": file_sha256(path / "model.safetensors")[:16],
            "created": ckpt.read_run_json(state.run_dir(name)).get("created")}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _check_config(cfg: TrainConfig) -> tuple[Objective, str]:
    """Refuse bad combinations before any work; returns the objective and the loss name."""
    if cfg.epochs < 1:
        raise MtxError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.accum_steps < 1:
        raise MtxError(f"--accum-steps must be at least 1, got {cfg.accum_steps}")
    if cfg.text_rep not in TEXT_REPS:
        raise unknown_choice("text representation", cfg.text_rep, TEXT_REPS)
    objective = get_objective(cfg.objective)
    if cfg.audio_encoder is None:
        raise MtxError(f"--audio-encoder is required for --objective {cfg.objective}",
                       hint="e.g. mtx train --audio-encoder dsp, or mtx train --objective student")
    baseline = TrainConfig()
    for name in TrainConfig.STUDENT_FIELDS:
        if getattr(cfg, name) != getattr(baseline, name):
            raise MtxError(f"--{name.replace('_', '-')} only applies to --objective student",
                           hint="add --objective student, or drop the flag")
    if cfg.joint_dim is not None and cfg.objective != "joint":
        raise MtxError("--joint-dim only applies to --objective joint", hint="add --objective joint")
    if cfg.teacher and cfg.loss not in (None, "distillation"):
        log.info("--teacher given: using the distillation loss instead of %s", cfg.loss)
    loss_name = "distillation" if cfg.teacher else (cfg.loss or objective.default_loss)
    parts = loss_names(loss_name)
    check_loss(objective, parts)
    if "distillation" in parts and not cfg.teacher:
        raise MtxError("the distillation loss needs a teacher", hint="pass --teacher RUN (a trained run)")
    if cfg.teacher and cfg.init_from:
        raise MtxError("--teacher and --init-from exclude each other", hint="distil into a fresh student")
    check_tracker(cfg.report_to)
    return objective, loss_name


class _Trainer:
    """One training invocation: wires the stage contract to the loop parts."""

    def __init__(self, state: StateDir, cfg: TrainConfig, progress: Progress, on_epoch: EpochCallback | None):
        self.state, self.cfg, self.progress, self.on_epoch = state, cfg, progress, on_epoch
        self.tracker: Tracker | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> TrainResult | None:
        cfg = self.cfg
        self.objective, self.loss_name = _check_config(cfg)
        if cfg.teacher and _checkpoint_dir(self.state, cfg.teacher) is None:
            raise unknown_choice("teacher run", cfg.teacher,
                                 self.state.list_runs(complete_only=True) or ["(none trained yet)"])
        self.init_source = _init_source(self.state, cfg.init_from) if cfg.init_from else None
        self.runtime = select_runtime(cfg.device, cfg.precision)
        self.collective = Collective(init_distributed(self.runtime), self.runtime.device)
        self.manifest_name, self.manifest_path = resolve_manifest(self.state, cfg.manifest)
        self.run_name = check_name("run", cfg.run) if cfg.run else default_run_name(cfg.audio_encoder,
                                                                                     self.manifest_name)
        if self.init_source is not None and self.init_source["run"] == self.run_name:
            raise MtxError(f"--init-from {cfg.init_from} names the run being trained",
                           hint="give the new stage its own --run name")
        self.run_dir = self.state.run_dir(self.run_name)
        self.checkpointer = Checkpointer(self.run_dir, self.collective)
        self.store = self._open_store()
        self.result_config = _result_config(cfg, self.runtime, self.loss_name)
        if self.collective.enabled:
            # Each rank has its own data shard and RNG stream: resuming with another process count
            # would not reproduce the run, so the count is part of what must not change.
            self.result_config["world_size"] = self.collective.world_size
        stage_config = {**self.result_config, "manifest_name": self.manifest_name,
                        "manifest_hash": self.manifest_hash, "store": _store_identity(self.store)}
        if cfg.teacher:
            # a retrained teacher changes what continuing a distillation run would compute
            stage_config["teacher_created"] = ckpt.read_run_json(self.state.run_dir(cfg.teacher)).get("created")
        if self.init_source is not None:
            stage_config["init_from"] = {k: v for k, v in self.init_source.items() if k != "path"}
        self.stage = self._begin_stage(f"train:{self.run_name}", stage_config)
        if self.stage.already_complete:
            return self._skipped_result()
        if self.collective.is_main and not self.stage.resumed:
            self._discard()  # leftovers of a run whose stage record is gone
        self.checkpointer.recover()
        self.collective.barrier()
        return None

    def _open_store(self) -> EmbeddingStore:
        cfg = self.cfg
        emb_path = self.state.embeddings_path(cfg.audio_encoder, self.manifest_name)
        if not emb_path.exists():
            raise MtxError(f"no {cfg.audio_encoder} embeddings for manifest {self.manifest_name} ({emb_path})",
                           hint=f"run `mtx embed --audio-encoder {cfg.audio_encoder} "
                                f"--manifest {self.manifest_name}` first")
        store = EmbeddingStore(emb_path)
        self.manifest_hash = manifest_hash(self.manifest_path)
        stored_hash = store.attrs.get("manifest_hash")
        if stored_hash and stored_hash != self.manifest_hash:
            log.warning("%s was embedded from a different version of manifest %s; ids missing from the store "
                        "are skipped (rerun `mtx embed --force` to refresh it)", emb_path.name, self.manifest_name)
        if self.collective.is_main:
            log.info("using manifest %s (%s)", self.manifest_name, self.manifest_path)
            log.info("using embeddings %s (%d rows, dim %d)", emb_path, len(store), store.dim)
            log.info("%s%s", self.runtime.describe(),
                     f", {self.collective.world_size} processes" if self.collective.enabled else "")
        return store

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

    def _skipped_result(self) -> TrainResult:
        return TrainResult.skipped_from(self.stage.record.result)

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        cfg = self.cfg
        self._build_data()
        self.resume_state = self.checkpointer.load_latest() if self.stage.resumed else None
        if self.stage.resumed and self.resume_state is None:
            log.info("no checkpoint was saved before the interruption; starting from step 0")
            if self.collective.is_main:
                self._discard()
        seed_everything(cfg.seed)
        self.towers = self._build_towers()
        self.towers.train()
        freeze_backbone_parts(self.towers.text, cfg.freeze_embeddings, cfg.freeze_layers)
        if cfg.grad_checkpointing:
            self.towers.text.enable_grad_checkpointing()
        self.loss_fn = build_loss(self.loss_name, cfg.loss_config()).to(self.runtime.device)
        teacher = _load_teacher(self.state, cfg.teacher, self.runtime.device) if cfg.teacher else None
        if teacher is not None and teacher.config.out_dim != self.store.dim:
            raise MtxError(f"teacher {cfg.teacher} predicts dim {teacher.config.out_dim}, "
                           f"but the {cfg.audio_encoder} store has dim {self.store.dim}",
                           hint="distil from a run trained on the same audio encoder")
        optimizer = torch.optim.AdamW(param_groups(self.towers.text, self.loss_fn, cfg, self.towers.audio), lr=cfg.lr)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.total_steps, warmup))
        text_model = self.collective.wrap(self.towers.text, self.runtime)
        if self.collective.enabled:
            # Dropout masks should differ between ranks; the weights are synchronised by DDP.
            torch.manual_seed(cfg.seed + 1000 * self.collective.rank)
        self.stepper = Stepper(self.towers, text_model, self.loss_fn, optimizer, scheduler,
                               self.runtime.grad_scaler(), self.runtime, self.collective, cfg.grad_clip,
                               cfg.accum_steps, teacher)
        self.metrics = ckpt.MetricsLog(self.run_dir / ckpt.METRICS, enabled=self.collective.is_main)
        self.ts = TrainState()
        if self.resume_state is not None:
            self._restore(self.resume_state)
        elif self.collective.is_main:
            self._write_run_json("running")
        if self.collective.is_main:
            self.tracker = build_tracker(cfg.report_to, self.run_dir, self.run_name, self.result_config, self.ts.step)

    def _build_data(self) -> None:
        cfg = self.cfg
        records = read_manifest(self.manifest_path)
        self.train_split = split_pairs(records, self.store, "train")
        self.val_split: Split = split_pairs(records, self.store, cfg.val_split)
        if len(self.train_split) < 2:
            raise MtxError(f"only {len(self.train_split)} training pairs with embeddings in {self.manifest_name}",
                           hint="check the manifest splits and that `mtx embed` covered them")
        self.mean, self.std = self.store.mean_std(self.train_split.positions)
        self.train_ds = PairDataset(self.train_split, self.store, self.mean, self.std, cfg.seed,
                                    use_alt_captions=cfg.use_alt_captions, text_rep=cfg.text_rep)
        self.val_ds = PairDataset(self.val_split, self.store, self.mean, self.std, cfg.seed, use_alt_captions=False)
        # A step sees accum_steps sub-batches of batch_size: the sampler deals the whole step's batch.
        self.sampler = EpochSampler(len(self.train_split), cfg.batch_size * cfg.accum_steps, cfg.seed,
                                    self.collective.rank, self.collective.world_size)
        self.steps_per_epoch = len(self.sampler)
        if self.steps_per_epoch == 0:
            raise MtxError(f"{len(self.train_split)} training pairs make no full batch of "
                           f"{cfg.batch_size * cfg.accum_steps} x {self.collective.world_size} processes",
                           hint="lower --batch-size or --accum-steps")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if self.collective.is_main:
            log.info("%d training pairs, %d validation pairs, %d steps per epoch", len(self.train_split),
                     len(self.val_split), self.steps_per_epoch)

    def _tower_spec(self) -> TowerSpec:
        cfg = self.cfg
        return TowerSpec(backbone=str(cfg.text_backbone), store_dim=self.store.dim, mean=self.mean, std=self.std,
                         head_hidden=cfg.head_hidden, dropout=cfg.dropout, pooling=str(cfg.text_pooling),
                         max_length=cfg.max_length, audio_encoder=cfg.audio_encoder,
                         aggregation=self.store.attrs.get("aggregation") or None, joint_dim=cfg.joint_dim)

    def _build_towers(self) -> Towers:
        device = self.runtime.device
        if self.resume_state is not None:
            return load_towers(self.checkpointer.latest_dir, device=device)
        spec = self._tower_spec()
        if self.init_source is None:
            return self.objective.build(spec).to(device)
        source = f"run {self.init_source['run']} ({self.init_source['checkpoint']})"
        towers = load_towers(self.init_source["path"], device=device)
        self.objective.check(towers, spec, source)
        # The heads were trained on the source run's audio statistics: they are kept (not refit on
        # this manifest), so the loaded model starts out computing exactly what it computed there.
        log.info("initialising from %s; keeping its audio statistics", source)
        return towers

    def _restore(self, s: dict[str, Any]) -> None:
        st = self.stepper
        st.optimizer.load_state_dict(s["optimizer"])
        st.scheduler.load_state_dict(s["scheduler"])
        st.scaler.load_state_dict(s["scaler"])
        self.loss_fn.load_state_dict(s["loss"])
        self.ts = TrainState.from_dict(s)
        self.metrics.truncate_to(self.ts.step, epochs_done=self.ts.epoch)
        # Every rank continues its own RNG stream (dropout masks differ per rank).
        restore_rng_state(Checkpointer.rng_for(s, self.collective))
        log.info("resuming %s at step %d (epoch %d, batch %d)", self.run_name, self.ts.step, self.ts.epoch + 1,
                 self.ts.batch)

    # ------------------------------------------------------------------ persistence
    def _run_info(self, status: str) -> dict[str, Any]:
        cfg = self.cfg
        info = {"run": self.run_name, "audio_encoder": cfg.audio_encoder, "manifest": self.manifest_name,
                "manifest_path": str(self.manifest_path), "embeddings": str(self.store.path),
                "manifest_hash": self.manifest_hash, "text_backbone": cfg.text_backbone,
                "objective": cfg.objective, "space_dim": self.towers.dim, "text_rep": cfg.text_rep,
                "loss": self.loss_name, "teacher": cfg.teacher, "init_from": None,
                "config": to_jsonable({k: v for k, v in asdict(cfg).items() if k not in TrainConfig.STUDENT_FIELDS}),
                "created": self.ts.created, "status": status,
                "best": self.ts.best,
                # What the run learned from (search and eval warn when it meets other sources).
                "training_data": training_data(self.manifest_name, self.manifest_hash, self.train_split.records)}
        if self.init_source is not None:
            src = self.init_source
            parent = ckpt.read_run_json(self.state.run_dir(src["run"]))
            # lineage: the parent and, through it, every earlier stage
            info["init_from"] = {"run": src["run"], "checkpoint": src["checkpoint"],
                                 "head_sha256": src["head_sha256"], "manifest": parent.get("manifest"),
                                 "audio_stats": "kept from the parent run",
                                 "lineage": [src["run"], *((parent.get("init_from") or {}).get("lineage") or [])]}
        return info

    def _write_run_json(self, status: str) -> None:
        ckpt.write_run_json(self.run_dir, self._run_info(status))

    def save_latest(self) -> None:
        st, ts = self.stepper, self.ts
        state = {"optimizer": st.optimizer.state_dict(), "scheduler": st.scheduler.state_dict(),
                 "scaler": st.scaler.state_dict(), "loss": self.loss_fn.state_dict(), **ts.to_dict(),
                 "config": self.result_config}
        meta = ts.meta(self.run_name, self.total_steps, self.result_config)
        if self.checkpointer.save_latest(self.towers.save_pretrained, state, meta):
            self.stage.update(step=ts.step, epoch=ts.epoch, batch=ts.batch)

    # ------------------------------------------------------------------ loop hooks
    def _step(self, indices: np.ndarray) -> dict[str, Any]:
        texts, audio = self.train_ds.batch(indices)
        keys = torch.from_numpy(self.train_ds.pair_keys(indices, texts)).to(self.runtime.device)
        event = self.stepper.step(texts, audio, self.ts.step + 1, keys)
        event["lr"] = self.stepper.scheduler.get_last_lr()[0]
        return event

    def _log(self, event: dict[str, Any], prefix: str) -> None:
        self.metrics.append(event)
        if self.tracker is not None:
            self.tracker.log(int(event["step"]), event, prefix)

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        n = len(self.val_split)
        if n == 0:
            return {"val_loss": None, "val_R@10": None}
        self.towers.eval()
        texts_z, audio_z, total = [], [], 0.0
        with local_only():  # every rank validates the same items: no cross-rank gathering
            for s in range(0, n, self.cfg.batch_size):
                idx = np.arange(s, min(n, s + self.cfg.batch_size))
                texts, audio = self.val_ds.batch(idx)
                target = torch.from_numpy(audio).to(self.runtime.device)
                keys = torch.from_numpy(self.val_ds.pair_keys(idx, texts)).to(self.runtime.device)
                pred = self.stepper.encode_text(self.towers.text, texts)
                loss, _ = self.stepper.loss(pred, target, texts, keys)
                total += float(loss) * len(idx)
                texts_z.append(F.normalize(pred, dim=-1).cpu().numpy())
                audio_z.append(F.normalize(self.towers.audio(target).float(), dim=-1).cpu().numpy())
        self.towers.train()
        # The shared protocol (musiccli.retrieval), text -> music only: validation reports nothing else.
        rel = caption_relevance(self.val_split.records, "main")
        m = text_to_music(np.concatenate(texts_z)[rel.main_item[rel.queries]], np.concatenate(audio_z), rel)
        out: dict[str, Any] = {"val_loss": total / n}
        out.update({f"val_{k}": v for k, v in m.items()})
        return out

    def _periodic_eval(self) -> None:
        val = self.validate()
        event = {"step": self.ts.step, "epoch": self.ts.epoch + 1,
                 **{k.replace("val_", "eval_", 1): v for k, v in val.items()}}
        self._log(event, "eval")

    def _end_epoch(self) -> None:
        ts = self.ts
        val = self.validate()
        train_loss = ts.epoch_train_loss()
        improved = ts.record_val(val["val_R@10"])
        if improved:
            self.checkpointer.save_best(self.towers.save_pretrained)
        summary = {"epoch": ts.epoch + 1, "step": ts.step, "epoch_train_loss": train_loss, **val, "best": improved}
        ts.epoch_summaries.append(summary)
        self._log(summary, "val")
        if self.collective.is_main:
            if self.on_epoch is not None:
                self.on_epoch(summary)
            else:
                log.info("epoch %d/%d: train loss %.4f, val loss %s, val R@10 %s", ts.epoch + 1, self.cfg.epochs,
                         train_loss, _fmt(val["val_loss"]), _fmt(val["val_R@10"]))
        if ts.out_of_patience(self.cfg.patience):
            log.info("stopping early: val R@10 did not improve for %d epochs", ts.bad_epochs)
        ts.next_epoch()
        self.save_latest()
        if self.collective.is_main:
            self._write_run_json("running")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        start_time, start_step = time.time(), self.ts.step
        cfg = self.cfg

        def batches(epoch: int):
            self.train_ds.set_epoch(epoch)
            return self.sampler.batches(epoch)

        hooks = FitHooks(batches=batches, step=self._step, log_step=lambda e: self._log(e, "train"),
                         end_epoch=self._end_epoch, save=self.save_latest, any_rank=self.collective.any,
                         evaluate=self._periodic_eval)
        fit(self.ts, cfg.epochs, hooks, self.progress, self.total_steps, checkpoint_every=cfg.checkpoint_every,
            eval_every=cfg.eval_every, patience=cfg.patience)
        return self._finish(time.time() - start_time, self.ts.step - start_step)

    def _finish(self, seconds: float, steps_now: int) -> TrainResult:
        result = TrainResult.from_state(
            self.ts, seconds, steps_now, self.cfg.patience, run=self.run_name, run_dir=str(self.run_dir),
            manifest=self.manifest_name, embeddings=str(self.store.path), loss=self.loss_name,
            objective=self.cfg.objective, logs=self.tracker.location if self.tracker is not None else None)
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
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


@stage_function
def run_train(state: StateDir, cfg: TrainConfig, progress: Progress | None = None,
              on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train (or resume, or skip when complete) one run; see the module docstring.

    An objective with its own trainer (``student``: towers trained from audio, not from a store)
    takes the whole run; the others share :class:`_Trainer`.
    """
    own = get_objective(cfg.objective).run_train
    if own is not None:
        return own(state, cfg.resolved(), progress or NullProgress(), on_epoch)
    trainer = _Trainer(state, cfg.resolved(), progress or NullProgress(), on_epoch)
    result = run_trainer(trainer)
    if not result.skipped and cfg.export and trainer.collective.is_main:
        export_onnx_at_end(state, result)
    return result


def export_onnx_at_end(state: StateDir, result: TrainResult) -> None:
    """The ONNX towers (text + audio_tower.onnx) of the best (else latest) checkpoint, so `mtx search`
    starts without torch.

    A failure here never fails the training: the run is complete and usable; the result says why
    there is no export, and search falls back to PyTorch.
    """
    from importlib.util import find_spec

    from ..onnx_text import export_checkpoint_onnx
    from ..runs import export_dir

    run_dir = Path(result.run_dir)
    ckpt_dir = next((run_dir / c for c in ("best", "latest") if (run_dir / c / "model.safetensors").exists()), None)
    if ckpt_dir is None:
        result.onnx_note = "no checkpoint to export"
    elif not all(find_spec(m) is not None for m in ("onnx", "onnxruntime")):
        result.onnx_note = "onnx/onnxruntime are not installed (pip install 'musiccli[onnx]')"
    else:
        try:
            path, diff = export_checkpoint_onnx(ckpt_dir, export_dir(state, result.run, ckpt_dir.name))
        except MtxError as e:
            result.onnx_note = e.message
        else:
            result.onnx = str(path)
            log.info("exported the ONNX towers of %s/%s to %s (max abs diff vs PyTorch %.2g)",
                     result.run, ckpt_dir.name, path.parent, diff)
    if result.onnx_note:
        log.warning("no ONNX export for run %s: %s; search will use PyTorch", result.run, result.onnx_note)
