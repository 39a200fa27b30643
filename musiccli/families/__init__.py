"""Model families: every kind of model ``mtx`` trains, behind one interface (:mod:`.base`).

- ``towers`` (:mod:`.towers`): a text tower (a pretrained backbone + heads) trained on the vectors of a
  frozen audio encoder's store, with the ``align`` and ``joint`` objectives;
- ``student`` (:mod:`.student`): a small mel-CNN music tower and a small text tower trained from audio,
  distilled from teacher stores.

A stage finds a run's family with :func:`family_for` (or an objective's with :func:`family_of`) and never
branches on the name. Adding a family = one package + one line in ``FAMILIES`` and its objectives in
``OBJECTIVES``. Importing this package stays torch-free (a cold ``mtx search``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import unknown_choice
from ..runs import RunInfo
from .base import Family
from .student import StudentFamily
from .towers import TowersFamily

FAMILIES: dict[str, Callable[[], Family]] = {"towers": TowersFamily, "student": StudentFamily}
# --objective NAME -> the family that trains it (the CLI's choices come from here)
OBJECTIVES: dict[str, str] = {obj: name for name, fam in FAMILIES.items() for obj in fam.objectives}
DEFAULT_OBJECTIVE = "align"


def family_of(objective: str) -> Family:
    if objective not in OBJECTIVES:
        raise unknown_choice("objective", objective, OBJECTIVES)
    return FAMILIES[OBJECTIVES[objective]]()


def family_for(info: RunInfo) -> Family:
    """The family that trained ``info`` (runs from before objectives existed are align runs)."""
    return family_of(info.objective)


__all__ = ["DEFAULT_OBJECTIVE", "FAMILIES", "OBJECTIVES", "Family", "family_for", "family_of"]
