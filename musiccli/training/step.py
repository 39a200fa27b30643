"""One optimizer step: forward both towers, the loss, backward (plain or GradCache), clip, update.

The :class:`Stepper` owns what a step touches (models, loss, optimizer, scheduler, scaler)
and nothing about epochs, checkpoints or logging, so it can be driven and tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import MtxError
from ..runtime import Runtime
from .distributed import Collective
from .gradcache import cached_backward, split_chunks
from .losses import clamp_temperatures


class Stepper:
    def __init__(self, towers: Any, text_model: torch.nn.Module, loss_fn: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                 runtime: Runtime, collective: Collective, grad_clip: float | None = None,
                 accum_steps: int = 1, teacher: Any = None) -> None:
        self.towers = towers
        self.text_model = text_model      # towers.text, or its DDP wrapper
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.runtime = runtime
        self.collective = collective
        self.grad_clip = grad_clip
        self.accum_steps = accum_steps
        self.teacher = teacher

    # ------------------------------------------------------------------ pieces
    def encode_text(self, model: torch.nn.Module, texts: Sequence[str]) -> torch.Tensor:
        tok = self.towers.text.tokenize(texts)
        dev = self.runtime.device
        with self.runtime.autocast():
            pred = model(tok["input_ids"].to(dev), tok["attention_mask"].to(dev))
        return pred.float()

    def teacher_targets(self, texts: Sequence[str]) -> torch.Tensor | None:
        """Teacher predictions mapped into this student's standardised space."""
        if self.teacher is None:
            return None
        with torch.no_grad(), self.runtime.autocast():
            tok = {k: v.to(self.runtime.device) for k, v in self.teacher.tokenize(texts).items()}
            z = self.teacher(tok["input_ids"], tok["attention_mask"]).float()
        raw = z * self.teacher.audio_std + self.teacher.audio_mean
        return self.towers.text.standardize_audio(raw)

    def loss(self, text_z: torch.Tensor, audio_std: torch.Tensor, texts: Sequence[str],
             keys: torch.Tensor | None = None):
        """The loss of text predictions against the audio tower's view of the (standardised) audio.

        ``keys`` [B, 2] (caption, recording) let InfoNCE mask in-batch pairs that are not negatives.
        """
        audio_z = self.towers.audio(audio_std).float()
        return self.loss_fn(text_z, audio_z, teacher_z=self.teacher_targets(texts), keys=keys)

    def _check_finite(self, loss: torch.Tensor, step_no: int) -> None:
        # all ranks stop together, none waits in backward
        if self.collective.any(not bool(torch.isfinite(loss))):
            raise MtxError(f"training diverged at step {step_no} (loss {float(loss)})",
                           hint="lower --lr, or use --precision fp32")

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    # ------------------------------------------------------------------ the step
    def step(self, texts: list[str], audio: np.ndarray, step_no: int,
             keys: torch.Tensor | None = None) -> dict[str, Any]:
        """One optimizer step on a (global-per-rank) batch; returns loss, its parts and the grad norm."""
        target = torch.from_numpy(audio).to(self.runtime.device)
        if self.accum_steps > 1:
            loss, parts = self._cached_backward(texts, target, step_no, keys)
        else:
            text_z = self.encode_text(self.text_model, texts)
            loss, parts = self.loss(text_z, target, texts, keys)
            self._check_finite(loss, step_no)
            self.scaler.scale(loss).backward()
        # The audio tower and the loss's temperature live outside DDP: average their gradients by hand.
        self.collective.average_grads([*self.towers.audio.parameters(), *self.loss_fn.parameters()])
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params(), self.grad_clip or float("inf"))
        self.scaler.step(self.optimizer)
        clamp_temperatures(self.loss_fn)   # after the step (open_clip): a clamp in forward kills the gradient
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"train_loss": float(loss.detach()), **parts, "grad_norm": float(grad_norm)}

    def _cached_backward(self, texts: list[str], target: torch.Tensor, step_no: int, keys: torch.Tensor | None):
        chunks = split_chunks(texts, self.accum_steps)
        no_sync = getattr(self.text_model, "no_sync", None)
        return cached_backward(
            lambda chunk: self.encode_text(self.text_model, chunk), chunks,
            lambda reps: self.loss(reps, target, texts, keys),
            lambda loss: self.scaler.scale(loss).backward(), self.runtime.device,
            no_sync=no_sync, before_backward=lambda loss: self._check_finite(loss, step_no))
