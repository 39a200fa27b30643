"""Experiment trackers for ``--report-to``: none, tensorboard, wandb (optional extras).

``metrics.jsonl`` stays the source of truth; a tracker is a second view of the same
events. Every event the loop logs (a step's loss components, learning rate, gradient norm
and temperature; an epoch's or a periodic evaluation's validation metrics) goes to
:meth:`Tracker.log` with its step. A tracker that is asked for but not installed is
refused before any work starts, with the install hint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..errors import unknown_choice

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


class Tracker(Protocol):
    location: str | None   # where the logs are (shown by `mtx train`)

    def log(self, step: int, values: dict[str, Any], prefix: str) -> None: ...

    def close(self) -> None: ...


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or k in ("step", "epoch"):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


class NoTracker:
    location = None

    def log(self, step: int, values: dict[str, Any], prefix: str) -> None:
        return None

    def close(self) -> None:
        return None


class TensorBoardTracker:
    def __init__(self, run_dir: Path, run: str, config: dict[str, Any], start_step: int) -> None:
        from ..extras import require_extra

        require_extra("tensorboard", "tensorboard", "--report-to tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        path = run_dir / TENSORBOARD_DIR
        # purge_step: a resumed run replays the steps after its checkpoint; TensorBoard drops the
        # events it logged for them before the interruption, like metrics.jsonl is truncated.
        self.writer = SummaryWriter(str(path), purge_step=start_step if start_step > 0 else None)
        if start_step == 0:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)
        self.location = str(path)

    def log(self, step: int, values: dict[str, Any], prefix: str) -> None:
        for k, v in _numbers(values).items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, run: str, config: dict[str, Any], start_step: int) -> None:
        from ..extras import require_extra

        wandb = require_extra("wandb", "wandb", "--report-to wandb")
        (run_dir / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        # One wandb run per mtx run: a resumed mtx run continues the same wandb run.
        self.run = wandb.init(project="mtx", name=run, id=f"mtx-{run}", resume="allow", config=config,
                              dir=str(run_dir / WANDB_DIR))
        self.location = str(getattr(self.run, "url", None) or run_dir / WANDB_DIR)

    def log(self, step: int, values: dict[str, Any], prefix: str) -> None:
        self.run.log({f"{prefix}/{k}": v for k, v in _numbers(values).items()}, step=step)

    def close(self) -> None:
        self.run.finish()


TrackerFactory = Callable[[Path, str, dict[str, Any], int], Tracker]
# name -> (factory, python module it needs, the extra that installs it)
TRACKERS: dict[str, tuple[TrackerFactory, str | None, str | None]] = {
    "none": (lambda run_dir, run, config, start: NoTracker(), None, None),
    "tensorboard": (TensorBoardTracker, "tensorboard", "tensorboard"),
    "wandb": (WandbTracker, "wandb", "wandb"),
}


def check_tracker(name: str) -> None:
    """Refuse an unknown or uninstalled tracker before any training starts."""
    if name not in TRACKERS:
        raise unknown_choice("tracker", name, TRACKERS)
    _, module, extra = TRACKERS[name]
    if module is not None:
        from ..extras import check_extra

        check_extra((module,), extra, f"--report-to {name}", alternative="use --report-to none")


def build_tracker(name: str, run_dir: Path, run: str, config: dict[str, Any], start_step: int) -> Tracker:
    check_tracker(name)
    tracker = TRACKERS[name][0](run_dir, run, config, start_step)
    if tracker.location:
        log.info("logging to %s: %s", name, tracker.location)
    return tracker
