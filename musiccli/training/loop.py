"""The training loop: ``run_train(state, TrainConfig, progress) -> TrainResult``.

One run lives in ``state.run_dir(run)`` (``run.json``, ``best/``, ``latest/``,
``metrics.jsonl``). The unit of work is one optimizer step. A checkpoint in
``latest/`` holds the model, optimizer, scheduler, scaler, the loss's learnable
temperature, the data position (epoch, next batch) and the python/numpy/torch RNG
states (dropout included), so ``--continue`` replays exactly the steps an
uninterrupted run would have taken (torchtune's resume test checks this).
"""

from __future__ import annotations

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

from ..errors import Interrupted, MtxError, unknown_choice
from ..manifest import manifest_hash, read_manifest, resolve_manifest
from ..retrieval import caption_relevance, text_to_music
from ..progress import NullProgress, Progress
from ..provenance import training_data
from ..runtime import (DistInfo, Runtime, capture_rng_state, init_distributed, on_main, restore_rng_state,
                       seed_everything, select_runtime)
from ..state import Resume, StageRun, StateDir, begin_stage, check_name, load_stage, stage_function, to_jsonable
from ..store import EmbeddingStore
from . import checkpoint as ckpt
from .data import EpochSampler, PairDataset, Split, split_pairs
from .losses import DEFAULT_LOSS, LOSSES, LossConfig, build_loss, clamp_temperatures, local_only

log = logging.getLogger(__name__)

RENAME_HINT = "choose another run name with --run"


@dataclass
class TrainConfig:
    audio_encoder: str
    manifest: str | None = None           # name or path; None = newest
    run: str | None = None                # None = "<audio_encoder>-<manifest>"
    text_backbone: str = "minilm"         # alias, HF id or local path
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-5                      # backbone learning rate
    head_lr_mult: float = 10.0            # the freshly initialised head learns faster
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    loss: str = DEFAULT_LOSS
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
    max_length: int = 64
    grad_clip: float | None = 1.0
    patience: int | None = None           # epochs without val R@10 improvement before stopping
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    checkpoint_every: int | None = None   # steps; a checkpoint is also written at every epoch end
    teacher: str | None = None            # run name to distil from (switches the loss to distillation)
    val_split: str = "val"
    use_alt_captions: bool = True
    resume: Resume = Resume.FRESH

    # Fields that never change what a run computes (where/how often it is saved, how it was started).
    NOT_RESULT_AFFECTING = ("device", "checkpoint_every", "resume", "run", "manifest")

    def loss_config(self) -> LossConfig:
        return LossConfig(temperature=self.temperature, learn_temperature=self.learn_temperature,
                          mse_weight=self.mse_weight, margin=self.margin, distill_metric=self.distill_metric,
                          distill_kl_weight=self.distill_kl_weight)


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
    skipped: bool = False
    epochs: list[dict[str, Any]] = field(default_factory=list)


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


def param_groups(model: torch.nn.Module, loss_fn: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: backbone vs head learning rate; no weight decay on biases and norms."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
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
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in TrainConfig.NOT_RESULT_AFFECTING}
    d["loss"] = loss_name
    d["precision"] = runtime.precision  # "auto" resolves differently per machine; the resolved one matters
    return to_jsonable(d)


def _store_identity(store: EmbeddingStore) -> dict[str, Any]:
    return {"path": str(store.path), "rows": len(store), "dim": store.dim, "encoder": store.encoder,
            "manifest_hash": store.attrs.get("manifest_hash"), "size": store.path.stat().st_size}


def _teacher_dir(state: StateDir, name: str) -> Path | None:
    run_dir = state.run_dir(name)
    for sub in ("best", "latest"):
        if (run_dir / sub / "model.safetensors").exists():
            return run_dir / sub
    return None


