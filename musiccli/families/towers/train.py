"""The towers family's training parts (``align``, ``joint``): text/audio pairs streamed from one store.

A step sends a batch of captions through the text tower and the batch's standardised stored audio
vectors through the audio tower (the identity for ``align``), and hands both to the loss registry's
loss (GradCache when ``--accum-steps`` > 1, ``training.step``). Runs under ``torchrun`` with DDP.
The one trainer (``training.trainer``) does everything else.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import MtxError, unknown_choice
from ...manifest import SPLITS, manifest_hash, read_manifest, resolve_manifest
from ...provenance import training_data
from ...runs import CHECKPOINTS, RunMeta, find_checkpoint
from ...runtime import Runtime, init_distributed, select_runtime
from ...state import check_name, file_sha256, to_jsonable
from ...store import EmbeddingStore
from ...training.config import TrainConfig, default_run_name
from ...training.data import EpochSampler, PairDataset, Split, split_pairs
from ...training.distributed import Collective
from ...training.losses import build_loss, local_only, loss_names
from ...training.step import Stepper
from ...training.textrep import TEXT_REPS
from ...training.train_state import TrainState
from ...training.trainer import TrainContext, ValVectors, lr_lambda
from .model import Towers, load_towers
from .objectives import Objective, TowerSpec, check_loss, get_objective

log = logging.getLogger(__name__)

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
    native = getattr(getattr(model, "config", None), "native", None)
    for name, p in model.named_parameters():
        if not name.startswith("backbone."):
            continue
        if native:   # a native tower's pooler feeds its projection: it trains; its layers sit under text_model.
            name = name.replace("backbone.text_model.", "backbone.", 1)
        layer = _LAYER_RE.search(name)
        if ((name.startswith("backbone.pooler.") and not native)
                or (embeddings and name.startswith("backbone.embeddings."))
                or (layer is not None and int(layer.group(1)) < lowest_layers)):
            p.requires_grad_(False)


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


def parse_init_from(spec: str) -> tuple[str, str | None]:
    """``RUN`` or ``RUN:best`` / ``RUN:latest``."""
    if not spec.strip():
        raise MtxError("--init-from is empty", hint="pass --init-from RUN[:best|latest], or leave it out")
    name, sep, which = spec.partition(":")
    if sep and which not in CHECKPOINTS:
        raise unknown_choice("checkpoint", which, CHECKPOINTS)
    return check_name("run", name), (which if sep else None)


NATIVE_INIT = "native"


def native_source(cfg: TrainConfig, store: EmbeddingStore) -> dict[str, Any]:
    """``--init-from native``: the audio encoder's own text tower, from the checkpoint that embedded the store."""
    from ...encoders.text import NATIVE_BACKBONES

    if cfg.audio_encoder not in NATIVE_BACKBONES:
        has = "has a text tower that is not a transformers module" if cfg.audio_encoder == "muq" else \
            "has no native text tower"
        raise MtxError(f"--init-from native: audio encoder {cfg.audio_encoder!r} {has}",
                       hint=f"native towers train for: {', '.join(NATIVE_BACKBONES)}; for {cfg.audio_encoder} "
                            "drop --init-from (the run then starts from --text-backbone)")
    if cfg.objective != "align":
        raise MtxError("--init-from native trains an align run: the native tower already shares the "
                       "encoder's space", hint="drop --objective, or pass --objective align")
    if cfg.text_backbone not in (None, "minilm") or cfg.text_pooling not in (None, "mean"):
        raise MtxError("--init-from native starts from the encoder's own text tower",
                       hint="drop --text-backbone/--text-pooling")
    model = store.attrs.get("model_id") or None
    if not model:
        from ...encoders.base import AUDIO_ENCODERS

        model = AUDIO_ENCODERS[cfg.audio_encoder][0].default_model
    return {"native": cfg.audio_encoder, "model": str(model)}


def init_source(state, spec: str) -> dict[str, Any]:
    """The lineage record of ``--init-from``: which run and checkpoint, and the weights' identity."""
    name, which = parse_init_from(spec)
    path = find_checkpoint(state, name, which)
    if path is None:
        raise unknown_choice(f"run to init from ({which or 'best or latest'} checkpoint)", name,
                             state.list_runs(complete_only=False) or ["(none trained yet)"])
    meta = RunMeta.read(state.run_dir(name)) or RunMeta()
    return {"run": name, "checkpoint": path.name, "path": str(path),
            "head_sha256": file_sha256(path / "model.safetensors")[:16], "created": meta.created}


