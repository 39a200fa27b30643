"""Training: outputs of a run, learning on learnable data, exact resume, refusals, distillation, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

GENRES = ["rock", "jazz", "techno", "folk"]
MOODS = ["dark", "happy", "calm", "angry"]
INSTRUMENTS = ["piano", "guitar", "drums"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_data(state, n: int = 48, dim: int = 24, encoder: str = "fake", manifest: str = "lib", seed: int = 0):
    """A manifest whose audio vectors are a function of the caption's words (so text can predict them)."""
    from musiccli import store as store_mod
    from musiccli.manifest import Record, assign_splits, write_manifest

    rng = np.random.default_rng(seed)
    words = GENRES + MOODS + INSTRUMENTS
    code = {w: rng.standard_normal(dim).astype(np.float32) for w in words}
    offset = rng.normal(2.0, 0.5, dim).astype(np.float32)  # raw stats far from 0/1: standardising matters
    records, vectors = [], []
    for i in range(n):
        g, m, ins = GENRES[i % 4], MOODS[(i // 4) % 4], INSTRUMENTS[i % 3]
        records.append(Record(
            id=f"t{i:03d}", audio_path=f"/music/t{i:03d}.wav", caption=f"{m} {g} with {ins}",
            alt_captions=[f"a {g} track, {m}, featuring {ins}"], duration=30.0, dataset="synth",
            artist=f"artist {i}", tags=[g, m, ins]))
        vec = code[g] + code[m] + 0.5 * code[ins] + 0.05 * rng.standard_normal(dim).astype(np.float32)
        vectors.append(offset + 3.0 * vec)
    assign_splits(records, seed=seed)
    mpath = state.manifest_path(manifest)
    write_manifest(mpath, records)
    spath = state.embeddings_path(encoder, manifest)
    store_mod.write_part(spath, 0, [r.id for r in records], np.stack(vectors))
    store_mod.assemble(spath, dim, "float32", {"encoder": encoder, "dim": dim, "aggregation": "mean"}, 1)
    return records


def tiny_cfg(backbone: Path, **kw):
    from musiccli.training import TrainConfig

    base = dict(audio_encoder="fake", text_backbone=str(backbone), epochs=2, batch_size=8, lr=1e-3,
                head_hidden=32, max_length=16, device="cpu", precision="fp32", warmup_ratio=0.1,
                export=False)   # the ONNX export at the end has its own test (test_train_exports_onnx_at_end)
    base.update(kw)
    return TrainConfig(**base)


def step_losses(run_dir: Path) -> list[float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["train_loss"] for e in events if "train_loss" in e]


def safetensors_equal(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(np.allclose(x[k].numpy(), y[k].numpy(), atol=1e-6) for k in x)


class StopAfter:
    """Progress that requests a stop (like Ctrl-C) after ``n`` interrupt checks."""

    def __init__(self, n: int) -> None:
        from musiccli.progress import NullProgress

        self._inner = NullProgress()
        self.n = n
        self.task = self._inner.task

    def check_interrupt(self) -> None:
        self.n -= 1
        if self.n <= 0:
            self._inner.stop.request()
        self._inner.check_interrupt()


def test_train_writes_run_and_learns(state, tiny_backbone):
    from musiccli.encoders.text import TextEmbedder
    from musiccli.manifest import read_manifest
    from musiccli.training import run_train

    make_data(state)
    res = run_train(state, tiny_cfg(tiny_backbone, epochs=4, lr=2e-3, dropout=0.0))
    run_dir = state.run_dir("fake-lib")
    assert res.run == "fake-lib" and not res.skipped and res.epochs_done == 4
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["manifest"] == "lib" and info["audio_encoder"] == "fake"
    assert info["embeddings"] == str(state.embeddings_path("fake", "lib"))
    assert info["best"]["epoch"] == res.best_epoch and info["config"]["epochs"] == 4
    for sub in ("best", "latest"):
        assert (run_dir / sub / "model.safetensors").exists() and (run_dir / sub / "backbone").is_dir()
    meta = json.loads((run_dir / "latest" / "meta.json").read_text())
    assert meta["step"] == res.steps and len(meta["losses"]) == res.steps
    assert (run_dir / "latest" / "trainer_state.pt").exists()
    assert not list(run_dir.glob(".tmp-*"))
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in events if "val_loss" in e]
    assert [e["epoch"] for e in epochs] == list(range(1, 5)) and all("val_R@10" in e for e in epochs)

    losses = step_losses(run_dir)
    assert len(losses) == res.steps
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])  # it learns the word -> vector code
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]

    # The saved best/ model reproduces what the trainer measured, through the public loading path.
    model = TextEmbedder.from_pretrained(run_dir / "best")
    val = [r for r in read_manifest(state.manifest_path("lib")) if r.split == "val"]
    from musiccli.retrieval import caption_relevance, text_to_music
    from musiccli.store import EmbeddingStore

    with EmbeddingStore(state.embeddings_path("fake", "lib")) as st:
        audio = model.audio_for_retrieval(st.get([r.id for r in val]))
    text = model.encode([r.caption for r in val])
    rel = caption_relevance(val, "main")
    r10 = text_to_music(text[rel.main_item[rel.queries]], audio, rel)["R@10"]
    assert r10 == pytest.approx(res.best_val_r10)
    again = TextEmbedder.from_pretrained(run_dir / "best").encode([r.caption for r in val])
    assert np.allclose(text, again, atol=1e-6)
    # audio stats come from the train split
    train_ids = [r.id for r in read_manifest(state.manifest_path("lib")) if r.split == "train"]
    with EmbeddingStore(state.embeddings_path("fake", "lib")) as st:
        raw = st.get(train_ids)
    assert np.allclose(model.audio_mean.numpy(), raw.mean(0), atol=1e-4)

    # A second fresh start is a no-op that reports the earlier result.
    again_res = run_train(state, tiny_cfg(tiny_backbone, epochs=4, lr=2e-3, dropout=0.0))
    assert again_res.skipped and again_res.steps == res.steps
    assert state.newest_run() == "fake-lib"