def _load_teacher(state: StateDir, name: str, device: torch.device):
    from ..encoders.text import TextEmbedder

    path = _teacher_dir(state, name)
    if path is None:
        raise unknown_choice("teacher run", name, state.list_runs(complete_only=True) or ["(none trained yet)"])
    teacher = TextEmbedder.from_pretrained(path, device=device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    log.info("distilling from teacher run %s (%s/)", name, path.name)
    return teacher


class _Trainer:
    """State of one training invocation; kept as an object so the loop reads top to bottom."""

    def __init__(self, state: StateDir, cfg: TrainConfig, progress: Progress, on_epoch: EpochCallback | None):
        self.state, self.cfg, self.progress, self.on_epoch = state, cfg, progress, on_epoch

    # ------------------------------------------------------------------ setup
    def setup(self) -> TrainResult | None:
        cfg = self.cfg
        if cfg.epochs < 1:
            raise MtxError(f"--epochs must be at least 1, got {cfg.epochs}")
        self.loss_name = "distillation" if cfg.teacher else cfg.loss
        if self.loss_name not in LOSSES:
            raise unknown_choice("loss", self.loss_name, LOSSES)
        if self.loss_name == "distillation" and not cfg.teacher:
            raise MtxError("the distillation loss needs a teacher", hint="pass --teacher RUN (a trained run)")
        if cfg.teacher and cfg.loss not in (DEFAULT_LOSS, "distillation"):
            log.info("--teacher given: using the distillation loss instead of %s", cfg.loss)
        if cfg.teacher and _teacher_dir(self.state, cfg.teacher) is None:
            raise unknown_choice("teacher run", cfg.teacher,
                                 self.state.list_runs(complete_only=True) or ["(none trained yet)"])

        self.runtime = select_runtime(cfg.device, cfg.precision)
        self.dist: DistInfo = init_distributed(self.runtime)
        self.manifest_name, self.manifest_path = resolve_manifest(self.state, cfg.manifest)
        self.run_name = check_name("run", cfg.run) if cfg.run else default_run_name(cfg.audio_encoder,
                                                                                     self.manifest_name)
        self.run_dir = self.state.run_dir(self.run_name)
        emb_path = self.state.embeddings_path(cfg.audio_encoder, self.manifest_name)
        if not emb_path.exists():
            raise MtxError(f"no {cfg.audio_encoder} embeddings for manifest {self.manifest_name} ({emb_path})",
                           hint=f"run `mtx embed --audio-encoder {cfg.audio_encoder} "
                                f"--manifest {self.manifest_name}` first")
        self.store = EmbeddingStore(emb_path)
        self.manifest_hash = manifest_hash(self.manifest_path)
        stored_hash = self.store.attrs.get("manifest_hash")
        if stored_hash and stored_hash != self.manifest_hash:
            log.warning("%s was embedded from a different version of manifest %s; ids missing from the store "
                        "are skipped (rerun `mtx embed --force` to refresh it)", emb_path.name, self.manifest_name)
        if self.dist.is_main:
            log.info("using manifest %s (%s)", self.manifest_name, self.manifest_path)
            log.info("using embeddings %s (%d rows, dim %d)", emb_path, len(self.store), self.store.dim)
            log.info("%s%s", self.runtime.describe(),
                     f", {self.dist.world_size} processes" if self.dist.enabled else "")

        self.result_config = _result_config(cfg, self.runtime, self.loss_name)
        if self.dist.enabled:
            # Each rank has its own data shard and RNG stream: resuming with another process count
            # would not reproduce the run, so the count is part of what must not change.
            self.result_config["world_size"] = self.dist.world_size
        stage_config = {**self.result_config, "manifest_name": self.manifest_name,
                        "manifest_hash": self.manifest_hash, "store": _store_identity(self.store)}
        if cfg.teacher:
            # a retrained teacher changes what continuing a distillation run would compute
            stage_config["teacher_created"] = ckpt.read_run_json(self.state.run_dir(cfg.teacher)).get("created")
        self.stage = self._begin_stage(f"train:{self.run_name}", stage_config)
        if self.stage.already_complete:
            return self._skipped_result()
        if self.dist.is_main:
            if not self.stage.resumed:
                self._discard()  # leftovers of a run whose stage record is gone
            ckpt.recover(self.run_dir)
        self._barrier()
        return None

    def _begin_stage(self, key: str, config: dict[str, Any]) -> StageRun:
        """Apply the stage contract on rank 0 only; other ranks follow its decision (no record races)."""
        if not self.dist.enabled:
            return begin_stage(self.state, "train", key, config, self.cfg.resume, discard=self._discard,
                               rename_hint=RENAME_HINT)
        main_stage: list[StageRun] = []

        def decide() -> tuple[bool, bool]:
            main_stage.append(begin_stage(self.state, "train", key, config, self.cfg.resume, discard=self._discard,
                                          rename_hint=RENAME_HINT))
            return main_stage[0].resumed, main_stage[0].already_complete

        resumed, complete = on_main(self.dist, decide)
        if main_stage:
            return main_stage[0]
        return StageRun(self.state, load_stage(self.state, key), resumed=resumed, already_complete=complete)

    def _discard(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _skipped_result(self) -> TrainResult:
        r = dict(self.stage.record.result)
        known = {f.name for f in fields(TrainResult)}
        res = TrainResult(**{k: v for k, v in r.items() if k in known})
        res.skipped = True
        return res

    def build(self) -> None:
        from ..encoders.text import TextEmbedder

        cfg = self.cfg
        records = read_manifest(self.manifest_path)
        self.train_split = split_pairs(records, self.store, "train")
        self.val_split: Split = split_pairs(records, self.store, cfg.val_split)
        if len(self.train_split) < 2:
            raise MtxError(f"only {len(self.train_split)} training pairs with embeddings in {self.manifest_name}",
                           hint="check the manifest splits and that `mtx embed` covered them")
        self.mean, self.std = self.store.mean_std(self.train_split.positions)
        self.train_ds = PairDataset(self.train_split, self.store, self.mean, self.std, cfg.seed,
                                    use_alt_captions=cfg.use_alt_captions)
        self.val_ds = PairDataset(self.val_split, self.store, self.mean, self.std, cfg.seed, use_alt_captions=False)
        self.sampler = EpochSampler(len(self.train_split), cfg.batch_size, cfg.seed,
                                    self.dist.rank, self.dist.world_size)
        self.steps_per_epoch = len(self.sampler)
        if self.steps_per_epoch == 0:
            raise MtxError(f"{len(self.train_split)} training pairs make no full batch of "
                           f"{cfg.batch_size} x {self.dist.world_size} processes", hint="lower --batch-size")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if self.dist.is_main:
            log.info("%d training pairs, %d validation pairs, %d steps per epoch", len(self.train_split),
                     len(self.val_split), self.steps_per_epoch)

        latest = self.run_dir / "latest"
        self.resume_state = ckpt.load_trainer_state(latest) if self.stage.resumed else None
        if self.stage.resumed and self.resume_state is None:
            log.info("no checkpoint was saved before the interruption; starting from step 0")
            if self.dist.is_main:
                self._discard()

        seed_everything(cfg.seed)
        if self.resume_state is not None:
            self.model = TextEmbedder.from_pretrained(latest, device=self.runtime.device)
        else:
            self.model = TextEmbedder.from_backbone(
                cfg.text_backbone, out_dim=self.store.dim, hidden_dim=cfg.head_hidden, dropout=cfg.dropout,
                max_length=cfg.max_length, audio_encoder=cfg.audio_encoder,
                aggregation=self.store.attrs.get("aggregation") or None).to(self.runtime.device)
            self.model.set_audio_stats(self.mean, self.std)
        self.model.train()
        freeze_backbone_parts(self.model, cfg.freeze_embeddings, cfg.freeze_layers)
        self.loss_fn = build_loss(self.loss_name, cfg.loss_config()).to(self.runtime.device)
        self.teacher = _load_teacher(self.state, cfg.teacher, self.runtime.device) if cfg.teacher else None
        if self.teacher is not None and self.teacher.config.out_dim != self.store.dim:
            raise MtxError(f"teacher {cfg.teacher} predicts dim {self.teacher.config.out_dim}, "
                           f"but the {cfg.audio_encoder} store has dim {self.store.dim}",
                           hint="distil from a run trained on the same audio encoder")

        self.optimizer = torch.optim.AdamW(param_groups(self.model, self.loss_fn, cfg), lr=cfg.lr)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.total_steps, warmup))
        self.scaler = self.runtime.grad_scaler()
        self.ddp_model: torch.nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            self.ddp_model = DDP(self.model, device_ids=ids)
            # Dropout masks should differ between ranks; the weights are synchronised by DDP.
            torch.manual_seed(cfg.seed + 1000 * self.dist.rank)

        self.metrics = ckpt.MetricsLog(self.run_dir / ckpt.METRICS, enabled=self.dist.is_main)
        self.step, self.epoch, self.batch = 0, 0, 0
        self.best: dict[str, Any] = {"epoch": None, "val_R@10": None}
        self.bad_epochs = 0
        self.epoch_loss = [0.0, 0]   # sum, count of the current epoch's train losses
        self.losses: list[float] = []
        self.epoch_summaries: list[dict[str, Any]] = []
        self.stopped_early = False
        self.created = time.time()
        if self.resume_state is not None:
            self._restore(self.resume_state)
        elif self.dist.is_main:
            self._write_run_json("running")

    def _restore(self, s: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        self.loss_fn.load_state_dict(s["loss"])
        self.step, self.epoch, self.batch = s["step"], s["epoch"], s["batch"]
        self.best, self.bad_epochs = s["best"], s["bad_epochs"]
        # bad_epochs only moves at an epoch end, so reaching patience here means that epoch end stopped
        # the run and the interruption came before it was marked complete: do not train on.
        self.stopped_early = self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience
        self.epoch_loss = list(s["epoch_loss"])
        self.losses = list(s["losses"])
        self.epoch_summaries = list(s["epoch_summaries"])
        self.created = s.get("created", self.created)
        self.metrics.truncate_to(self.step, epochs_done=self.epoch)
        # Every rank continues its own RNG stream (dropout masks differ per rank).
        restore_rng_state(s["rng_by_rank"][self.dist.rank] if self.dist.enabled else s["rng"])
        log.info("resuming %s at step %d (epoch %d, batch %d)", self.run_name, self.step, self.epoch + 1,
                 self.batch)

    # ------------------------------------------------------------------ persistence
    def _run_info(self, status: str) -> dict[str, Any]:
        return {"run": self.run_name, "audio_encoder": self.cfg.audio_encoder, "manifest": self.manifest_name,
                "manifest_path": str(self.manifest_path), "embeddings": str(self.store.path),
                "manifest_hash": self.manifest_hash, "text_backbone": self.cfg.text_backbone,
                "loss": self.loss_name, "teacher": self.cfg.teacher,
                "config": to_jsonable(asdict(self.cfg)), "created": self.created, "status": status,
                "best": self.best,
                # What the run learned from (search and eval warn when it meets other sources).
                "training_data": training_data(self.manifest_name, self.manifest_hash, self.train_split.records)}

    def _write_run_json(self, status: str) -> None:
        ckpt.write_run_json(self.run_dir, self._run_info(status))

    def _gather_rng(self) -> list[dict[str, Any]] | None:
        """Every rank's RNG state, on rank 0 (a collective: all ranks call it)."""
        if not self.dist.enabled:
            return None
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.dist.world_size if self.dist.is_main else None
        dist.gather_object(capture_rng_state(), out, dst=0)
        return out

    def save_latest(self) -> None:
        """Commit the current step: model + trainer state + meta into latest/, atomically."""
        rng_by_rank = self._gather_rng()
        if self.dist.is_main:
            state = {
                "rng_by_rank": rng_by_rank,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "loss": self.loss_fn.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch": self.batch, "rng": capture_rng_state(),
                "best": self.best, "bad_epochs": self.bad_epochs, "epoch_loss": self.epoch_loss,
                "losses": self.losses, "epoch_summaries": self.epoch_summaries, "created": self.created,
                "config": self.result_config,
            }
            meta = {"run": self.run_name, "step": self.step, "epoch": self.epoch, "batch": self.batch,
                    "total_steps": self.total_steps, "config": self.result_config, "best": self.best,
                    "losses": self.losses, "epochs": self.epoch_summaries}

            def fill(tmp: Path) -> None:
                self.model.save_pretrained(tmp)
                ckpt.save_trainer_state(tmp / ckpt.TRAINER_STATE, state)
                ckpt.write_meta(tmp / ckpt.META, meta)

            ckpt.write_checkpoint_dir(self.run_dir, "latest", fill)
            self.stage.update(step=self.step, epoch=self.epoch, batch=self.batch)
        self._barrier()

    def _save_best(self) -> None:
        if self.dist.is_main:
            ckpt.write_checkpoint_dir(self.run_dir, "best", self.model.save_pretrained)

    def _any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank (the flag itself without DDP)."""
        if not self.dist.enabled:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], device=self.runtime.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _barrier(self) -> None:
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()

    # ------------------------------------------------------------------ steps
    def _teacher_targets(self, texts: list[str]) -> torch.Tensor | None:
        """Teacher predictions mapped into this student's standardised space."""
        if self.teacher is None:
            return None
        with torch.no_grad(), self.runtime.autocast():
            tok = {k: v.to(self.runtime.device) for k, v in self.teacher.tokenize(texts).items()}
            z = self.teacher(tok["input_ids"], tok["attention_mask"]).float()
        raw = z * self.teacher.audio_std + self.teacher.audio_mean
        return self.model.standardize_audio(raw)

    def _forward(self, model: torch.nn.Module, texts: list[str], target: torch.Tensor,
                 keys: torch.Tensor | None = None):
        tok = self.model.tokenize(texts)
        with self.runtime.autocast():
            pred = model(tok["input_ids"].to(self.runtime.device), tok["attention_mask"].to(self.runtime.device))
        loss, parts = self.loss_fn(pred.float(), target, teacher_z=self._teacher_targets(texts), keys=keys)
        return pred, loss, parts

    def train_step(self, indices: np.ndarray) -> tuple[float, dict[str, float]]:
        texts, audio = self.train_ds.batch(indices)
        target = torch.from_numpy(audio).to(self.runtime.device)
        keys = torch.from_numpy(self.train_ds.pair_keys(indices, texts)).to(self.runtime.device)
        _, loss, parts = self._forward(self.ddp_model, texts, target, keys)
        if self._any_rank(not bool(torch.isfinite(loss))):  # all ranks stop together, none waits in backward
            raise MtxError(f"training diverged at step {self.step + 1} (loss {float(loss)})",
                           hint="lower --lr, or use --precision fp32")
        self.scaler.scale(loss).backward()
        if self.dist.enabled:
            self._sync_loss_grads()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        clamp_temperatures(self.loss_fn)   # after the step (open_clip): a clamp in forward kills the gradient
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), parts

    def _sync_loss_grads(self) -> None:
        """The learnable temperature lives outside DDP: average its gradient by hand."""
        import torch.distributed as dist

        for p in self.loss_fn.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.dist.world_size

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        n = len(self.val_split)
        if n == 0:
            return {"val_loss": None, "val_R@10": None}
        self.model.eval()
        texts_z, audio_z, total = [], [], 0.0
        with local_only():  # every rank validates the same items: no cross-rank gathering
            for s in range(0, n, self.cfg.batch_size):
                idx = np.arange(s, min(n, s + self.cfg.batch_size))
                texts, audio = self.val_ds.batch(idx)
                target = torch.from_numpy(audio).to(self.runtime.device)
                keys = torch.from_numpy(self.val_ds.pair_keys(idx, texts)).to(self.runtime.device)
                pred, loss, _ = self._forward(self.model, texts, target, keys)
                total += float(loss) * len(idx)
                texts_z.append(F.normalize(pred.float(), dim=-1).cpu().numpy())
                audio_z.append(F.normalize(target, dim=-1).cpu().numpy())
        self.model.train()
        # The shared protocol (musiccli.retrieval), text -> music only: validation reports nothing else.
        rel = caption_relevance(self.val_split.records, "main")
        m = text_to_music(np.concatenate(texts_z)[rel.main_item[rel.queries]], np.concatenate(audio_z), rel)
        out: dict[str, Any] = {"val_loss": total / n}
        out.update({f"val_{k}": v for k, v in m.items()})
        return out

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        start_time, start_step = time.time(), self.step
        cfg = self.cfg
        with self.progress.task("Training", total=self.total_steps, unit="steps", completed=self.step) as task:
            while self.epoch < cfg.epochs and not self.stopped_early:
                batches = self.sampler.batches(self.epoch)
                self.train_ds.set_epoch(self.epoch)
                while self.batch < len(batches):
                    loss, parts = self.train_step(batches[self.batch])
                    self.step += 1
                    self.batch += 1
                    self.losses.append(loss)
                    self.epoch_loss = [self.epoch_loss[0] + loss, self.epoch_loss[1] + 1]
                    self.metrics.append({"step": self.step, "epoch": self.epoch + 1, "train_loss": loss,
                                         "lr": self.scheduler.get_last_lr()[0], **parts})
                    task.advance(1)
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.batch < len(batches):
                        self.save_latest()
                    try:
                        self.progress.check_interrupt()
                        interrupted = None
                    except Interrupted as e:
                        interrupted = e
                    # Ranks see Ctrl-C at slightly different times; they must stop after the same step,
                    # or one waits in save_latest's barrier while another waits in the next step's gather.
                    if self._any_rank(interrupted is not None):
                        self.save_latest()  # the step is complete: commit it before stopping
                        raise interrupted or Interrupted("interrupted on another rank")
                self._end_epoch()
        return self._finish(time.time() - start_time, self.step - start_step)

    def _end_epoch(self) -> None:
        val = self.validate()
        train_loss = self.epoch_loss[0] / max(1, self.epoch_loss[1])
        epoch_no = self.epoch + 1
        r10 = val["val_R@10"]
        improved = r10 is None or self.best["val_R@10"] is None or r10 > self.best["val_R@10"]
        if improved:
            self.best = {"epoch": epoch_no, "val_R@10": r10}
            self.bad_epochs = 0
            self._save_best()
        else:
            self.bad_epochs += 1
        summary = {"epoch": epoch_no, "step": self.step, "epoch_train_loss": train_loss, **val,
                   "best": improved}
        self.epoch_summaries.append(summary)
        self.metrics.append(summary)
        if self.dist.is_main:
            if self.on_epoch is not None:
                self.on_epoch(summary)
            else:
                log.info("epoch %d/%d: train loss %.4f, val loss %s, val R@10 %s", epoch_no, self.cfg.epochs,
                         train_loss, _fmt(val["val_loss"]), _fmt(r10))
        if self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience:
            self.stopped_early = True
            log.info("stopping early: val R@10 did not improve for %d epochs", self.bad_epochs)
        self.epoch += 1
        self.batch = 0
        self.epoch_loss = [0.0, 0]
        self.save_latest()
        if self.dist.is_main:
            self._write_run_json("running")

    def _finish(self, seconds: float, steps_now: int) -> TrainResult:
        last = self.epoch_summaries[-1] if self.epoch_summaries else {}
        result = TrainResult(
            run=self.run_name, run_dir=str(self.run_dir), manifest=self.manifest_name,
            embeddings=str(self.store.path), loss=self.loss_name, epochs_done=self.epoch, steps=self.step,
            best_epoch=self.best["epoch"], best_val_r10=self.best["val_R@10"],
            final_train_loss=last.get("epoch_train_loss"), final_val_loss=last.get("val_loss"),
            seconds=seconds, steps_per_s=steps_now / seconds if seconds > 0 else 0.0,
            stopped_early=self.stopped_early, epochs=self.epoch_summaries)
        if self.dist.is_main:
            self._write_run_json("complete")
            self.stage.complete(result=asdict(result))
        self._barrier()
        return result

    def abandon(self) -> None:
        """Setup failed before any step (bad backbone, too little data): forget a fresh run entirely,
        so that the corrected command starts cleanly instead of being refused as interrupted."""
        if self.dist.is_main and not self.stage.resumed:
            self.stage.path.unlink(missing_ok=True)
            self._discard()

    def close(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


@stage_function
def run_train(state: StateDir, cfg: TrainConfig, progress: Progress | None = None,
              on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train (or resume, or skip when complete) one run; see the module docstring."""
    trainer = _Trainer(state, cfg, progress or NullProgress(), on_epoch)
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
