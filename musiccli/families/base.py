"""The model-family interface: what every family gives the stages.

A family is the code of one kind of model, end to end: how it trains (``train_parts``), how a saved
checkpoint loads (``load``), how it is exported (``export_format``, ``export_at_end``) and what its
evaluation adds (``eval_plan``, ``eval_vectors``, ``eval_system``, ``eval_extras``). The stages
(``evaluate``, ``export``, ``search``, ``embed``, ``train``) call these and never ask which family
they hold. Dependency direction: stages -> families -> contracts and building blocks; a family
never imports a stage, and never another family.

Everything here is torch-free, so a cold ``mtx search`` can pick a family and load its ONNX text tower
without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ..manifest import Record
from ..runs import RunInfo, RunMeta
from ..state import StateDir

BACKENDS = ("torch", "onnx")


class RetrievalModel(Protocol):
    """A loaded checkpoint (``backend="torch"``) or its ONNX export (``backend="onnx"``): text and stored
    audio rows mapped into one space where cosine is the score."""

    dim: int                                                   # the retrieval space's width

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit text vectors [len(texts), dim]."""

    def audio_for_retrieval(self, rows: np.ndarray) -> np.ndarray:
        """Stored audio rows (the run's store) -> unit vectors [N, dim]."""


@dataclass
class QueryParts:
    """What ``mtx search`` needs from a run: the text side, the audio side (None: ``model`` maps audio too;
    an ONNX model then tells the stored width it reads as ``audio_in_dim``), how it runs and why not faster."""

    model: Any
    audio: Any = None
    runtime: str = "torch"          # onnx | torch
    note: str | None = None         # why the ONNX export was not used


@dataclass
class ExportJob:
    """One ``mtx export`` of one checkpoint (the stage's config, resolved)."""

    info: RunInfo
    checkpoint: str
    ckpt_dir: Path
    out: Path
    opset: int
    allow_large: bool
    weights: dict[str, Any]
    diff: float | None = None                         # the ONNX check, once the onnx format is written
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalPlan:
    """What an evaluation of a run reads: the manifest, the config that identifies the report's inputs,
    the systems it scores, and the family's own state for the later hooks."""

    manifest: str
    manifest_path: Path
    stage_config: dict[str, Any]
    systems: list[str]
    store_path: Path | None = None     # the store the run's audio vectors come from (None: from audio)
    notes: dict[str, str] = field(default_factory=dict)
    own: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalVectors:
    """The evaluated tracks: ``raw`` (what a linear probe reads), ``audio`` (unit rows in the run's space),
    and the train split's raw rows for the probe (only when asked)."""

    records: list[Record]
    raw: np.ndarray
    audio: np.ndarray
    train_records: list[Record] = field(default_factory=list)
    train_raw: np.ndarray | None = None
    native_model: str | None = None
    failed: list[str] = field(default_factory=list)


Encode = Callable[[Sequence[str]], np.ndarray]


class Family(Protocol):
    name: ClassVar[str]
    objectives: ClassVar[tuple[str, ...]]     # the --objective names it trains
    defaults: ClassVar[dict[str, Any]]        # TrainConfig fields left None that it fills
    uses_recipes: ClassVar[bool]              # whether --recipe applies (it trains on an encoder's store)

    # -- loading
    def load(self, ckpt_dir: Path, backend: str = "torch", device: Any = "cpu") -> RetrievalModel:
        """A checkpoint folder (``torch``) or an ONNX export folder (``onnx``) as a retrieval model."""

    def query_parts(self, info: RunInfo, checkpoint: str, device: Any, onnx_dir: Path | None,
                    query_runtime: str) -> QueryParts:
        """The run's model for search: its ONNX export when it matches the checkpoint, else PyTorch."""

    def check_library(self, info: RunInfo, store_attrs: dict[str, Any], store_path: Path, manifest: str) -> None:
        """Refuse a library store the run cannot search (an MtxError with the command that fixes it)."""

    # -- training
    def train_parts(self, ctx: Any) -> Any:
        """``training.trainer.TrainParts`` for a ``training.trainer.TrainContext``."""

    def inherited(self, parent: RunMeta, cfg: Any) -> dict[str, Any]:
        """TrainConfig fields a run started with ``--init-from`` a run of this family (and no ``--objective``)
        takes from its parent's ``run.json``, beyond the objective."""

    # -- export
    def export_config(self, job: ExportJob) -> dict[str, Any]:
        """The family's part of the export stage's config."""

    def export_format(self, fmt: str, model: Any, job: ExportJob, tmp: Path) -> Path:
        """Write format ``fmt`` (``onnx`` first, then ``hf``) into the empty folder ``tmp``; sets
        ``job.diff`` / ``job.details`` when it checks ONNX parity. Returns the file to report."""

    def export_at_end(self, state: StateDir, run: str, ckpt_dir: Path, out: Path) -> tuple[Path, float]:
        """``mtx train --export``: the torch-free search files of a finished run's checkpoint."""

    # -- evaluation
    def eval_plan(self, state: StateDir, info: RunInfo, ckpt_dir: Path, manifest: str | None,
                  baselines: bool) -> EvalPlan: ...

    def eval_vectors(self, plan: EvalPlan, model: Any, records: list[Record], records_all: list[Record],
                     with_train: bool) -> EvalVectors: ...

    def eval_system(self, name: str, model: Any, vecs: EvalVectors, info: RunInfo, runtime: Any, encode: Encode,
                    seed: int) -> tuple[np.ndarray, Encode]:
        """A baseline other than ``model`` and ``random`` (the stage builds those): its audio rows and text
        encoder; raises MtxError when it cannot be built."""

    def eval_extras(self, state: StateDir, plan: EvalPlan, info: RunInfo, model: Any, vecs: EvalVectors,
                    texts: list[str], split: str) -> dict[str, Any]:
        """Report keys only this family has (teacher cosines, ...); notes go into ``plan.notes``."""


