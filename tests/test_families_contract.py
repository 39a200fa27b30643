"""Every registered model family keeps the one contract (musiccli/families/base.py).

For each family in ``musiccli.families.FAMILIES``: train a tiny run through the one trainer (``mtx
train``'s stage), interrupt another after two steps and resume it (the losses equal the uninterrupted
run's), then load the checkpoint through the family, encode texts and map stored audio rows into the
same space, export ONNX, load the export without torch and compare it with PyTorch, and get the
torch-free search path. A new family needs a case here (the first test fails until it has one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_student import base_state  # noqa: F401 - the student's synth clips and teacher stores
from test_train import make_data

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@dataclass
class Case:
    setup: Callable[[Any, Path, Path | None], None]   # (state, tiny backbone, student base state) -> data
    config: Callable[..., Any]                        # TrainConfig of a tiny run
    rows: Callable[[Any], np.ndarray]                 # stored audio rows the run's model reads


def _towers_setup(state, backbone: Path, student_base: Path | None) -> None:
    make_data(state)


def _towers_cfg(backbone: Path, **kw):
    from musiccli.training import TrainConfig

    return TrainConfig(**{**dict(audio_encoder="fake", text_backbone=str(backbone), epochs=2, batch_size=8, lr=1e-3,
                                 head_hidden=32, max_length=16, device="cpu", precision="fp32", export=False,
                                 dropout=0.1), **kw})


def _towers_rows(state) -> np.ndarray:
    from musiccli.store import EmbeddingStore

    with EmbeddingStore(state.embeddings_path("fake", "lib")) as store:
        return store.get(list(store.ids)[:5])


def _student_setup(state, backbone: Path, student_base: Path | None) -> None:
    import shutil

    shutil.copytree(student_base, state.root, dirs_exist_ok=True)


def _student_cfg(backbone: Path, **kw):
    from musiccli.training import TrainConfig

    return TrainConfig(**{**dict(objective="student", manifest="lib", teachers="dsp:0.4,tiny:0.3", epochs=2,
                                 batch_size=6, crop=1.0, student_channels=4, vocab_size=200, num_workers=0,
                                 device="cpu", precision="fp32", export=False), **kw})


def _student_rows(state) -> np.ndarray:
    # Stored student rows are window means of the music tower's unit vectors: any 256-d rows will do.
    return np.random.default_rng(0).standard_normal((5, 256)).astype(np.float32)


CASES = {"towers": Case(_towers_setup, _towers_cfg, _towers_rows),
         "student": Case(_student_setup, _student_cfg, _student_rows)}


def _step_losses(run_dir: Path) -> list[float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["train_loss"] for e in events if "train_loss" in e]


def test_every_family_has_a_contract_case():
    from musiccli.families import FAMILIES, OBJECTIVES

    assert set(CASES) == set(FAMILIES)
    assert set(OBJECTIVES.values()) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_family_contract(name, state, tiny_backbone, request):
    from progress_doubles import StopAfter

    from musiccli.errors import Interrupted
    from musiccli.export import ExportConfig, run_export
    from musiccli.families import family_for
    from musiccli.runs import resolve_run
    from musiccli.state import Resume
    from musiccli.training import run_train

    case = CASES[name]
    case.setup(state, tiny_backbone, request.getfixturevalue("base_state") if name == "student" else None)

    # one trainer: a full run, and one interrupted after two steps then resumed, compute the same
    full = run_train(state, case.config(tiny_backbone, run="full"))
    assert full.steps >= 3 and not full.skipped
    with pytest.raises(Interrupted):
        run_train(state, case.config(tiny_backbone, run="part"), StopAfter(2))
    assert len(_step_losses(state.run_dir("part"))) == 2
    resumed = run_train(state, case.config(tiny_backbone, run="part", resume=Resume.CONTINUE))
    assert resumed.steps == full.steps
    np.testing.assert_allclose(_step_losses(state.run_dir("part")), _step_losses(state.run_dir("full")),
                               atol=1e-6, rtol=0)

    # load -> encode -> audio rows into the same space
    info = resolve_run(state, "full")
    family = family_for(info)
    assert family.name == name and info.objective in family.objectives
    model = family.load(info.checkpoint_dir("best"))
    texts = ["calm piano", "dark heavy metal with distorted guitars"]
    q = model.encode(texts)
    assert q.shape == (2, model.dim)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    rows = case.rows(state)
    a = model.audio_for_retrieval(rows)
    assert a.shape == (len(rows), model.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)

    # export parity: the ONNX export, loaded without torch, agrees with PyTorch
    res = run_export(state, ExportConfig(run="full", formats=("onnx",)))
    assert res.onnx_max_abs_diff is not None and res.onnx_max_abs_diff <= 1e-4
    onnx_model = family.load(res.out / "onnx", backend="onnx")
    assert onnx_model.dim == model.dim
    np.testing.assert_allclose(onnx_model.encode(texts), q, atol=1e-4)
    np.testing.assert_allclose(onnx_model.audio_for_retrieval(rows), a, atol=1e-4)

    # the torch-free search path serves every family once its export matches the checkpoint
    parts = family.query_parts(info, "best", "cpu", res.out / "onnx", "auto")
    assert parts.runtime == "onnx" and parts.note is None
