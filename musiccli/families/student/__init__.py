"""The student family (the AudioMuse-AI student design): a small mel-CNN music tower and a small text tower,
trained together from audio and distilled from teacher stores.

Modules: :mod:`.model` (``StudentConfig``, the towers, the tokenizer, ``StudentModel``), :mod:`.frontend`
(the mel front end and its NumPy twin), :mod:`.train` (the training parts, teachers, the text teacher),
:mod:`.melcache`, :mod:`.encoder` (the ``student`` audio encoder of ``mtx embed``), :mod:`.onnx` (the
exported folder, and ``OnnxStudentText`` for a torch-free search) and :mod:`.evaluate` (what a student
report adds). This module stays torch-free.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import MtxError, unknown_choice
from ...runs import RunInfo, latest_eval_report, store_identity, weights_identity
from ...state import StateDir, atomic_write_json
from ..base import BACKENDS, EvalPlan, EvalVectors, ExportJob, QueryParts, onnx_query_model

STUDENT_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "batch_size": 32, "weight_decay": 1e-4, "warmup_ratio": 0.05,
                                    "teachers": "musicnn:0.3,dsp:0.4"}


class StudentFamily:
    name: ClassVar[str] = "student"
    objectives: ClassVar[tuple[str, ...]] = ("student",)
    defaults: ClassVar[dict[str, Any]] = STUDENT_DEFAULTS
    uses_recipes: ClassVar[bool] = False

    # ------------------------------------------------------------------ loading
    def load(self, ckpt_dir: Path, backend: str = "torch", device: Any = "cpu") -> Any:
        if backend == "onnx":
            from .onnx import OnnxStudentText

            return OnnxStudentText(ckpt_dir)
        if backend != "torch":
            raise unknown_choice("backend", backend, BACKENDS)
        from .model import StudentModel

        return StudentModel.from_pretrained(ckpt_dir, device=device)

    def query_parts(self, info: RunInfo, checkpoint: str, device: Any, onnx_dir: Path | None,
                    query_runtime: str) -> QueryParts:
        # Queries land in the same shared space as `mtx embed --audio-encoder student`, whose stored rows are
        # already unit vectors (audio_for_retrieval only normalises them).
        from .onnx import onnx_mismatch

        onnx_model, note = onnx_query_model(self, info, checkpoint, onnx_dir, query_runtime, onnx_mismatch)
        if onnx_model is not None:
            return QueryParts(onnx_model, runtime="onnx")
        from ...runtime import select_runtime

        device = select_runtime(str(device), "fp32").device
        return QueryParts(self.load(info.checkpoint_dir(checkpoint), "torch", device), note=note)

    def check_library(self, info: RunInfo, store_attrs: dict[str, Any], store_path: Path, manifest: str) -> None:
        """A student searches only a store its own music tower embedded."""
        if store_attrs.get("model_id") != info.name:
            raise MtxError(f"{store_path} was embedded with student {store_attrs.get('model_id')!r}, "
                           f"not with run {info.name!r}",
                           hint=f"run `mtx embed --audio-encoder student --model {info.name} --manifest {manifest} "
                                f"--force` first")

    # ------------------------------------------------------------------ training
    def train_parts(self, ctx: Any) -> Any:
        from .train import StudentParts, student_train_config

        parts = StudentParts(ctx.state, student_train_config(ctx.cfg))
        parts.progress = ctx.progress
        return parts

    def inherited(self, parent: Any, cfg: Any) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ export
    def export_config(self, job: ExportJob) -> dict[str, Any]:
        return {"allow_large": job.allow_large}

    def export_format(self, fmt: str, model: Any, job: ExportJob) -> Path:
        """``onnx/`` (both towers, tokenizer, preprocessing.json, verified) or ``hf/`` (the checkpoint)."""
        from ...onnxio import replace_dir, tmp_dir
        from . import onnx as so

        info = job.info
        tmp = tmp_dir(job.out, fmt)
        try:
            if fmt == "onnx":
                job.details = so.build_onnx_dir(model, tmp, job.opset, job.allow_large)
                job.diff = max(job.details["parity"].values())
                atomic_write_json(tmp / "meta.json", {**job.details, "opset": job.opset, "run": info.name,
                                                      "checkpoint": job.checkpoint, "dim": model.dim,
                                                      "weights": job.weights})
            else:
                model.save_pretrained(tmp)
            if job.details:
                report = latest_eval_report(info.dir, job.checkpoint)
                so.write_card(tmp, so.model_card(info.name, job.checkpoint, model, info.meta, job.details, report))
            replace_dir(tmp, job.out / fmt)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return job.out / fmt

    def export_at_end(self, state: StateDir, run: str, ckpt_dir: Path, out: Path) -> tuple[Path, float]:
        from ...runs import resolve_run
        from . import onnx as so

        info = resolve_run(state, run, announce=False)
        job = ExportJob(info, ckpt_dir.name, ckpt_dir, out, 17, False, weights_identity(ckpt_dir))
        path = self.export_format("onnx", self.load(ckpt_dir), job)
        return path / so.TEXT_ONNX, float(job.diff or 0.0)

    # ------------------------------------------------------------------ evaluation
    def eval_plan(self, state: StateDir, info: RunInfo, ckpt_dir: Path, manifest: str | None,
                  baselines: bool) -> EvalPlan:
        from ...manifest import manifest_hash, resolve_manifest
        from .evaluate import text_teacher_checkpoint

        mname, mpath = resolve_manifest(state, manifest if manifest is not None else str(info.meta.manifest))
        teachers = sorted(info.meta.teachers or {})
        text_teacher, notes = text_teacher_checkpoint(state, info)
        config = {"manifest": mname, "manifest_hash": manifest_hash(mpath), "weights": weights_identity(ckpt_dir),
                  "teachers": {t: store_identity(state.embeddings_path(t, mname))
                               for t in teachers if state.embeddings_path(t, mname).exists()},
                  "baselines": baselines}
        if text_teacher is not None:   # retrained teacher weights change its cosine
            config["text_teacher"] = weights_identity(text_teacher)
        return EvalPlan(mname, mpath, config, ["model", "random"] if baselines else ["model"], notes=notes,
                        own={"teachers": teachers, "text_teacher": text_teacher})

    def eval_vectors(self, plan: EvalPlan, model: Any, records: list, records_all: list,
                     with_train: bool) -> EvalVectors:
        import logging

        from .evaluate import student_track_vectors

        music, failed = student_track_vectors(model, records)
        if failed:
            logging.getLogger(__name__).warning("%d tracks failed to decode and are left out", len(failed))
            keep = [j for j, r in enumerate(records) if not any(f.startswith(r.id + ":") for f in failed)]
            records, music = [records[j] for j in keep], music[keep]
        train, train_raw = [], None
        if with_train:
            train = [r for r in records_all if r.split == "train"]
            train_raw, train_failed = student_track_vectors(model, train)
            if train_failed:
                keep = [j for j, r in enumerate(train) if not any(f.startswith(r.id + ":") for f in train_failed)]
                train, train_raw = [train[j] for j in keep], train_raw[keep]
        return EvalVectors(records, music, music, train, train_raw, failed=failed)

    def eval_system(self, name: str, model: Any, vecs: EvalVectors, info: RunInfo, runtime: Any, encode: Any,
                    seed: int) -> tuple[np.ndarray, Any]:
        raise MtxError(f"the student family has no {name!r} baseline")

    def eval_extras(self, state: StateDir, plan: EvalPlan, info: RunInfo, model: Any, vecs: EvalVectors,
                    texts: list[str], split: str) -> dict[str, Any]:
        from .evaluate import teacher_cosines, teacher_space_embedders, text_teacher_cosine

        cosines, notes = teacher_cosines(model, state, plan.manifest, vecs.records, vecs.audio)
        plan.notes.update(notes)
        tt = plan.own.get("text_teacher")
        return {"teacher_cosine": cosines,
                "text_teacher_cosine": text_teacher_cosine(model, info, tt, texts) if tt is not None else {},
                "teacher_space_text_embedders": teacher_space_embedders(state, plan.manifest, split,
                                                                        plan.own.get("teachers") or []),
                "failed_decode": len(vecs.failed)}