def _result_config(cfg: TrainConfig, runtime: Runtime, loss_name: str) -> dict[str, Any]:
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg)
         if f.name not in TrainConfig.NOT_RESULT_AFFECTING and f.name not in TrainConfig.STUDENT_FIELDS}
    d["loss"] = loss_name
    d["precision"] = runtime.precision  # "auto" resolves differently per machine; the resolved one matters
    return to_jsonable(d)


def _store_identity(store: EmbeddingStore) -> dict[str, Any]:
    return {"path": "/".join(store.path.parts[-3:]), "rows": len(store),   # not where the state dir is "dim": store.dim, "encoder": store.encoder,
            "manifest_hash": store.attrs.get("manifest_hash"), "size": store.path.stat().st_size}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def check_config(cfg: TrainConfig) -> tuple[Objective, str]:
    """Refuse bad combinations before any work; returns the objective and the loss name."""
    if cfg.accum_steps < 1:
        raise MtxError(f"--accum-steps must be at least 1, got {cfg.accum_steps}")
    if cfg.text_rep not in TEXT_REPS:
        raise unknown_choice("text representation", cfg.text_rep, TEXT_REPS)
    if cfg.val_split not in SPLITS:
        raise unknown_choice("validation split", cfg.val_split, SPLITS)
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
    # A native tower's space is a cosine space of unnormalised vectors: MSE (in "combined") would pull the
    # text vectors' norms onto the audio vectors', so a native start trains with InfoNCE alone.
    default_loss = "infonce" if cfg.init_from == NATIVE_INIT else objective.default_loss
    loss_name = "distillation" if cfg.teacher else (cfg.loss or default_loss)
    parts = loss_names(loss_name)
    check_loss(objective, parts)
    if "distillation" in parts and not cfg.teacher:
        raise MtxError("the distillation loss needs a teacher", hint="pass --teacher RUN (a trained run)")
    if cfg.teacher and cfg.init_from:
        raise MtxError("--teacher and --init-from exclude each other", hint="distil into a fresh student")
    return objective, loss_name


