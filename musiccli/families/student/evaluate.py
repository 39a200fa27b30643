"""The student family's evaluation: music vectors from audio, and what only a student report has.

The music side of a student is computed from the evaluated tracks' audio (crop-length windows, mean, L2,
as ``mtx embed --audio-encoder student`` stores them). The report adds the cosine between each teacher's
learned projection of the student vector and the teacher vector (standardised with the train-split
statistics), the text tower's cosine to its ``--text-teacher``, and the eval results of align runs whose
text vectors live in a teacher's space on the same manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import MtxError
from ...manifest import Record
from ...runs import RunInfo, eval_report_path, resolve_run
from ...state import StateDir, read_json


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def student_track_vectors(model, records: Sequence[Record], batch_windows: int = 16) -> tuple[np.ndarray, list[str]]:
    """Unit music vectors [N, dim] from audio (crop-length windows, mean, L2) as `mtx embed` stores them;
    tracks that fail to decode get a zero row and are listed."""
    import torch

    from ...audio import decode, frame_windows

    c = model.student_config
    out = np.zeros((len(records), c.dim), dtype=np.float32)
    failed = []
    with torch.inference_mode():
        for j, r in enumerate(records):
            try:
                wave, _ = decode(r.audio_path, c.sample_rate)
            except MtxError as e:
                failed.append(f"{r.id}: {e.message}")
                continue
            windows = frame_windows(wave, c.crop_samples, c.crop_samples)
            vecs = [model.embed_waves(torch.from_numpy(windows[s:s + batch_windows])).float().cpu().numpy()
                    for s in range(0, len(windows), batch_windows)]
            out[j] = np.concatenate(vecs).mean(0)
    return _unit(out), failed


def teacher_cosines(model, state: StateDir, mname: str, records: Sequence[Record], music: np.ndarray
                     ) -> tuple[dict[str, float], dict[str, str]]:
    """Mean cosine between each teacher's projection of the student vector and its standardised vector."""
    import torch

    from ...store import EmbeddingStore

    cos, notes = {}, {}
    for name in sorted(model.student_config.teachers):
        path = state.embeddings_path(name, mname)
        if not path.exists():
            notes[f"teacher_{name}"] = f"skipped: no {name} store for {mname}"
            continue
        with EmbeddingStore(path) as store:
            keep = [j for j, r in enumerate(records) if store.has(r.id)]
            raw = store.get([records[j].id for j in keep])
        with torch.inference_mode():
            target = model.standardise_teacher(name, torch.from_numpy(raw))
            pred = model.heads[name](torch.from_numpy(music[keep]))
            cos[name] = float(torch.nn.functional.cosine_similarity(pred, target, dim=-1).mean())
    return cos, notes


def text_teacher_checkpoint(state: StateDir, info: RunInfo) -> tuple[Path | None, dict[str, str]]:
    """The checkpoint of a student's ``--text-teacher`` run, if it had one and it is still there."""
    tt = info.meta.text_teacher
    if not tt:
        return None, {}
    try:
        return resolve_run(state, tt["run"], announce=False).checkpoint_dir(tt["checkpoint"]), {}
    except MtxError as e:
        return None, {"text_teacher": f"skipped: {e.message}"}


def text_teacher_cosine(model, info: RunInfo, ckpt: Path, texts: Sequence[str]) -> dict[str, float]:
    """Mean cosine, over the split's captions, between the teacher projection of the student's text vector
    and the text teacher's vector (native space, standardised as in training)."""
    import torch

    from ...encoders.text import TextEmbedder

    teacher = info.meta.text_teacher["audio_encoder"]
    raw = TextEmbedder.from_pretrained(ckpt).encode(list(texts), batch_size=128, space="audio")
    with torch.inference_mode():
        target = model.standardise_teacher(teacher, torch.from_numpy(raw).to(model.device))
        pred = model.heads[teacher](torch.from_numpy(model.encode(list(texts))).to(model.device))
        return {teacher: float(torch.nn.functional.cosine_similarity(pred, target, dim=-1).mean())}


def teacher_space_embedders(state: StateDir, mname: str, split: str, teachers: Sequence[str]) -> dict[str, Any]:
    """Trained align text embedders of the same manifest in a teacher's space, with their eval results."""
    out: dict[str, Any] = {}
    for run in state.list_runs(complete_only=True):
        try:
            other = resolve_run(state, run, announce=False)
        except MtxError:
            continue
        # align runs only: a joint run's text vectors live in its own learned space, not the teacher's
        if other.objective != "align" or other.audio_encoder not in teachers \
                or other.meta.manifest != mname:
            continue
        rep = next((p for p in (eval_report_path(state, run, split, c) for c in ("best", "latest")) if p.exists()),
                   None)
        if rep is not None:
            r = read_json(rep)
            out[run] = {"audio_encoder": other.audio_encoder, "tracks": r.get("counts", {}).get("tracks"),
                        "results": r.get("results", {}).get("model")}
        else:
            out[run] = {"audio_encoder": other.audio_encoder, "note": f"not evaluated: run `mtx eval --run {run} "
                                                                      f"--split {split}`"}
    return out
