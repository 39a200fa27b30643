"""The loop's own state, as one serialisable value.

Everything the fit loop changes between steps lives in :class:`TrainState`: the data
position (epoch, next batch), the step count, the best epoch so far, patience, and the
loss history. It round-trips through plain JSON-able types, so a checkpoint can store it
beside the optimizer state and ``meta.json`` can show it to people.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _no_best() -> dict[str, Any]:
    return {"epoch": None, "val_R@10": None}


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0                       # epochs completed (validated and checkpointed)
    batch: int = 0                       # next batch of the current epoch
    best: dict[str, Any] = field(default_factory=_no_best)
    bad_epochs: int = 0
    epoch_loss: list[float] = field(default_factory=lambda: [0.0, 0])   # sum, count this epoch
    losses: list[float] = field(default_factory=list)
    epoch_summaries: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in known})
        out.epoch_loss = list(out.epoch_loss)
        out.losses = list(out.losses)
        out.epoch_summaries = list(out.epoch_summaries)
        return out

    def meta(self, run: str, total_steps: int, config: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint's readable ``meta.json`` shows about the loop."""
        return {"run": run, "step": self.step, "epoch": self.epoch, "batch": self.batch, "total_steps": total_steps,
                "config": config, "best": self.best, "losses": self.losses, "epochs": self.epoch_summaries}

    def record_step(self, loss: float) -> None:
        self.step += 1
        self.batch += 1
        self.losses.append(loss)
        self.epoch_loss = [self.epoch_loss[0] + loss, self.epoch_loss[1] + 1]

    def epoch_train_loss(self) -> float:
        return self.epoch_loss[0] / max(1, self.epoch_loss[1])

    def record_val(self, r10: float | None) -> bool:
        """Note an epoch's validation R@10; True when it is the best so far (or there is no val split)."""
        improved = r10 is None or self.best["val_R@10"] is None or r10 > self.best["val_R@10"]
        if improved:
            self.best = {"epoch": self.epoch + 1, "val_R@10": r10}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return improved

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.epoch_loss = [0.0, 0]

    def out_of_patience(self, patience: int | None) -> bool:
        # bad_epochs only moves at an epoch end, so a restored state at the limit means that
        # epoch end stopped the run before it was marked complete: it must not train on.
        return patience is not None and self.bad_epochs >= patience
