"""The towers family (``align``, ``joint``): a text tower (a pretrained backbone + heads) and an audio tower
over a frozen audio encoder's stored vectors.

Modules: :mod:`.model` (``AudioTower``, ``Towers``, ``load_towers``), :mod:`.objectives`, :mod:`.train`
(the training parts), :mod:`.onnx` (``model.onnx`` + ``audio_tower.onnx``, and ``OnnxTextModel``
for a torch-free search), :mod:`.export` (``hf/`` and its model card), :mod:`.audiomuse` (AudioMuse-AI's
CLAP text-model interface) and :mod:`.evaluate` (its baselines). This module stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import MtxError, unknown_choice
from ...runs import RunInfo, run_manifest_and_store, store_identity, weights_identity
from ...state import StateDir
from ..base import BACKENDS, EvalPlan, EvalVectors, ExportJob, QueryParts, onnx_query_model

SHARED_DEFAULTS: dict[str, Any] = {"lr": 5e-5, "weight_decay": 0.01, "warmup_ratio": 0.1}


class TowersFamily:
    name: ClassVar[str] = "towers"
    objectives: ClassVar[tuple[str, ...]] = ("align", "joint")
    defaults: ClassVar[dict[str, Any]] = SHARED_DEFAULTS
    uses_recipes: ClassVar[bool] = True

    # ------------------------------------------------------------------ loading
    def load(self, ckpt_dir: Path, backend: str = "torch", device: Any = "cpu") -> Any:
        if backend == "onnx":
            from .onnx import OnnxTextModel

            return OnnxTextModel(ckpt_dir)
        if backend != "torch":
            raise unknown_choice("backend", backend, BACKENDS)
        from .model import load_towers

        return load_towers(ckpt_dir, device=device)

    def query_parts(self, info: RunInfo, checkpoint: str, device: Any, onnx_dir: Path | None,
                    query_runtime: str) -> QueryParts:
        from .onnx import onnx_mismatch

        onnx_model, note = onnx_query_model(self, info, checkpoint, onnx_dir, query_runtime, onnx_mismatch)
        if onnx_model is not None:
            return QueryParts(onnx_model, runtime="onnx")
        from ...runtime import select_runtime

        towers = self.load(info.checkpoint_dir(checkpoint), "torch", select_runtime(str(device), "fp32").device)
        return QueryParts(towers.text, audio=towers.audio, note=note)

    def check_library(self, info: RunInfo, store_attrs: dict[str, Any], store_path: Path, manifest: str) -> None:
        """Any store of the run's audio encoder will do (``query_parts``' audio_dim checks the width)."""

    # ------------------------------------------------------------------ training
    def train_parts(self, ctx: Any) -> Any:
        from .train import TowersParts

        return TowersParts(ctx)

    def inherited(self, parent: Any, cfg: Any) -> dict[str, Any]:
        """A child of a joint run (``--init-from`` without ``--objective``) keeps its shared space's width."""
        if parent.objective == "joint" and cfg.joint_dim is None and parent.space_dim:
            return {"joint_dim": int(parent.space_dim)}
        return {}

    # ------------------------------------------------------------------ export
    def export_config(self, job: ExportJob) -> dict[str, Any]:
        return {}

    def export_format(self, fmt: str, model: Any, job: ExportJob) -> Path:
        from .export import export_hf, export_onnx, training_data_summary

        if fmt == "onnx":
            path, job.diff = export_onnx(model, job.out, job.opset, training_data_summary(job.info), job.weights)
            return path
        return export_hf(job.info, model, job.checkpoint, job.out, job.diff)

    def export_at_end(self, state: StateDir, run: str, ckpt_dir: Path, out: Path) -> tuple[Path, float]:
        from .onnx import export_checkpoint_onnx

        return export_checkpoint_onnx(ckpt_dir, out)

    # ------------------------------------------------------------------ evaluation
    def eval_plan(self, state: StateDir, info: RunInfo, ckpt_dir: Path, manifest: str | None,
                  baselines: bool) -> EvalPlan:
        from ...manifest import manifest_hash
        from .evaluate import eval_systems

        mname, mpath, emb_path = run_manifest_and_store(state, info, manifest)
        systems = eval_systems(info.audio_encoder, baselines, bool((info.meta.init_from or {}).get("native")))
        config = {"manifest": mname, "manifest_hash": manifest_hash(mpath), "embeddings": store_identity(emb_path),
                  "weights": weights_identity(ckpt_dir), "baselines": baselines, "systems": systems}
        return EvalPlan(mname, mpath, config, systems, store_path=emb_path)

    def eval_vectors(self, plan: EvalPlan, model: Any, records: list, records_all: list,
                     with_train: bool) -> EvalVectors:
        from ...manifest import split_counts
        from ...store import EmbeddingStore

        emb_path = plan.store_path
        with EmbeddingStore(emb_path) as store:
            if store.dim != model.audio_in_dim:
                raise MtxError(f"store {emb_path.name} has dim {store.dim} but the run's audio tower reads "
                               f"{model.audio_in_dim}", hint="evaluate with the manifest/encoder the run was trained on")
            kept = [r for r in records if store.has(r.id)]
            if not kept:
                split = next((r.split for r in records), None) or "chosen"
                raise MtxError(f"no {split} records of {plan.manifest} have embeddings "
                               f"(split sizes: {split_counts(records_all)})",
                               hint="pick another --split, or run `mtx unify`/`mtx embed` so the split is populated")
            raw = store.get([r.id for r in kept])
            # The probe is fitted on the train split's frozen audio vectors.
            train = [r for r in records_all if r.split == "train" and store.has(r.id)] if with_train else []
            train_raw = store.get([r.id for r in train]) if train else np.zeros((0, store.dim))
            # The native tower must be the text half of the checkpoint that embedded these tracks.
            native_model = store.attrs.get("model_id") or None
        audio = model.audio_for_retrieval(raw)
        return EvalVectors(kept, raw, audio, train, train_raw, native_model)

    def eval_system(self, name: str, model: Any, vecs: EvalVectors, info: RunInfo, runtime: Any, encode: Any,
                    seed: int) -> tuple[np.ndarray, Any]:
        from .evaluate import eval_system

        return eval_system(name, model, vecs, info, runtime, encode, seed)

    def eval_extras(self, state: StateDir, plan: EvalPlan, info: RunInfo, model: Any, vecs: EvalVectors,
                    texts: list[str], split: str) -> dict[str, Any]:
        return {"native_model": vecs.native_model} if "native" in plan.systems else {}