class TowersParts:
    """The towers family's :class:`~musiccli.training.trainer.TrainParts`."""

    def __init__(self, ctx: TrainContext) -> None:
        self.state, self.cfg, self.progress = ctx.state, ctx.cfg, ctx.progress
        self.store: EmbeddingStore | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, state = self.cfg, self.state
        self.objective, self.loss_name = check_config(cfg)
        if cfg.teacher and find_checkpoint(state, cfg.teacher) is None:
            raise unknown_choice("teacher run", cfg.teacher, state.list_runs(complete_only=True) or ["(none trained yet)"])
        self.native = cfg.init_from == NATIVE_INIT
        self.init_source = (init_source(state, cfg.init_from) if cfg.init_from is not None and not self.native
                            else None)
        self.runtime = select_runtime(cfg.device, cfg.precision)
        self.collective = Collective(init_distributed(self.runtime), self.runtime.device)
        self.manifest_name, self.manifest_path = resolve_manifest(state, cfg.manifest)
        self.run_name = check_name("run", cfg.run) if cfg.run else default_run_name(cfg.audio_encoder,
                                                                                     self.manifest_name)
        if self.native:
            self.init_source = native_source(cfg, self.store or self._open_store())
        elif self.init_source is not None and self.init_source["run"] == self.run_name:
            raise MtxError(f"--init-from {cfg.init_from} names the run being trained",
                           hint="give the new stage its own --run name")
        self.run_dir = state.run_dir(self.run_name)
        self.store = self.store or self._open_store()
        self.result_config = _result_config(cfg, self.runtime, self.loss_name)
        if self.collective.enabled:
            # Each rank has its own data shard and RNG stream: resuming with another process count
            # would not reproduce the run, so the count is part of what must not change.
            self.result_config["world_size"] = self.collective.world_size
        self.stage_config = {**self.result_config, "manifest_name": self.manifest_name,
                             "manifest_hash": self.manifest_hash, "store": _store_identity(self.store)}
        if cfg.teacher:
            # a retrained teacher changes what continuing a distillation run would compute
            self.stage_config["teacher_created"] = (RunMeta.read(state.run_dir(cfg.teacher)) or RunMeta()).created
        if self.init_source is not None:
            self.stage_config["init_from"] = {k: v for k, v in self.init_source.items() if k != "path"}

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

    # ------------------------------------------------------------------ build
    def build_data(self) -> int:
        cfg = self.cfg
        records = read_manifest(self.manifest_path)
        self.train_split = split_pairs(records, self.store, "train")
        self.val_split: Split = split_pairs(records, self.store, cfg.val_split)
        if len(self.train_split) < 2:
            raise MtxError(f"only {len(self.train_split)} training pairs with embeddings in {self.manifest_name}",
                           hint="check the manifest splits and that `mtx embed` covered them")
        if self.native:   # the native tower's space is the stored vectors' own (cosine, no standardising)
            self.mean, self.std = np.zeros(self.store.dim, np.float32), np.ones(self.store.dim, np.float32)
        else:
            self.mean, self.std = self.store.mean_std(self.train_split.positions)
        self.train_ds = PairDataset(self.train_split, self.store, self.mean, self.std, cfg.seed,
                                    use_alt_captions=cfg.use_alt_captions, text_rep=cfg.text_rep)
        self.val_ds = PairDataset(self.val_split, self.store, self.mean, self.std, cfg.seed, use_alt_captions=False)
        # A step sees accum_steps sub-batches of batch_size: the sampler deals the whole step's batch.
        self.sampler = EpochSampler(len(self.train_split), cfg.batch_size * cfg.accum_steps, cfg.seed,
                                    self.collective.rank, self.collective.world_size)
        steps = len(self.sampler)
        if steps == 0:
            raise MtxError(f"{len(self.train_split)} training pairs make no full batch of "
                           f"{cfg.batch_size * cfg.accum_steps} x {self.collective.world_size} processes",
                           hint="lower --batch-size or --accum-steps")
        if self.collective.is_main:
            log.info("%d training pairs, %d validation pairs, %d steps per epoch", len(self.train_split),
                     len(self.val_split), steps)
        return steps

    def prepare(self, resumed: bool) -> None:
        pass

    def _tower_spec(self) -> TowerSpec:
        cfg = self.cfg
        native = self.init_source if self.native else None
        return TowerSpec(backbone=native["model"] if native else str(cfg.text_backbone), store_dim=self.store.dim,
                         mean=self.mean, std=self.std, head_hidden=cfg.head_hidden, dropout=cfg.dropout,
                         pooling="native" if native else str(cfg.text_pooling), max_length=cfg.max_length,
                         audio_encoder=cfg.audio_encoder, aggregation=self.store.attrs.get("aggregation") or None,
                         joint_dim=cfg.joint_dim, native=native["native"] if native else None)

    def _build_towers(self, resume_state: dict[str, Any] | None) -> Towers:
        device = self.runtime.device
        if resume_state is not None:
            return load_towers(self.run_dir / "latest", device=device)
        spec = self._tower_spec()
        if self.init_source is None or self.native:
            if self.native:
                log.info("initialising from the native %s text tower (%s): the run starts as its zero-shot "
                         "search and learns a residual", spec.native, spec.backbone)
            return self.objective.build(spec).to(device)
        source = f"run {self.init_source['run']} ({self.init_source['checkpoint']})"
        towers = load_towers(self.init_source["path"], device=device)
        self.objective.check(towers, spec, source)
        # The heads were trained on the source run's audio statistics: they are kept (not refit on
        # this manifest), so the loaded model starts out computing exactly what it computed there.
        log.info("initialising from %s; keeping its audio statistics", source)
        return towers

    def _load_teacher(self):
        from ...encoders.text import TextEmbedder

        cfg = self.cfg
        path = find_checkpoint(self.state, cfg.teacher)
        teacher = TextEmbedder.from_pretrained(path, device=self.runtime.device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        log.info("distilling from teacher run %s (%s/)", cfg.teacher, path.name)
        if teacher.config.out_dim != self.store.dim:
            raise MtxError(f"teacher {cfg.teacher} predicts dim {teacher.config.out_dim}, "
                           f"but the {cfg.audio_encoder} store has dim {self.store.dim}",
                           hint="distil from a run trained on the same audio encoder")
        return teacher

    def build_model(self, resume_state: dict[str, Any] | None, total_steps: int) -> None:
        cfg = self.cfg
        self.towers = self._build_towers(resume_state)
        self.towers.train()
        freeze_backbone_parts(self.towers.text, cfg.freeze_embeddings, cfg.freeze_layers)
        if cfg.grad_checkpointing:
            self.towers.text.enable_grad_checkpointing()
        self.loss_fn = build_loss(self.loss_name, cfg.loss_config()).to(self.runtime.device)
        teacher = self._load_teacher() if cfg.teacher else None
        optimizer = torch.optim.AdamW(param_groups(self.towers.text, self.loss_fn, cfg, self.towers.audio), lr=cfg.lr)
        warmup = int(cfg.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup))
        text_model = self.collective.wrap(self.towers.text, self.runtime)
        if self.collective.enabled:
            # Dropout masks should differ between ranks; the weights are synchronised by DDP.
            torch.manual_seed(cfg.seed + 1000 * self.collective.rank)
        self.stepper = Stepper(self.towers, text_model, self.loss_fn, optimizer, scheduler,
                               self.runtime.grad_scaler(), self.runtime, self.collective, cfg.grad_clip,
                               cfg.accum_steps, teacher)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        st = self.stepper
        return {"optimizer": st.optimizer.state_dict(), "scheduler": st.scheduler.state_dict(),
                "scaler": st.scaler.state_dict(), "loss": self.loss_fn.state_dict()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        st = self.stepper
        st.optimizer.load_state_dict(s["optimizer"])
        st.scheduler.load_state_dict(s["scheduler"])
        st.scaler.load_state_dict(s["scaler"])
        self.loss_fn.load_state_dict(s["loss"])

    def save_models(self, path: Path) -> None:
        self.towers.save_pretrained(path)

    def run_meta(self, status: str, ts: TrainState) -> RunMeta:
        cfg = self.cfg
        meta = RunMeta(run=self.run_name, audio_encoder=cfg.audio_encoder, manifest=self.manifest_name,
                       manifest_path=str(self.manifest_path), embeddings=str(self.store.path),
                       manifest_hash=self.manifest_hash, objective=cfg.objective,
                       text_backbone=self.init_source["model"] if self.native else cfg.text_backbone,
                       space_dim=self.towers.dim, text_rep=cfg.text_rep, loss=self.loss_name, teacher=cfg.teacher,
                       config=to_jsonable({k: v for k, v in asdict(cfg).items()
                                           if k not in TrainConfig.STUDENT_FIELDS}),
                       created=ts.created, status=status, best=ts.best,
                       # What the run learned from (search and eval warn when it meets other sources).
                       training_data=training_data(self.manifest_name, self.manifest_hash, self.train_split.records))
        if self.native:
            meta.init_from = dict(self.init_source)
        elif self.init_source is not None:
            src = self.init_source
            parent = RunMeta.read(self.state.run_dir(src["run"])) or RunMeta()
            # lineage: the parent and, through it, every earlier stage
            meta.init_from = {"run": src["run"], "checkpoint": src["checkpoint"],
                              "head_sha256": src["head_sha256"], "manifest": parent.manifest,
                              "audio_stats": "kept from the parent run",
                              "lineage": [src["run"], *((parent.init_from or {}).get("lineage") or [])]}
        return meta

    def result_fields(self) -> dict[str, Any]:
        return {"manifest": self.manifest_name, "embeddings": str(self.store.path), "loss": self.loss_name,
                "objective": self.cfg.objective}

    # ------------------------------------------------------------------ loop
    def batches(self, epoch: int, start: int) -> list[np.ndarray]:
        self.train_ds.set_epoch(epoch)
        return self.sampler.batches(epoch)

    def step(self, indices: np.ndarray, step: int, epoch: int) -> dict[str, Any]:
        texts, audio = self.train_ds.batch(indices)
        keys = torch.from_numpy(self.train_ds.pair_keys(indices, texts)).to(self.runtime.device)
        event = self.stepper.step(texts, audio, step + 1, keys)
        event["lr"] = self.stepper.scheduler.get_last_lr()[0]
        return event

    def epoch_done(self) -> None:
        pass

    def train_mode(self, on: bool) -> None:
        self.towers.train(on)

    def validate(self, batch_size: int) -> ValVectors | None:
        n = len(self.val_split)
        if n == 0:
            return None
        texts_z, audio_z, total = [], [], 0.0
        with local_only():  # every rank validates the same items: no cross-rank gathering
            for s in range(0, n, batch_size):
                idx = np.arange(s, min(n, s + batch_size))
                texts, audio = self.val_ds.batch(idx)
                target = torch.from_numpy(audio).to(self.runtime.device)
                keys = torch.from_numpy(self.val_ds.pair_keys(idx, texts)).to(self.runtime.device)
                pred = self.stepper.encode_text(self.towers.text, texts)
                loss, _ = self.stepper.loss(pred, target, texts, keys)
                total += float(loss) * len(idx)
                texts_z.append(F.normalize(pred, dim=-1).cpu().numpy())
                audio_z.append(F.normalize(self.towers.audio(target).float(), dim=-1).cpu().numpy())
        return ValVectors(self.val_split.records, np.concatenate(texts_z), np.concatenate(audio_z), total / n, {})

    def describe_epoch(self, summary: dict[str, Any]) -> str:
        return (f"train loss {summary['epoch_train_loss']:.4f}, val loss {_fmt(summary['val_loss'])}, "
                f"val R@10 {_fmt(summary['val_R@10'])}")

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
