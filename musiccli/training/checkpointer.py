"""Where a run's checkpoints go and how they are committed.

``latest/`` holds the models plus ``trainer_state.pt`` (optimizer, scheduler, scaler,
loss, every rank's RNG state and the :class:`TrainState`) and a readable ``meta.json``;
``best/`` holds only the models. Both are written through
:func:`checkpoint.write_checkpoint_dir`, so a crash never leaves half a checkpoint.
Only rank 0 writes; every rank takes part in gathering the RNG states.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runtime import capture_rng_state
from . import checkpoint as ckpt
from .distributed import Collective

SaveModels = Callable[[Path], None]


class Checkpointer:
    def __init__(self, run_dir: Path, collective: Collective) -> None:
        self.run_dir = run_dir
        self.collective = collective

    @property
    def latest_dir(self) -> Path:
        return self.run_dir / "latest"

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best"

    def recover(self) -> None:
        if self.collective.is_main:
            ckpt.recover(self.run_dir)

    def load_latest(self) -> dict[str, Any] | None:
        return ckpt.load_trainer_state(self.latest_dir)

    def save_latest(self, save_models: SaveModels, trainer_state: dict[str, Any], meta: dict[str, Any]) -> bool:
        """Commit one step (a collective). ``trainer_state`` gets the RNG states added; True on rank 0."""
        rng_by_rank = self.collective.gather_rng()
        wrote = False
        if self.collective.is_main:
            state = {**trainer_state, "rng": capture_rng_state(), "rng_by_rank": rng_by_rank}

            def fill(tmp: Path) -> None:
                save_models(tmp)
                ckpt.save_trainer_state(tmp / ckpt.TRAINER_STATE, state)
                ckpt.write_meta(tmp / ckpt.META, meta)

            ckpt.write_checkpoint_dir(self.run_dir, "latest", fill)
            wrote = True
        self.collective.barrier()
        return wrote

    def save_best(self, save_models: SaveModels) -> None:
        if self.collective.is_main:
            ckpt.write_checkpoint_dir(self.run_dir, "best", save_models)

    @staticmethod
    def rng_for(state: dict[str, Any], collective: Collective) -> dict[str, Any]:
        """The RNG state this rank saved (each rank continues its own stream)."""
        return state["rng_by_rank"][collective.rank] if collective.enabled else state["rng"]
