"""Training objectives: name -> (description, core function). ``mtx train --objective NAME`` picks one.

Each objective has its own config dataclass and a core function ``run(state, cfg, progress, on_epoch)``
returning a :class:`~musiccli.training.loop.TrainResult`. Adding an objective = one module + one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from ..errors import unknown_choice


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    module: str          # imported on use: the CLI must not pull torch in for --help
    function: str

    def runner(self) -> Callable:
        return getattr(import_module(self.module), self.function)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("align", "regress a text tower into a frozen audio encoder's space", "musiccli.training.loop",
              "run_train"),
    Objective("student", "train a small music tower (mel CNN) and text tower, distilled from teacher stores",
              "musiccli.training.student", "run_student_train"),
)}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise unknown_choice("objective", name, OBJECTIVES)
    return OBJECTIVES[name]
