"""The student family's training parts: both student towers trained from audio, distilled from teacher stores.

The one trainer (``training.trainer``) drives :class:`StudentParts`; ``mtx train --objective student``
maps its :class:`~musiccli.training.config.TrainConfig` onto :class:`StudentTrainConfig`
(:func:`student_train_config`), and :func:`run_student_train` trains from a ``StudentTrainConfig``
directly. Loss per step::

    contrastive_weight * InfoNCE(text tower, music tower)
      + sum_t weight_t * D(P_t(music), standardise_t(teacher_t))

``P_t`` is a learned linear projection from the 256-d student space to teacher ``t``'s dim (one per
teacher, never a slice of the student vector), ``standardise_t`` uses the teacher store's train-split
mean/std, and ``D`` is MSE or ``1 - cosine`` (``--distill-loss``). Teachers are any audio encoders
whose store exists for the manifest; a missing one is refused with the `mtx embed` command that builds it.

``text_teacher`` (``--text-teacher RUN[:WEIGHT]``, default weight 0.3) adds
``weight * (1 - cos(P_t(text tower(caption)), teacher_text(caption)))``: ``RUN`` is an ``align`` run whose
audio encoder ``t`` is one of the teachers, so its text embedder predicts into ``t``'s space; its
vectors for every train/val caption are computed once in ``build()``, mapped back to ``t``'s native space
and standardised with the student's statistics for ``t`` (the music side's targets), and the text tower
shares the music side's projection ``P_t``. Its cosine is logged per epoch on val (``val_text_cosine_t``).

Data: DataLoader workers decode each track at 48 kHz, take a random crop and compute the log-mel
(``encoders.student.LogMel``). The crop offset and the caption are pure functions of (seed, epoch,
index), and the loaders get their own seeded generator instead of drawing from the global RNG, so a
checkpoint's (epoch, batch) plus its RNG states (dropout) resume to the same losses. Validation uses
the centre crop and the main caption. Runs are single-process: DDP would need SyncBatchNorm, which
PyTorch runs only on GPUs.

``mel_cache=True`` (``--mel-cache``): the full-track dB mel of every train/val track is computed once
(:mod:`.melcache`, a stage of its own, shared by every student run on the manifest and front end) and
crops are taken from it in frame space with the same (seed, epoch, index) keys, then scaled per crop as
``LogMel`` does. Cached crops start on a hop boundary and their edge frames see the real neighbouring
audio instead of reflect padding, so a cached run is not bit-identical to an uncached one; the flag is
part of the result-affecting config (recorded only when on, so earlier runs' records keep theirs). The
cache is built before the seed is set, so a run computes the same whether it built the cache or found it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...audio import decode
from ...errors import MtxError, unknown_choice
from ...manifest import Record, manifest_hash, read_manifest, resolve_manifest
from ...progress import NullProgress, Progress
from ...provenance import training_data
from ...retrieval import pair_keys
from ...runs import RunMeta
from ...runtime import DistInfo, select_runtime
from ...state import Resume, StateDir, check_name, stage_function, to_jsonable
from ...store import EmbeddingStore
from ...training.config import EpochCallback, TrainConfig, TrainResult
from ...training.data import EpochSampler
from ...training.distributed import Collective
from ...training.fit import run_trainer
from ...training.losses import InfoNCELoss, LossConfig
from ...training.train_state import TrainState
from ...training.trainer import TrainContext, Trainer, ValVectors, lr_lambda
from .frontend import LogMel, take_crop
from .melcache import MelCache, crop_frames, ensure_mel_cache
from .model import StudentConfig, StudentModel, train_tokenizer

log = logging.getLogger(__name__)

DISTILL_LOSSES = ("mse", "cosine")
DEFAULT_TEACHERS = "musicnn:0.3,dsp:0.4"
DEFAULT_TEXT_TEACHER_WEIGHT = 0.3


_ARCH = StudentConfig()   # the architecture defaults below are StudentConfig's, so the two cannot drift


@dataclass
class StudentTrainConfig:
    manifest: str | None = None
    run: str | None = None                 # None = "student-<manifest>"
    teachers: str = DEFAULT_TEACHERS       # "name:weight,..." (the design's pair is musicnn:0.3,clap:0.4)
    contrastive_weight: float = 0.3
    distill_loss: str = "mse"
    temperature: float = 0.07
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_ratio: float = 0.05
    grad_clip: float | None = 1.0
    patience: int | None = None
    # architecture (StudentConfig's fields of the same names)
    blocks: int = _ARCH.blocks
    base_channels: int = _ARCH.base_channels
    residual: bool = _ARCH.residual
    dim: int = _ARCH.dim
    dropout: float = _ARCH.dropout
    crop_s: float = _ARCH.crop_s
    text_encoder: str = _ARCH.text_encoder
    text_width: int = _ARCH.text_width
    text_layers: int = _ARCH.text_layers
    text_heads: int = _ARCH.text_heads
    vocab_size: int = _ARCH.vocab_size
    max_length: int = _ARCH.max_length
    use_alt_captions: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 2
    mel_cache: bool = False                # crops from <state>/cache/mel (see training/melcache.py)
    text_teacher: str | None = None        # "RUN" or "RUN:WEIGHT": an align run whose text embedder teaches
    checkpoint_every: int | None = None
    eval_every: int | None = None          # steps; validate mid-epoch too (logged, never changes best)
    report_to: str = "none"                # none | tensorboard | wandb
    resume: Resume = Resume.FRESH

    NOT_RESULT_AFFECTING = ("device", "checkpoint_every", "resume", "run", "manifest", "num_workers", "eval_every",
                            "report_to")

    def student_config(self, vocab_size: int, teacher_dims: dict[str, int]) -> StudentConfig:
        """The architecture fields (same names here and in StudentConfig; the front end keeps its defaults)."""
        arch = {f.name: getattr(self, f.name) for f in fields(StudentConfig) if f.name in _ARCH_FIELDS}
        return StudentConfig(**arch, vocab_size=vocab_size, teachers=dict(teacher_dims))


_ARCH_FIELDS = ("blocks", "base_channels", "residual", "dim", "dropout", "crop_s", "text_encoder", "text_width",
                "text_layers", "text_heads", "max_length")


def parse_teachers(text: str) -> dict[str, float]:
    """``"musicnn:0.3,dsp:0.4"`` -> {"musicnn": 0.3, "dsp": 0.4} (a bare name weighs 1.0)."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise MtxError(f"invalid teacher weight in {part!r}", hint="use NAME:WEIGHT, e.g. musicnn:0.3") from None
        if w < 0 or name.strip() in out:
            raise MtxError(f"invalid teacher {part!r}", hint="each teacher once, with a non-negative weight")
        out[name.strip()] = w
    if not out:
        raise MtxError("no teachers given", hint=f"e.g. --teachers {DEFAULT_TEACHERS}")
    return out