@pytest.mark.slow
def test_train_exports_onnx_at_end(state, tiny_backbone):
    """Unless --no-export, a finished run leaves exports/<run>/best/onnx for the checkpoint search uses."""
    from musiccli.runs import weights_identity
    from musiccli.families.towers.onnx import OnnxTextModel, onnx_mismatch
    from musiccli.runs import export_dir
    from musiccli.training import run_train

    make_data(state)
    res = run_train(state, tiny_cfg(tiny_backbone, export=True))
    onnx_dir = export_dir(state, res.run, "best") / "onnx"
    assert res.onnx == str(onnx_dir / "model.onnx") and res.onnx_note is None
    assert onnx_mismatch(onnx_dir, weights_identity(state.run_dir(res.run) / "best")) is None
    from musiccli.encoders.text import TextEmbedder

    queries = ["dark rock with piano", "calm folk"]
    ref = TextEmbedder.from_pretrained(state.run_dir(res.run) / "best").encode(queries)
    np.testing.assert_allclose(OnnxTextModel(onnx_dir).encode(queries), ref, atol=1e-4)


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(state, tiny_backbone):
    """torchtune-style: interrupt, resume (twice, once from an older checkpoint), compare losses and weights."""
    import shutil

    from musiccli.errors import Interrupted, MtxError
    from musiccli.state import Resume
    from musiccli.training import run_train

    make_data(state)
    # Dropout, alt captions and a learnable temperature are on: resume must restore the RNG
    # states, the data position and the loss's parameter exactly. 5 steps per epoch.
    kw = dict(epochs=2, dropout=0.1, learn_temperature=True)
    full = run_train(state, tiny_cfg(tiny_backbone, run="full", **kw))
    ref = step_losses(state.run_dir("full"))
    assert len(ref) == full.steps == 10

    # Ctrl-C after step 3: the checkpoint is taken at that step boundary.
    with pytest.raises(Interrupted):
        run_train(state, tiny_cfg(tiny_backbone, run="part", **kw), StopAfter(3))
    part_dir = state.run_dir("part")
    assert json.loads((part_dir / "latest" / "meta.json").read_text())["step"] == 3
    step3 = state.root / "step3"
    shutil.copytree(part_dir / "latest", step3)

    with pytest.raises(MtxError) as err:
        run_train(state, tiny_cfg(tiny_backbone, run="part", **kw))
    assert err.value.message == "interrupted train found: rerun with --continue to resume, or --force to start over"
    with pytest.raises(MtxError) as err:
        run_train(state, tiny_cfg(tiny_backbone, run="part", resume=Resume.CONTINUE, **{**kw, "lr": 2e-3}))
    assert "lr: 0.001 -> 0.002" in err.value.message

    # Resume, and stop again after 2 more steps: the last step of epoch 1, before its validation.
    with pytest.raises(Interrupted):
        run_train(state, tiny_cfg(tiny_backbone, run="part", resume=Resume.CONTINUE, **kw), StopAfter(2))
    assert len(step_losses(part_dir)) == 5
    assert np.allclose(step_losses(part_dir), ref[:5], atol=1e-6, rtol=0)

    # As if the process died after step 5 with only the step-3 checkpoint on disk: steps 4-5
    # are cut from metrics.jsonl and replayed.
    shutil.rmtree(part_dir / "latest")
    shutil.copytree(step3, part_dir / "latest")
    res = run_train(state, tiny_cfg(tiny_backbone, run="part", resume=Resume.CONTINUE, **kw))
    assert res.steps == full.steps and not res.skipped
    losses = step_losses(part_dir)
    assert len(losses) == len(ref) and np.allclose(losses, ref, atol=1e-6, rtol=0)
    epochs = [json.loads(x) for x in (part_dir / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for sub in ("latest", "best"):
        for f in ("model.safetensors", "backbone/model.safetensors"):
            assert safetensors_equal(part_dir / sub / f, state.run_dir("full") / sub / f), (sub, f)


def test_missing_embeddings_and_bad_names(state, tiny_backbone):
    from musiccli.errors import MtxError
    from musiccli.training import run_train

    make_data(state)
    with pytest.raises(MtxError) as err:
        run_train(state, tiny_cfg(tiny_backbone, audio_encoder="mert"))
    assert "no mert embeddings for manifest lib" in err.value.message
    assert "mtx embed --audio-encoder mert" in err.value.hint
    with pytest.raises(MtxError) as err:
        run_train(state, tiny_cfg(tiny_backbone, loss="hinge"))
    assert "unknown loss 'hinge'" in err.value.message and "listmle" in err.value.hint
    with pytest.raises(MtxError, match="unknown teacher run"):
        run_train(state, tiny_cfg(tiny_backbone, teacher="nope"))
    with pytest.raises(MtxError, match="cannot load text backbone"):
        run_train(state, tiny_cfg(tiny_backbone, text_backbone=str(state.root / "no-such-model")))
    # failed setups leave nothing behind: a corrected rerun is not refused as "interrupted"
    assert not state.run_dir("fake-lib").exists()
    assert not list(state.stages_dir.glob("train*.json"))   # (the lock file beside it is no record)


def test_early_stopping_and_force(state, tiny_backbone):
    from musiccli.state import Resume
    from musiccli.training import run_train

    make_data(state)
    # lr 0: nothing changes, so val R@10 never improves after epoch 1
    res = run_train(state, tiny_cfg(tiny_backbone, epochs=5, lr=0.0, patience=1))
    assert res.stopped_early and res.epochs_done == 2 and res.best_epoch == 1
    assert json.loads((state.run_dir("fake-lib") / "run.json").read_text())["status"] == "complete"
    res = run_train(state, tiny_cfg(tiny_backbone, epochs=1, resume=Resume.FORCE))
    assert not res.skipped and not res.stopped_early and res.epochs_done == 1
    assert len(step_losses(state.run_dir("fake-lib"))) == res.steps


def test_early_stop_survives_a_crash_before_completion(state, tiny_backbone, monkeypatch):
    """Killed after the stopping epoch's checkpoint but before the run was marked complete,
    --continue must finish as stopped early, not train the remaining epochs."""
    from musiccli.state import Resume
    from musiccli.training import run_train, trainer

    make_data(state)
    real_finish = trainer.Trainer._finish

    def crash(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "_finish", crash)
    with pytest.raises(KeyboardInterrupt):
        run_train(state, tiny_cfg(tiny_backbone, epochs=5, lr=0.0, patience=1))
    monkeypatch.setattr(trainer.Trainer, "_finish", real_finish)
    res = run_train(state, tiny_cfg(tiny_backbone, epochs=5, lr=0.0, patience=1, resume=Resume.CONTINUE))
    assert res.stopped_early and res.epochs_done == 2 and res.best_epoch == 1


def test_distillation_into_student(state, tiny_backbone):
    from musiccli.encoders.text import TextEmbedder
    from musiccli.training import run_train

    make_data(state)
    run_train(state, tiny_cfg(tiny_backbone, run="teacher", epochs=1, dropout=0.0))
    res = run_train(state, tiny_cfg(tiny_backbone, run="student", teacher="teacher", head_hidden=16, epochs=1))
    assert res.loss == "distillation" and res.steps > 0
    run_dir = state.run_dir("student")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["teacher"] == "teacher" and info["loss"] == "distillation"
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("distill_mse" in e and "distill_kl" in e for e in events if "train_loss" in e)
    student = TextEmbedder.from_pretrained(run_dir / "best")
    assert student.config.hidden_dim == 16 and student.config.out_dim == 24


def test_cli_train(state, cli, tiny_backbone, monkeypatch):
    make_data(state)
    monkeypatch.setenv("COLUMNS", "200")
    args = ["train", "--audio-encoder", "fake", "--text-backbone", str(tiny_backbone), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--lr", "1e-3", "--checkpoint-every", "2", "--head-hidden", "32",
            "--max-length", "16", "--loss", "infonce"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "epoch 1/1" in r.output and "val R@10" in r.output and "fake-lib" in r.output
    cfg = json.loads((state.run_dir("fake-lib") / "run.json").read_text())["config"]
    assert cfg["head_hidden"] == 32 and cfg["loss"] == "infonce" and cfg["checkpoint_every"] == 2
    r = cli(*args, "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout[r.stdout.index("{"):])
    assert data["skipped"] is True and data["run"] == "fake-lib"
    r = cli(*args[:-1], "hinge")
    assert r.exit_code == 1 and "unknown loss 'hinge'" in r.output and "infonce" in r.output
    r = cli("train", "--audio-encoder", "mert")
    assert r.exit_code == 1 and "mtx embed --audio-encoder mert" in r.output


def test_freeze_backbone_parts(tiny_backbone):
    from musiccli.encoders.text import TextEmbedder
    from musiccli.families.towers.train import freeze_backbone_parts

    model = TextEmbedder.from_backbone(str(tiny_backbone), out_dim=8)
    freeze_backbone_parts(model, embeddings=True, lowest_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("backbone.embeddings.", "backbone.pooler.", "backbone.encoder.layer.0."))
                   for n in trainable)
    assert any(n.startswith("backbone.encoder.layer.1.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable)


_RANK_SCRIPT = """
import sys
from musiccli.errors import Interrupted
from musiccli.progress import NullProgress
from musiccli.state import Resume, StateDir
from musiccli.training.loop import TrainConfig, run_train

root, backbone, run, mode = sys.argv[1:5]


class StopAfter(NullProgress):  # a Ctrl-C on this rank after 3 steps
    def __init__(self):
        super().__init__()
        self.checks = 0

    def check_interrupt(self):
        self.checks += 1
        if self.checks >= 3:
            self.stop.request()
        super().check_interrupt()


cfg = TrainConfig(audio_encoder="fake", manifest="lib", run=run, text_backbone=backbone, epochs=2, batch_size=8,
                  head_hidden=32, dropout=0.1, lr=1e-3, device="cpu", precision="fp32",
                  resume=Resume.CONTINUE if mode == "continue" else Resume.FRESH)
try:
    r = run_train(StateDir.resolve(root), cfg, StopAfter() if mode == "stop" else None)
    print("steps", r.steps, "skipped", r.skipped)
except Interrupted:
    print("interrupted")
"""


@pytest.mark.slow
def test_two_process_ddp_training_resumes_exactly(state, tiny_backbone):
    """torchrun-style, 2 CPU ranks (gloo on loopback): only rank 0 writes; an interrupted run resumed with
    --continue logs the same per-step losses and ends with the same weights as an uninterrupted one."""
    import os
    import socket
    import subprocess
    import sys

    make_data(state)

    def launch(run: str, mode: str) -> list[str]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        procs = [subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, str(state.root), str(tiny_backbone), run, mode],
            env={**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo",
                 "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
        try:
            outs = [p.communicate(timeout=180)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert [p.returncode for p in procs] == [0, 0], outs
        return outs

    assert all("skipped False" in o for o in launch("full", "full"))
    full = state.run_dir("full")
    ref = step_losses(full)
    steps = [json.loads(line)["step"] for line in (full / "metrics.jsonl").read_text().splitlines()
             if "train_loss" in json.loads(line)]
    assert steps == list(range(1, len(ref) + 1))  # one writer: no step logged twice
    assert all("skipped True" in o for o in launch("full", "full"))  # complete: a no-op on every rank

    assert all("interrupted" in o for o in launch("part", "stop"))
    assert json.loads((state.run_dir("part") / "latest" / "meta.json").read_text())["step"] == 3
    assert all("skipped False" in o for o in launch("part", "continue"))
    np.testing.assert_allclose(step_losses(state.run_dir("part")), ref, rtol=1e-6, atol=1e-7)
    assert safetensors_equal(full / "latest" / "model.safetensors",
                             state.run_dir("part") / "latest" / "model.safetensors")


def test_trainer_state_loads_with_weights_only_and_restores_rng_exactly(tmp_path):
    import random

    import torch

    from musiccli.errors import MtxError
    from musiccli.runtime import capture_rng_state, restore_rng_state
    from musiccli.training import checkpoint as ckpt

    random.random(), np.random.normal(), torch.randn(1)   # noqa: B018 (move every generator; numpy caches a gauss)
    state = {"rng": capture_rng_state(), "rng_by_rank": [capture_rng_state()] * 2, "step": 3,
             "losses": [0.5, 0.25], "best": {"epoch": None, "val_R@10": 0.1}}
    expected = (random.random(), np.random.normal(), np.random.normal(), torch.randn(3))
    ckpt_dir = tmp_path / "latest"
    ckpt_dir.mkdir()
    ckpt.save_trainer_state(ckpt_dir / ckpt.TRAINER_STATE, state)
    torch.load(ckpt_dir / ckpt.TRAINER_STATE, weights_only=True)   # plain tensors, numbers, lists and dicts only
    loaded = ckpt.load_trainer_state(ckpt_dir)
    assert loaded["step"] == 3 and loaded["best"] == state["best"] and len(loaded["rng_by_rank"]) == 2
    restore_rng_state(loaded["rng"])
    got = (random.random(), np.random.normal(), np.random.normal(), torch.randn(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
    # A file holding arbitrary pickled objects is refused with a hint, never executed.
    torch.save({"obj": ckpt.MetricsLog(tmp_path / "m.jsonl")}, ckpt_dir / ckpt.TRAINER_STATE)
    with pytest.raises(MtxError, match="older mtx"):
        ckpt.load_trainer_state(ckpt_dir)
