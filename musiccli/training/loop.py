"""The training stage: ``run_train(state, TrainConfig, progress) -> TrainResult``.

One run lives in ``state.run_dir(run)`` (``run.json``, ``best/``, ``latest/``, ``metrics.jsonl``). The
unit of work is one optimizer step. ``--objective`` picks the model family (``musiccli.families``); the
family fills its defaults into the config and gives its training parts to the one trainer
(:mod:`.trainer`), which owns the stage contract, checkpoints (models, optimizer, scheduler, scaler,
the loss's learnable temperature, the :class:`TrainState` and every rank's RNG states) and the fit
loop, so ``--continue`` replays exactly the steps an uninterrupted run would have taken
(torchtune's resume test checks this) for every family.

At the end (``--export``, on by default) the family writes the torch-free files ``mtx search`` starts
from into ``exports/<run>/<checkpoint>/onnx``; a failure there never fails the training.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..errors import MtxError
from ..progress import NullProgress, Progress
from ..runs import RunMeta
from ..state import StateDir, check_name, stage_function
from .config import DEFAULT_OBJECTIVE, EpochCallback, TrainConfig, TrainResult, default_run_name
from .fit import run_trainer
from .trainer import TrainContext, Trainer

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_OBJECTIVE", "EpochCallback", "TrainConfig", "TrainResult", "default_run_name", "run_train"]


@stage_function
def run_train(state: StateDir, cfg: TrainConfig, progress: Progress | None = None,
              on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train (or resume, or skip when complete) one run of the family ``cfg.objective`` belongs to."""
    from ..families import family_of

    if cfg.library:
        from .library import apply_library

        cfg = apply_library(state, cfg)   # the library's manifest, encoder and defaults, if it can train
    cfg = resolve_objective(state, cfg)
    family = family_of(cfg.objective)
    ctx = TrainContext(state, cfg.resolved(family.defaults, family.uses_recipes), progress or NullProgress())
    trainer = Trainer(family.train_parts(ctx), ctx, on_epoch)
    result = run_trainer(trainer)
    if not result.skipped and ctx.cfg.export and trainer.collective.is_main:
        export_at_end(state, family, result)
    return result


def resolve_objective(state: StateDir, cfg: TrainConfig) -> TrainConfig:
    """``--objective`` left unset: the ``--init-from`` run's objective and what its family says a child
    inherits (a joint run's ``--joint-dim``), said in the log; else align."""
    from ..families import family_of

    if cfg.objective is not None:
        return cfg
    parent = cfg.init_from.partition(":")[0].strip() if cfg.init_from else ""
    meta = None
    if parent:
        try:
            meta = RunMeta.read(state.run_dir(check_name("run", parent)))
        except MtxError:
            meta = None   # a bad name: the family's --init-from check says so in its own words
    if meta is None:
        return dataclasses.replace(cfg, objective=DEFAULT_OBJECTIVE)
    values = {"objective": meta.objective, **family_of(meta.objective).inherited(meta, cfg)}
    if values != {"objective": DEFAULT_OBJECTIVE}:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
        log.info("--init-from %s: a %s run, so this run trains %s too (pass --objective to change it)",
                 parent, meta.objective, flags)
    return dataclasses.replace(cfg, **values)


def export_at_end(state: StateDir, family, result: TrainResult) -> None:
    """The torch-free search files of the best (else latest) checkpoint, so `mtx search` starts without torch.

    A failure here never fails the training: the run is complete and usable; the result says why
    there is no export, and search falls back to PyTorch.
    """
    from importlib.util import find_spec

    from ..runs import export_dir, find_checkpoint

    ckpt_dir = find_checkpoint(state, result.run)
    if ckpt_dir is None:
        result.onnx_note = "no checkpoint to export"
    elif not all(find_spec(m) is not None for m in ("onnx", "onnxruntime")):
        result.onnx_note = "onnx/onnxruntime are not installed (pip install 'musiccli[onnx]')"
    else:
        try:
            path, diff = family.export_at_end(state, result.run, ckpt_dir, export_dir(state, result.run,
                                                                                       ckpt_dir.name))
        except MtxError as e:
            result.onnx_note = e.message
        else:
            result.onnx = str(path)
            log.info("exported the ONNX towers of %s/%s to %s (max abs diff vs PyTorch %.2g)",
                     result.run, ckpt_dir.name, Path(path).parent, diff)
    if result.onnx_note:
        log.warning("no ONNX export for run %s: %s; search will use PyTorch", result.run, result.onnx_note)
