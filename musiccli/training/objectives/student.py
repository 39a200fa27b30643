"""``student``: a small mel-CNN music tower and a small text tower, trained together from audio and
distilled from teacher stores (the AudioMuse-AI student design).

It trains no tower on a store's vectors, so the shared trainer's ``build``/``check`` do not apply:
``run_train`` hands the run to :func:`musiccli.training.student.run_student_train` with the
student's part of the :class:`~musiccli.training.loop.TrainConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...encoders.towers import Towers
from ...errors import MtxError
from .base import Objective, TowerSpec

if TYPE_CHECKING:
    from ..loop import TrainConfig

# TrainConfig fields of the shared trainer that a student run would silently ignore: refused when set.
_NOT_FOR_STUDENT = ("audio_encoder", "joint_dim", "recipe", "text_backbone", "text_pooling", "loss", "teacher",
                    "init_from")


class StudentObjective(Objective):
    name = "student"
    default_loss = "student"
    refused_losses: dict[str, str] = {}
    defaults: dict[str, Any] = {"lr": 1e-3, "batch_size": 32, "weight_decay": 1e-4, "warmup_ratio": 0.05,
                                "teachers": "musicnn:0.3,dsp:0.4"}

    def build(self, spec: TowerSpec) -> Towers:
        raise MtxError("the student objective trains its own towers from audio; it has no store towers to build",
                       hint="train it with `mtx train --objective student`")

    def check(self, towers: Towers, spec: TowerSpec, source: str) -> None:
        raise MtxError(f"{source} cannot initialise a student run", hint="drop --init-from")

    def run_train(self, state, cfg: "TrainConfig", progress, on_epoch=None):
        from ..student import StudentTrainConfig, run_student_train

        for name in _NOT_FOR_STUDENT:
            if getattr(cfg, name) is not None:
                flag = "--" + name.replace("_", "-")
                raise MtxError(f"{flag} does not apply to --objective student",
                               hint="the student reads audio and its teachers' stores (--teachers); drop " + flag)
        scfg = StudentTrainConfig(
            manifest=cfg.manifest, run=cfg.run, teachers=str(cfg.teachers), contrastive_weight=cfg.contrastive_weight,
            distill_loss=cfg.distill_loss, temperature=cfg.temperature, epochs=cfg.epochs,
            batch_size=int(cfg.batch_size), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay),
            warmup_ratio=float(cfg.warmup_ratio), grad_clip=cfg.grad_clip, patience=cfg.patience,
            blocks=cfg.student_blocks, base_channels=cfg.student_channels, residual=cfg.student_residual,
            dropout=cfg.dropout, crop_s=cfg.crop, text_encoder=cfg.text_tower, vocab_size=cfg.vocab_size,
            max_length=cfg.max_length, use_alt_captions=cfg.use_alt_captions, seed=cfg.seed, device=cfg.device,
            precision=cfg.precision, num_workers=cfg.num_workers, mel_cache=cfg.mel_cache,
            text_teacher=cfg.text_teacher, checkpoint_every=cfg.checkpoint_every,
            resume=cfg.resume)
        return run_student_train(state, scfg, progress, on_epoch=on_epoch)