def parse_text_teacher(text: str) -> tuple[str, float]:
    """``"RUN"`` -> (RUN, 0.3); ``"RUN:0.5"`` -> (RUN, 0.5). Run names cannot hold ':' (``check_name``)."""
    name, sep, weight = text.strip().rpartition(":")
    if not sep:
        name, weight = weight, ""
    try:
        w = float(weight) if weight else DEFAULT_TEXT_TEACHER_WEIGHT
    except ValueError:
        raise MtxError(f"invalid --text-teacher weight in {text!r}", hint="use RUN or RUN:WEIGHT, e.g. minilm-lib:0.3") \
            from None
    if not name or not w >= 0:
        raise MtxError(f"invalid --text-teacher {text!r}", hint="use RUN or RUN:WEIGHT with a non-negative weight")
    return check_name("run", name), w


@dataclass
class _TextTeacher:
    """An align run's text embedder: its vectors live in its audio encoder's (a teacher's) space."""

    run: str
    weight: float
    teacher: str                   # the --teachers entry whose space (and projection head) it shares
    checkpoint: Path
    info: dict[str, Any]
    targets: torch.Tensor | None = None        # [captions, teacher dim], standardised as the student's teacher
    row: dict[str, int] | None = None           # caption -> row of ``targets``


def _key(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


class AudioCrops(torch.utils.data.Dataset):
    """(index, log-mel crop) per track; runs in DataLoader workers. ``random=False``: centre crops."""

    def __init__(self, records: list[Record], cfg: StudentConfig, seed: int, random: bool) -> None:
        self.paths = [r.audio_path for r in records]
        self.cfg, self.seed, self.random, self.epoch = cfg, seed, random, 0
        self._front: LogMel | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        if self._front is None:
            self._front = LogMel(self.cfg)
        try:
            wave, _ = decode(self.paths[i], self.cfg.sample_rate)
        except MtxError as e:   # reported by the main process as one line, not a worker traceback
            return i, None, e.message
        key = _key("crop", self.seed, self.epoch, i) if self.random else None
        crop = take_crop(wave, self.cfg.crop_samples, key)
        with torch.no_grad():
            mel = self._front(torch.from_numpy(np.ascontiguousarray(crop))[None])[0]
        return i, mel, None


class CachedCrops(torch.utils.data.Dataset):
    """As :class:`AudioCrops`, from the mel cache: crops in frame space (aligned to the hop), same keys."""

    def __init__(self, records: list[Record], cfg: StudentConfig, seed: int, random: bool, cache: MelCache) -> None:
        self.ids = [r.id for r in records]
        self.cfg, self.seed, self.random, self.epoch, self.cache = cfg, seed, random, 0, cache
        self.n_frames = crop_frames(cfg)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        key = _key("crop", self.seed, self.epoch, i) if self.random else None
        return i, self.cache.crop(self.ids[i], self.n_frames, key, self.cfg.top_db), None


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[np.ndarray, torch.Tensor]:
    bad = next((why for _, m, why in items if m is None), None)
    if bad is not None:
        return np.zeros(0, dtype=np.int64), bad   # type: ignore[return-value]
    return np.array([i for i, _, _ in items], dtype=np.int64), torch.stack([m for _, m, _ in items])


def _checked(batches):
    """Loader batches; a track that cannot be decoded stops training with one clear line."""
    for idx, mel in batches:
        if isinstance(mel, str):
            raise MtxError(f"cannot read training audio: {mel}",
                           hint="run `mtx verify` on the source, fix or drop the file, then `mtx unify --force`")
        yield idx, mel


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


@dataclass
class _Teacher:
    name: str
    weight: float
    store: EmbeddingStore
    train_pos: np.ndarray
    val_pos: np.ndarray


class StudentParts:
    """The student family's :class:`~musiccli.training.trainer.TrainParts` (single process: DDP would need
    SyncBatchNorm, which PyTorch runs only on GPUs)."""

    def __init__(self, state: StateDir, cfg: StudentTrainConfig) -> None:
        self.state, self.cfg = state, cfg
        self.text_teacher: _TextTeacher | None = None
        self.teachers: list[_Teacher] = []
        self.mel_cache_path: Path | None = None
        self.progress: Progress = NullProgress()
        self._train_batches = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        if cfg.distill_loss not in DISTILL_LOSSES:
            raise unknown_choice("distillation loss", cfg.distill_loss, DISTILL_LOSSES)
        if not cfg.contrastive_weight >= 0 or math.isinf(cfg.contrastive_weight):
            raise MtxError(f"--contrastive-weight must be a finite number >= 0, got {cfg.contrastive_weight}")
        cfg.student_config(cfg.vocab_size, {}).validate()
        self.weights = parse_teachers(cfg.teachers)
        if cfg.contrastive_weight == 0 and not any(self.weights.values()) and not cfg.text_teacher:
            raise MtxError("every loss weight is zero: the student would not learn anything",
                           hint="give --contrastive-weight or a teacher a positive weight")
        self.runtime = select_runtime(cfg.device, cfg.precision)
        self.collective = Collective(DistInfo(), self.runtime.device)
        self.manifest_name, self.manifest_path = resolve_manifest(self.state, cfg.manifest)
        stores = {}
        for name in self.weights:
            path = self.state.embeddings_path(name, self.manifest_name)
            if not path.exists():
                raise MtxError(f"teacher {name!r} has no embeddings for manifest {self.manifest_name} ({path})",
                               hint=f"run `mtx embed --audio-encoder {name} --manifest {self.manifest_name}` "
                                    f"first, or drop it from --teachers")
            stores[name] = path
        self.text_teacher = self._text_teacher(stores) if cfg.text_teacher else None
        self.run_name = check_name("run", cfg.run or f"student-{self.manifest_name}")
        self.run_dir = self.state.run_dir(self.run_name)
        self.manifest_hash = manifest_hash(self.manifest_path)
        self.result_config = to_jsonable({f.name: getattr(cfg, f.name) for f in fields(cfg)
                                          if f.name not in StudentTrainConfig.NOT_RESULT_AFFECTING
                                          and not _off(f.name, getattr(cfg, f.name))})
        self.result_config["objective"] = "student"
        self.result_config["precision"] = self.runtime.precision
        self.stage_config = {**self.result_config, "manifest_name": self.manifest_name,
                             "manifest_hash": self.manifest_hash,
                             "teacher_stores": {n: _file_identity(p) for n, p in stores.items()}}
        if self.text_teacher is not None:   # retrained teacher weights change the targets
            self.stage_config["text_teacher_weights"] = self.text_teacher.info["weights"]
        for name in self.weights:
            self.teachers.append(_Teacher(name, self.weights[name], EmbeddingStore(stores[name]),
                                          np.zeros(0, np.int64), np.zeros(0, np.int64)))
        log.info("using manifest %s; teachers %s; %s", self.manifest_name,
                 ", ".join(f"{t.name} (dim {t.store.dim}, weight {t.weight:g})" for t in self.teachers),
                 self.runtime.describe())

    def _text_teacher(self, stores: dict[str, Path]) -> _TextTeacher:
        """Check ``--text-teacher``: an existing align run (with weights) aligned to one of ``--teachers``."""
        from ...runs import RUN_JSON, resolve_run, weights_identity

        name, weight = parse_text_teacher(str(self.cfg.text_teacher))
        if not (self.state.run_dir(name) / RUN_JSON).exists():
            raise MtxError(f"--text-teacher run {name!r} not found in {self.state.root / 'runs'}",
                           hint="train one first: mtx train --audio-encoder TEACHER --run NAME (an align run)")
        info = resolve_run(self.state, name, announce=False)
        if info.objective != "align":
            raise MtxError(f"--text-teacher run {name!r} is a {info.objective} run, not an align run",
                           hint="a joint or student run's text vectors live in its own learned space; pass a run "
                                "trained with `mtx train --audio-encoder TEACHER` (the align objective)")
        if info.audio_encoder not in self.weights:
            raise MtxError(f"--text-teacher run {name!r} is aligned to {info.audio_encoder}, which is not one of "
                           f"--teachers ({', '.join(self.weights)})",
                           hint=f"add {info.audio_encoder}:WEIGHT to --teachers, or pick an align run of one of them")
        ckpt_dir = info.checkpoint_dir(info.default_checkpoint())
        if info.meta.get("manifest") != self.manifest_name:
            log.warning("--text-teacher run %s was trained on manifest %s, this student on %s; its text space is "
                        "still %s's", name, info.meta.get("manifest"), self.manifest_name, info.audio_encoder)
        return _TextTeacher(run=name, weight=weight, teacher=info.audio_encoder, checkpoint=ckpt_dir,
                            info={"run": name, "weight": weight, "audio_encoder": info.audio_encoder,
                                  "checkpoint": ckpt_dir.name, "manifest": info.meta.get("manifest"),
                                  "weights": weights_identity(ckpt_dir)})

    def _text_targets(self, captions: list[str]) -> None:
        """The text teacher's vectors for every training/validation caption, once (batched, no grad), mapped
        from its run's standardised space to the native teacher space and standardised as the student's
        teacher targets are, so ``P_t`` serves the music and the text side alike."""
        from ...encoders.text import TextEmbedder

        tt = self.text_teacher
        teacher = next(t for t in self.teachers if t.name == tt.teacher)
        embedder = TextEmbedder.from_pretrained(tt.checkpoint, device=self.runtime.device)
        if embedder.config.space != "audio" or embedder.config.out_dim != teacher.store.dim:
            raise MtxError(f"--text-teacher run {tt.run!r} predicts {embedder.config.out_dim} dims in its "
                           f"{embedder.config.space} space, the {tt.teacher} store has {teacher.store.dim}",
                           hint=f"pass an align run trained on this {tt.teacher} store (same aggregation)")
        unique = list(dict.fromkeys(captions))
        raw = torch.from_numpy(embedder.encode(unique, batch_size=128, space="audio")).to(self.runtime.device)
        del embedder
        with torch.no_grad():
            tt.targets = self.model.standardise_teacher(tt.teacher, raw).float()
        tt.row = {c: i for i, c in enumerate(unique)}
        log.info("text teacher %s (%s space): %d caption vectors, weight %g", tt.run, tt.teacher, len(unique),
                 tt.weight)

    def _split(self, records: list[Record], split: str) -> list[Record]:
        wanted = [r for r in records if r.split == split]
        kept = [r for r in wanted if all(t.store.has(r.id) for t in self.teachers)]
        if len(kept) < len(wanted):
            log.info("%s split: %d of %d records lack a teacher embedding and are skipped", split,
                     len(wanted) - len(kept), len(wanted))
        return kept

    def build_data(self) -> int:
        cfg = self.cfg
        self.records = read_manifest(self.manifest_path)
        self.train_records = self._split(self.records, "train")
        self.val_records = self._split(self.records, "val")
        if len(self.train_records) < 2:
            raise MtxError(f"only {len(self.train_records)} training records with every teacher's embedding",
                           hint="check the manifest splits and that `mtx embed` covered them")
        for t in self.teachers:
            t.train_pos = t.store.positions([r.id for r in self.train_records])
            t.val_pos = t.store.positions([r.id for r in self.val_records])
        self.sampler = EpochSampler(len(self.train_records), cfg.batch_size, cfg.seed)
        if len(self.sampler) == 0:
            raise MtxError(f"{len(self.train_records)} training records make no batch", hint="lower --batch-size")
        return len(self.sampler)

    def prepare(self, resumed: bool) -> None:
        """The mel cache, before the seed is set: building it must not move the training RNG streams."""
        self.cache = self._mel_cache(self.records) if self.cfg.mel_cache else None

    def build_model(self, resume_state: dict[str, Any] | None, total_steps: int) -> None:
        cfg = self.cfg
        if resume_state is not None:
            self.model = StudentModel.from_pretrained(self.run_dir / "latest", device=self.runtime.device)
        else:
            tok = train_tokenizer([c for r in self.train_records for c in r.captions], cfg.vocab_size,
                                  cfg.max_length)
            scfg = cfg.student_config(tok.get_vocab_size(), {t.name: t.store.dim for t in self.teachers})
            self.model = StudentModel(scfg, tok).to(self.runtime.device)
            for t in self.teachers:
                self.model.set_teacher_stats(t.name, *t.store.mean_std(t.train_pos))
            log.info("student: %s; tokenizer: %d WordPiece pieces trained on the train captions",
                     f"{cfg.blocks} blocks {scfg.channels}{' residual' if cfg.residual else ''}, "
                     f"text {cfg.text_encoder}", tok.get_vocab_size())
        if self.text_teacher is not None:
            self._text_targets([c for r in self.train_records for c in r.captions]
                               + [r.caption for r in self.val_records])
        self.model.train()
        self.scfg = self.model.student_config
        if self.cache is not None:
            self.train_ds = CachedCrops(self.train_records, self.scfg, cfg.seed, True, self.cache)
            self.val_ds = CachedCrops(self.val_records, self.scfg, cfg.seed, False, self.cache)
        else:
            self.train_ds = AudioCrops(self.train_records, self.scfg, cfg.seed, random=True)
            self.val_ds = AudioCrops(self.val_records, self.scfg, cfg.seed, random=False)
        self.nce = InfoNCELoss(LossConfig(temperature=cfg.temperature)).to(self.runtime.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(total_steps, int(cfg.warmup_ratio * total_steps)))

    def _mel_cache(self, records: list[Record]) -> MelCache:
        """The manifest's mel cache (built, resumed or reused); a track it could not decode stops training."""
        front = self.cfg.student_config(self.cfg.vocab_size, {})   # the front end: the run's own, whatever its vocabulary
        res = ensure_mel_cache(self.state, self.manifest_name, self.manifest_hash, records, front,
                               self.cfg.resume, self.progress, num_workers=self.cfg.num_workers)
        self.mel_cache_path = res.path
        cache = MelCache(res.path)
        why = dict(cache.failures)
        bad = next((r for r in (*self.train_records, *self.val_records) if not cache.has(r.id)), None)
        if bad is not None:
            cache.close()
            raise MtxError(f"cannot read training audio: {why.get(bad.id, f'{bad.id} is not in the mel cache')}",
                           hint="run `mtx verify` on the source, fix or drop the file, then `mtx unify --force`")
        return cache

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])

    def save_models(self, path: Path) -> None:
        self.model.save_pretrained(path)

    def run_meta(self, status: str, ts: TrainState) -> RunMeta:
        return RunMeta(
            run=self.run_name, objective="student", audio_encoder="student", manifest=self.manifest_name,
            manifest_path=str(self.manifest_path), manifest_hash=self.manifest_hash, embeddings=None,
            teachers={t.name: {"weight": t.weight, "dim": t.store.dim, "store": str(t.store.path)}
                      for t in self.teachers},
            loss=f"student ({self.cfg.distill_loss} distillation + InfoNCE)",
            config=to_jsonable(asdict(self.cfg)), created=ts.created, status=status,
            mel_cache=str(self.mel_cache_path) if self.mel_cache_path else None,
            text_teacher={k: v for k, v in self.text_teacher.info.items() if k != "weights"}
            if self.text_teacher is not None else None,
            best=ts.best,
            # What the run learned from (search and eval warn when it meets other sources).
            training_data=training_data(self.manifest_name, self.manifest_hash, self.train_records))

    def result_fields(self) -> dict[str, Any]:
        return {"manifest": self.manifest_name, "embeddings": ", ".join(str(t.store.path) for t in self.teachers),
                "loss": "student", "objective": "student"}

    # ------------------------------------------------------------------ steps
    def _loader(self, ds: AudioCrops, batches: list[np.ndarray], epoch: int):
        ds.epoch = epoch
        # Its own generator: creating a loader must not draw from the global RNG (dropout's stream).
        gen = torch.Generator().manual_seed(_key("loader", self.cfg.seed, epoch) % (2 ** 63))
        return torch.utils.data.DataLoader(ds, batch_sampler=[b.tolist() for b in batches],
                                           num_workers=self.cfg.num_workers, collate_fn=_collate,
                                           worker_init_fn=_worker_init, generator=gen)

    def _captions(self, records: list[Record], idx: np.ndarray, epoch: int | None) -> list[str]:
        out = []
        for i in idx.tolist():
            caps = records[i].captions if (self.cfg.use_alt_captions and epoch is not None) else [records[i].caption]
            out.append(caps[_key("caption", self.cfg.seed, epoch, i) % len(caps)] if len(caps) > 1 else caps[0])
        return out

    def _losses(self, mel: torch.Tensor, texts: list[str], idx: np.ndarray, val: bool
                ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
        dev = self.runtime.device
        records = self.val_records if val else self.train_records
        # Same caption or same recording: never each other's negatives (the shared InfoNCE rule).
        keys = torch.from_numpy(pair_keys([records[int(i)] for i in idx], texts)).to(dev)
        with self.runtime.autocast():
            music = self.model.music(mel.to(dev)).float()
            text = self.model.embed_text(texts).float()
        loss, parts = torch.zeros((), device=dev), {}
        if self.cfg.contrastive_weight > 0 and len(idx) > 1:
            nce, _ = self.nce(text, music, keys=keys)
            loss = loss + self.cfg.contrastive_weight * nce
            parts["infonce"] = float(nce.detach())
        for t in self.teachers:
            pos = (t.val_pos if val else t.train_pos)[idx]
            target = self.model.standardise_teacher(t.name, torch.from_numpy(t.store.rows(pos)).to(dev))
            pred = self.model.heads[t.name](music)
            if self.cfg.distill_loss == "mse":
                d = F.mse_loss(pred, target)
            else:
                d = 1.0 - F.cosine_similarity(pred, target, dim=-1).mean()
            loss = loss + t.weight * d
            parts[f"distill_{t.name}"] = float(d.detach())
            parts[f"cosine_{t.name}"] = float(F.cosine_similarity(pred, target, dim=-1).mean().detach())
        tt = self.text_teacher
        if tt is not None:
            target = tt.targets[torch.tensor([tt.row[c] for c in texts], device=dev)]
            cos = F.cosine_similarity(self.model.heads[tt.teacher](text), target, dim=-1).mean()
            loss = loss + tt.weight * (1.0 - cos)
            parts[f"text_distill_{tt.teacher}"] = float(1.0 - cos.detach())
            parts[f"text_cosine_{tt.teacher}"] = float(cos.detach())
        return loss, parts, music, text

    def train_step(self, idx: np.ndarray, mel: torch.Tensor, step: int, epoch: int) -> tuple[float, dict[str, float]]:
        loss, parts, _, _ = self._losses(mel, self._captions(self.train_records, idx, epoch), idx, val=False)
        if not bool(torch.isfinite(loss)):
            raise MtxError(f"training diverged at step {step + 1} (loss {float(loss)})", hint="lower --lr")
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), parts

    def validate(self, batch_size: int) -> ValVectors | None:
        n = len(self.val_records)
        if n == 0:
            return None
        batches = [np.arange(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
        music, text, total, sums = [], [], 0.0, {}
        for idx, mel in _checked(self._loader(self.val_ds, batches, 0)):
            loss, parts, m, t = self._losses(mel, self._captions(self.val_records, idx, None), idx, val=True)
            total += float(loss) * len(idx)
            for k, v in parts.items():
                if k.startswith(("cosine_", "text_cosine_")):
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
            music.append(m.cpu().numpy())
            text.append(t.cpu().numpy())
        return ValVectors(self.val_records, np.concatenate(text), np.concatenate(music), total / n,
                          {f"val_{k}": v / n for k, v in sums.items()})

    def train_mode(self, on: bool) -> None:
        self.model.train(on)

    def batches(self, epoch: int, start: int) -> list[np.ndarray]:
        """This epoch's batches; the loader over the ones still to do starts here (workers prefetch in order)."""
        batches = self.sampler.batches(epoch)
        self._train_batches = _checked(self._loader(self.train_ds, batches[start:], epoch))
        return batches

    def step(self, indices: np.ndarray, step: int, epoch: int) -> dict[str, Any]:
        idx, mel = next(self._train_batches)
        if not np.array_equal(idx, indices):   # the loader deals fit()'s batches in fit()'s order
            raise RuntimeError(f"student loader out of step at {step}")
        loss, parts = self.train_step(idx, mel, step, epoch)
        return {"train_loss": loss, "lr": self.scheduler.get_last_lr()[0], **parts}

    def epoch_done(self) -> None:
        if self._train_batches is not None:
            self._train_batches.close()   # the epoch's loader workers stop before validation starts its own

    def describe_epoch(self, summary: dict[str, Any]) -> str:
        return f"train loss {summary['epoch_train_loss']:.4f}, val R@10 {summary['val_R@10']}"

    def close(self) -> None:
        if getattr(self, "cache", None) is not None:
            self.cache.close()
        for t in self.teachers:
            t.store.close()


def _off(name: str, value: Any) -> bool:
    """Options added after the first student runs, left out of the run config while off, so the stage
    records of earlier runs keep their config."""
    return (name == "mel_cache" and value is False) or (name == "text_teacher" and value is None)


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def student_train_config(cfg: TrainConfig) -> StudentTrainConfig:
    """``mtx train --objective student``'s :class:`TrainConfig` (resolved) as the student reads it: the one
    place the shared flags map onto the student's fields."""
    for name in _NOT_FOR_STUDENT:
        if getattr(cfg, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise MtxError(f"{flag} does not apply to --objective student",
                           hint="the student reads audio and its teachers' stores (--teachers); drop " + flag)
    return StudentTrainConfig(
        manifest=cfg.manifest, run=cfg.run, teachers=str(cfg.teachers), contrastive_weight=cfg.contrastive_weight,
        distill_loss=cfg.distill_loss, temperature=cfg.temperature, epochs=cfg.epochs,
        batch_size=int(cfg.batch_size), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay),
        warmup_ratio=float(cfg.warmup_ratio), grad_clip=cfg.grad_clip, patience=cfg.patience,
        blocks=cfg.student_blocks, base_channels=cfg.student_channels, residual=cfg.student_residual,
        dropout=cfg.dropout, crop_s=cfg.crop, text_encoder=cfg.text_tower, vocab_size=cfg.vocab_size,
        max_length=cfg.max_length, use_alt_captions=cfg.use_alt_captions, seed=cfg.seed, device=cfg.device,
        precision=cfg.precision, num_workers=cfg.num_workers, mel_cache=cfg.mel_cache,
        text_teacher=cfg.text_teacher, checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
        report_to=cfg.report_to, resume=cfg.resume)


# TrainConfig fields of the towers family that a student run would silently ignore: refused when set.
_NOT_FOR_STUDENT = ("audio_encoder", "joint_dim", "recipe", "text_backbone", "text_pooling", "loss", "teacher",
                    "init_from")


@stage_function
def run_student_train(state: StateDir, cfg: StudentTrainConfig, progress: Progress | None = None,
                      on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train (or resume, or skip when complete) one student run through the one trainer."""
    progress = progress or NullProgress()
    parts = StudentParts(state, cfg)
    parts.progress = progress
    return run_trainer(Trainer(parts, TrainContext(state, cfg, progress), on_epoch))