def onnx_query_model(family: Any, info: RunInfo, checkpoint: str, onnx_dir: Path | None, query_runtime: str,
                     mismatch: Callable[[Path, str], str | None]) -> tuple[Any, str | None]:
    """(the family's ONNX query model, None) when the export at ``onnx_dir`` matches the checkpoint and
    onnxruntime is installed, else (None, why PyTorch is used). ``--query-runtime onnx`` turns the
    reason into an error; a damaged export (truncated model.onnx, garbage tokenizer.json) is a reason."""
    if query_runtime not in ("auto", "onnx") or onnx_dir is None:
        return None, None
    from importlib.util import find_spec

    from ..runs import weights_identity
    from ..safe_read import DamagedFileError

    why = mismatch(onnx_dir, weights_identity(info.checkpoint_dir(checkpoint)))
    if why is None and not all(find_spec(m) is not None for m in ("onnxruntime", "tokenizers")):
        why = "onnxruntime or tokenizers is not installed"
    try:
        if why is None:
            return family.load(onnx_dir, "onnx"), None
    except DamagedFileError as e:
        why = f"{e.message} (export it again with --force)"
    if query_runtime == "onnx":
        from ..errors import MtxError

        raise MtxError(f"cannot encode queries with ONNX for run {info.name!r}: {why}",
                       hint=f"run `mtx export --run {info.name} --checkpoint {checkpoint} --format onnx`, "
                            "or drop --query-runtime onnx")
    return None, (f"{why} for run {info.name} ({checkpoint}): using PyTorch (slower start); "
                  f"`mtx export --run {info.name} --checkpoint {checkpoint} --format onnx` makes searches start fast")


def lift_card_lines(report: dict[str, Any] | None) -> list[str]:
    """A model card's "Lift over zero-shot" section from an eval report's ``lift`` (``mtx eval``), or none."""
    lifted = (report or {}).get("lift")
    if not lifted:
        return []
    base = lifted["baseline"]
    what = "the audio encoder's own zero-shot text tower" if base == "native" else "the untrained baseline"
    lines = ["", "## Lift over zero-shot", "",
             f"Against {what} on the same held-out tracks (split `{report.get('split')}` of "
             f"`{report.get('manifest')}`, {report.get('counts', {}).get('tracks')} tracks):", "",
             f"| metric | this model | {base} | lift |", "|---|---|---|---|"]
    names = {"tag_roc_auc": "tag ROC-AUC", "tag_ap": "mean per-tag AP", "tag_music_p@10": '"<tag> music" P@10'}
    for key, label in names.items():
        e = lifted["metrics"].get(key) or {}
        if e.get("lift") is not None:
            lines.append(f"| {label} | {e['model']:.4f} | {e['baseline']:.4f} | {e['lift']:+.4f} |")
    verdict = ("It beats the baseline (tag ROC-AUC and AP both higher)." if lifted["beats_baseline"] else
               "It does **not** beat the baseline: `mtx search` keeps using the native tower for this library."
               if base == "native" else "It does **not** beat the baseline.")
    return [*lines, "", verdict]

