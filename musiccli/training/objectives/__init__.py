"""Objective registry. Adding an objective = one module + one line in ``OBJECTIVES``."""

from __future__ import annotations

from collections.abc import Callable

from ...errors import unknown_choice
from .align import AlignObjective
from .base import Objective, TowerSpec, check_loss
from .joint import DEFAULT_JOINT_DIM, JointObjective
from .student import StudentObjective

OBJECTIVES: dict[str, Callable[[], Objective]] = {
    "align": AlignObjective,
    "joint": JointObjective,
    "student": StudentObjective,
}
DEFAULT_OBJECTIVE = "align"


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise unknown_choice("objective", name, OBJECTIVES)
    return OBJECTIVES[name]()


__all__ = ["DEFAULT_JOINT_DIM", "DEFAULT_OBJECTIVE", "OBJECTIVES", "Objective", "TowerSpec", "check_loss", "get_objective"]
