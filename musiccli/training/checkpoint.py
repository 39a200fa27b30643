"""Run-folder I/O: atomic checkpoint directories and the metrics log (``run.json`` is ``runs.RunMeta``'s).

A checkpoint directory (``latest/`` or ``best/``) is the ``TextEmbedder.save_pretrained``
layout; ``latest/`` adds ``trainer_state.pt`` (everything needed to resume exactly)
and a readable ``meta.json`` (as nanochat keeps next to its checkpoints).

Directories cannot be ``os.replace``d over a non-empty target, so a checkpoint is
written into ``.tmp-<name>-*``, the old directory is renamed to ``.tmp-old-<name>``,
the new one renamed into place, and the old one removed. A crash between the two
renames leaves only ``.tmp-old-<name>``; :func:`recover` puts it back.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MtxError
from ..state import TMP_PREFIX, atomic_write_json, atomic_write_text, to_jsonable

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
META = "meta.json"
METRICS = "metrics.jsonl"


def _old_name(name: str) -> str:
    return f"{TMP_PREFIX}old-{name}"


def recover(run_dir: Path) -> None:
    """Undo a swap that a crash interrupted, and drop half-written temporary checkpoints."""
    if not run_dir.exists():
        return
    for name in ("latest", "best"):
        old = run_dir / _old_name(name)
        if old.exists():
            if (run_dir / name).exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, run_dir / name)
    for tmp in run_dir.glob(f"{TMP_PREFIX}*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def write_checkpoint_dir(run_dir: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Create ``run_dir/name`` atomically: ``fill(tmp_dir)`` writes the content."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=run_dir))
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final, old = run_dir / name, run_dir / _old_name(name)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def save_trainer_state(path: Path, state: dict[str, Any]) -> None:
    """Write trainer state that ``torch.load(weights_only=True)`` can read: tensors, numbers, strings,
    lists and dicts only (RNG states are converted by ``rng_to_plain``)."""
    out = dict(state)
    if out.get("rng") is not None:
        out["rng"] = rng_to_plain(out["rng"])
    if out.get("rng_by_rank") is not None:
        out["rng_by_rank"] = [rng_to_plain(r) for r in out["rng_by_rank"]]
    torch.save(out, path)


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any] | None:
    path = ckpt_dir / TRAINER_STATE
    if not path.exists():
        return None
    # weights_only: loading a checkpoint never runs pickled code, even from a run folder someone sent you.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise MtxError(f"{path} holds objects other than tensors and plain values ({e})",
                       hint="it was written by an older mtx or is not ours: start over with --force") from None
    if state.get("rng") is not None:
        state["rng"] = rng_from_plain(state["rng"])
    if state.get("rng_by_rank") is not None:
        state["rng_by_rank"] = [rng_from_plain(r) for r in state["rng_by_rank"]]
    return state


def rng_to_plain(rng: dict[str, Any]) -> dict[str, Any]:
    """``runtime.capture_rng_state()`` output as tensors and lists (no tuples of numpy arrays)."""
    version, mt, gauss = rng["python"]
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    out: dict[str, Any] = {
        "python": {"version": int(version), "state": [int(x) for x in mt], "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": rng["torch"],
    }
    if "cuda" in rng:
        out["cuda"] = list(rng["cuda"])
    return out


def rng_from_plain(plain: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``rng_to_plain``: what ``runtime.restore_rng_state`` takes."""
    p, n = plain["python"], plain["numpy"]
    out: dict[str, Any] = {
        "python": (p["version"], tuple(p["state"]), p["gauss"]),
        "numpy": (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]),
        "torch": plain["torch"],
    }
    if "cuda" in plain:
        out["cuda"] = list(plain["cuda"])
    return out


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    atomic_write_json(path, meta)


class MetricsLog:
    """Append-only JSONL of training events, flushed per line."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def append(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(to_jsonable(event)) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        return list(_iter_jsonl(self.path))

    def truncate_to(self, step: int, epochs_done: int) -> None:
        """Keep only events a checkpoint at (step, epochs_done) already covers.

        Steps logged after the last checkpoint are replayed on resume; dropping them
        keeps the log equal to an uninterrupted run's.
        """
        if not self.enabled or not self.path.exists():
            return
        kept = [e for e in self.read()
                if (is_epoch_event(e) and e["epoch"] <= epochs_done)
                or (not is_epoch_event(e) and e.get("step", 0) <= step)]
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))


def is_epoch_event(event: dict[str, Any]) -> bool:
    return "val_loss" in event


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: everything after it is suspect
                return
