"""The student's training side: the mel cache (a stage of its own), --text-teacher, the shared trainer skeleton.

Tiny synth audio and tiny teachers, from tests/test_student.py's fixtures.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_student import TINY, _cfg, base_state, sstate  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")

CHUNK = 4


def _records(state):
    from musiccli.manifest import read_manifest

    return read_manifest(state.manifest_path("lib"))


def _build(state, **kw):
    from musiccli.families.student.model import StudentConfig
    from musiccli.manifest import manifest_hash
    from musiccli.families.student.melcache import ensure_mel_cache

    return ensure_mel_cache(state, "lib", manifest_hash(state.manifest_path("lib")), _records(state),
                            StudentConfig(), chunk_tracks=CHUNK, **kw)


def _contents(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def _losses(state, run: str = "s") -> list[float]:
    return json.loads((state.run_dir(run) / "latest" / "meta.json").read_text())["losses"]


# --------------------------------------------------------------------------- the cache's contents
def test_cache_frames_equal_logmel_in_the_interior(sstate):
    import torch

    from musiccli.audio import decode
    from musiccli.families.student.frontend import LogMel
    from musiccli.families.student.model import StudentConfig
    from musiccli.families.student.melcache import MelCache, track_db

    res = _build(sstate)
    assert res.path == sstate.root / "cache" / "mel" / res.path.name and res.path.name.startswith("lib-")
    cfg = StudentConfig()
    front = LogMel(cfg)
    rec = next(r for r in _records(sstate) if r.split == "train")
    wave, _ = decode(rec.audio_path, cfg.sample_rate)
    cache = MelCache(res.path)
    assert cache.frames(rec.id) == 1 + len(wave) // cfg.hop
    # The block-wise full-track computation is LogMel.db of the whole track (float32, before float16).
    whole = front.db(torch.from_numpy(wave)[None])[0].T.numpy()
    np.testing.assert_allclose(track_db(front, wave, block_frames=7), whole, rtol=1e-5, atol=1e-3)
    # A hop-aligned crop: LogMel of that audio equals the cached frames except at its two edges
    # (reflect padding there; the cache saw the real neighbours), within float16's precision.
    start, n = 11, 40
    crop = wave[start * cfg.hop:start * cfg.hop + (n - 1) * cfg.hop]
    ours = front.db(torch.from_numpy(crop)[None])[0].T.numpy()
    assert ours.shape == (n, cfg.n_mels)
    edge = cfg.n_fft // (2 * cfg.hop)
    cached = cache.db(rec.id, start, n)
    np.testing.assert_allclose(cached[edge:-edge], ours[edge:-edge], rtol=1e-3, atol=2e-2)
    assert np.abs(cached[0] - ours[0]).max() > 0.1          # the edge frames do differ
    # The scaled crop is the uncached rule (ref = max, floor at -top_db, min-max) on the cached frames.
    got = cache.crop(rec.id, n, None, cfg.top_db)[0].numpy()
    total = cache.frames(rec.id)
    db = cache.db(rec.id, (total - n) // 2, n).T
    db = np.maximum(db - db.max(), -cfg.top_db)
    np.testing.assert_allclose(got, (db - db.min()) / (0 - db.min()), atol=1e-6)
    assert got.shape == (cfg.n_mels, n) and got.min() == 0.0 and got.max() == pytest.approx(1.0)


def test_short_tracks_are_tiled_in_frame_space(sstate):
    from musiccli.families.student.model import StudentConfig
    from musiccli.families.student.melcache import MelCache

    cache = MelCache(_build(sstate).path)
    rec = next(r for r in _records(sstate) if r.split == "train")
    total = cache.frames(rec.id)
    crop = cache.crop(rec.id, 2 * total + 3, 12345, StudentConfig().top_db)[0].numpy()
    np.testing.assert_array_equal(crop[:, :total], crop[:, total:2 * total])
    np.testing.assert_array_equal(crop[:, 2 * total:], crop[:, :3])


def test_interrupted_cache_build_resumes_to_the_same_file(sstate, tmp_path: Path):
    from progress_doubles import StopAfter

    from musiccli.errors import Interrupted, MtxError
    from musiccli.state import Resume, StateDir, load_stage
    from musiccli.store import committed_parts
    from musiccli.families.student.melcache import stage_key

    other = StateDir.resolve(tmp_path / "other")
    shutil.copytree(sstate.root, other.root)
    full = _build(other)
    with pytest.raises(Interrupted):
        _build(sstate, progress=StopAfter(CHUNK + 1))
    rec = load_stage(sstate, full.key)
    assert rec.status == "partial" and full.key == stage_key("lib", full.path.stem.split("-", 1)[1])
    path = sstate.root / "cache" / "mel" / full.path.name
    assert not path.exists() and len(committed_parts(path)) == 2
    with pytest.raises(MtxError, match="interrupted melcache found"):
        _build(sstate)
    resumed = _build(sstate, mode=Resume.CONTINUE)
    assert (resumed.tracks, resumed.frames) == (full.tracks, full.frames) and not committed_parts(path)
    a, b = _contents(full.path), _contents(resumed.path)
    assert set(a) == set(b) == {"ids", "offsets", "db", "failed_ids", "failed_reasons"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert b["db"].dtype == np.float16 and len(b["ids"]) == sum(r.split in ("train", "val") for r in _records(sstate))


def test_a_complete_cache_is_reused_by_other_runs(sstate, caplog):
    from musiccli.state import Resume
    from musiccli.families.student.melcache import MelCache
    from musiccli.families.student.train import run_student_train

    run_student_train(sstate, _cfg(epochs=1, mel_cache=True))
    (path,) = (sstate.root / "cache" / "mel").glob("lib-*.h5")
    before = path.stat().st_mtime_ns
    record = next(sstate.stages_dir.glob("melcache*.json"))
    record_before = record.read_text()
    with caplog.at_level(logging.INFO, logger="musiccli.families.student.melcache"):
        # other teachers, another run, even --force on it: the same cache
        run_student_train(sstate, _cfg(epochs=1, mel_cache=True, run="s2", teachers="dsp:1"))
        run_student_train(sstate, _cfg(epochs=1, mel_cache=True, run="s2", teachers="dsp:1", resume=Resume.FORCE))
    assert caplog.text.count("reusing the mel cache") == 2
    assert path.stat().st_mtime_ns == before and record.read_text() == record_before
    info = json.loads((sstate.run_dir("s2") / "run.json").read_text())
    assert info["mel_cache"] == str(path)
    train_ids = {r.id for r in _records(sstate) if r.split == "train"}
    assert train_ids <= set(MelCache(path).row)


# --------------------------------------------------------------------------- training from the cache
def test_cached_training_resumes_to_the_same_losses(sstate, tmp_path: Path):
    from progress_doubles import StopAfter

    from musiccli.errors import Interrupted
    from musiccli.state import Resume, StateDir
    from musiccli.families.student.train import run_student_train

    other = StateDir.resolve(tmp_path / "other")
    shutil.copytree(sstate.root, other.root)
    full = run_student_train(other, _cfg(mel_cache=True))
    _build(sstate)   # cache first, so StopAfter counts training steps only
    with pytest.raises(Interrupted):
        run_student_train(sstate, _cfg(mel_cache=True), StopAfter(4))
    resumed = run_student_train(sstate, _cfg(mel_cache=True, resume=Resume.CONTINUE))
    assert resumed.steps == full.steps
    np.testing.assert_allclose(_losses(sstate), _losses(other), rtol=1e-5, atol=1e-6)
    assert resumed.best_val_r10 == pytest.approx(full.best_val_r10)
    cfg = json.loads(next(p for p in sstate.stages_dir.glob("train*.json")).read_text())["config"]
    assert cfg["mel_cache"] is True


def test_cached_and_uncached_runs_differ_and_the_flag_is_result_affecting(sstate, tmp_path: Path):
    from musiccli.errors import MtxError
    from musiccli.state import Resume
    from musiccli.families.student.train import run_student_train

    run_student_train(sstate, _cfg(epochs=1))
    uncached = _losses(sstate)
    cfg = json.loads(next(p for p in sstate.stages_dir.glob("train*.json")).read_text())["config"]
    assert "mel_cache" not in cfg            # off: earlier runs' records keep their config
    with pytest.raises(MtxError, match="different config: mel_cache"):
        run_student_train(sstate, _cfg(epochs=1, mel_cache=True))
    run_student_train(sstate, _cfg(epochs=1, mel_cache=True, resume=Resume.FORCE))
    cached = _losses(sstate)
    assert len(cached) == len(uncached) and not np.allclose(cached, uncached)


def test_undecodable_audio_is_recorded_in_the_cache_and_stops_training(sstate):
    from musiccli.errors import MtxError
    from musiccli.state import load_stage
    from musiccli.families.student.train import run_student_train

    victim = next(r for r in _records(sstate) if r.split == "train")
    Path(victim.audio_path).unlink()
    with pytest.raises(MtxError, match="cannot read training audio.*missing audio file") as e:
        run_student_train(sstate, _cfg(epochs=1, mel_cache=True))
    assert "mtx verify" in e.value.hint
    (record,) = sstate.stages_dir.glob("melcache*.json")
    rec = load_stage(sstate, json.loads(record.read_text())["key"])
    assert rec.status == "complete-with-failures" and rec.failed_items == 1
    assert rec.result["failures"][0][0] == victim.id
    assert not sstate.run_dir("s").exists()


def test_mel_cache_flag_through_the_cli(cli, sstate):
    r = cli("train", "--objective", "student", "--teachers", "dsp:0.4,tiny:0.3", "--epochs", "1", "--run", "c1",
            "--mel-cache", "--no-export", *TINY)
    assert r.exit_code == 0, r.output
    info = json.loads((sstate.run_dir("c1") / "run.json").read_text())
    assert info["config"]["mel_cache"] is True and Path(info["mel_cache"]).exists()
    r = cli("train", "--audio-encoder", "dsp", "--mel-cache", "--epochs", "1", "--device", "cpu")
    assert r.exit_code == 1 and "--mel-cache only applies to --objective student" in r.output


# --------------------------------------------------------------------------- --text-teacher
@pytest.fixture(scope="module")
def tt_base(base_state: Path, tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base_state plus: align run `al` (dsp, lib), align run `al2` (dsp, another manifest), student run `st`."""
    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.state import StateDir
    from musiccli.training import TrainConfig, run_train
    from musiccli.families.student.train import run_student_train
    from musiccli.unify import UnifyConfig, run_unify

    root = tmp_path_factory.mktemp("text-teacher")
    shutil.copytree(base_state, root, dirs_exist_ok=True)
    state = StateDir.resolve(root)
    align = dict(audio_encoder="dsp", text_backbone=str(tiny_backbone), epochs=1, batch_size=8, lr=1e-3,
                 head_hidden=32, max_length=16, device="cpu", precision="fp32", export=False)
    run_train(state, TrainConfig(manifest="lib", run="al", **align))
    run_unify(state, UnifyConfig(datasets=["synth"], name="lib2"))
    run_embed(state, EmbedConfig(audio_encoder="dsp", manifest="lib2", num_workers=0, device="cpu"))
    run_train(state, TrainConfig(manifest="lib2", run="al2", **align))
    run_student_train(state, _cfg(epochs=1, run="st"))
    return root


@pytest.fixture()
def ttstate(tt_base: Path, state_dir: Path):
    from musiccli.state import StateDir

    shutil.copytree(tt_base, state_dir, dirs_exist_ok=True)
    return StateDir.resolve(state_dir)


def _steps(state, run: str) -> list[dict]:
    rows = [json.loads(line) for line in (state.run_dir(run) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train_loss" in r]


@pytest.mark.slow
def test_text_teacher_term_is_trained_and_decreases(ttstate, cli):
    import torch

    from musiccli.families.student.model import StudentModel
    from musiccli.encoders.text import TextEmbedder
    from musiccli.families.student.train import run_student_train

    res = run_student_train(ttstate, _cfg(text_teacher="al:1", epochs=6, batch_size=4, lr=3e-3,
                                          contrastive_weight=0.0))
    steps = _steps(ttstate, "s")
    assert all("text_distill_dsp" in e and "text_cosine_dsp" in e for e in steps)
    per_epoch = [np.mean([e["text_distill_dsp"] for e in steps if e["epoch"] == k]) for k in (1, 6)]
    assert per_epoch[1] < 0.8 * per_epoch[0], per_epoch
    assert all("val_text_cosine_dsp" in e for e in res.epochs)
    assert res.epochs[-1]["val_text_cosine_dsp"] > res.epochs[0]["val_text_cosine_dsp"]
    info = json.loads((ttstate.run_dir("s") / "run.json").read_text())
    assert info["text_teacher"] == {"run": "al", "weight": 1.0, "audio_encoder": "dsp", "checkpoint": "best",
                                    "manifest": "lib"}
    stage = json.loads(next(ttstate.stages_dir.glob("train_s.json")).read_text())["config"]
    assert stage["text_teacher"] == "al:1" and "head_sha256" in stage["text_teacher_weights"]

    # The logged cosine is the naive one: student text -> P_dsp vs the teacher's native vector,
    # standardised with the student's dsp statistics.
    from musiccli.manifest import read_manifest

    val = [r.caption for r in read_manifest(ttstate.manifest_path("lib")) if r.split == "val"]
    model = StudentModel.from_pretrained(ttstate.run_dir("s") / "latest")
    raw = TextEmbedder.from_pretrained(ttstate.run_dir("al") / "best").encode(val, space="audio")
    with torch.no_grad():
        target = (torch.from_numpy(raw) - model.mean_dsp) / model.std_dsp
        pred = model.heads["dsp"](torch.from_numpy(model.encode(val)))
        naive = torch.nn.functional.cosine_similarity(pred, target, dim=-1).mean().item()
    assert res.epochs[-1]["val_text_cosine_dsp"] == pytest.approx(naive, abs=1e-4)

    # `mtx eval` averages over every distinct caption of the split (alternative captions too).
    texts = list(dict.fromkeys(c for r in read_manifest(ttstate.manifest_path("lib")) if r.split == "val"
                               for c in r.captions))
    raw = TextEmbedder.from_pretrained(ttstate.run_dir("al") / "best").encode(texts, space="audio")
    with torch.no_grad():
        target = (torch.from_numpy(raw) - model.mean_dsp) / model.std_dsp
        pred = model.heads["dsp"](torch.from_numpy(model.encode(texts)))
        naive_distinct = torch.nn.functional.cosine_similarity(pred, target, dim=-1).mean().item()
    r = cli("eval", "--run", "s", "--split", "val", "--checkpoint", "latest", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["text_teacher_cosine"]["dsp"] == pytest.approx(naive_distinct, abs=1e-4)
    r = cli("eval", "--run", "s", "--split", "val", "--checkpoint", "latest", "--force")
    assert "text tower cosine to the text teacher (dsp space)" in r.output


def test_text_teacher_from_another_manifest_is_a_warning(ttstate, caplog):
    from musiccli.families.student.train import run_student_train

    with caplog.at_level(logging.WARNING, logger="musiccli.families.student.train"):
        res = run_student_train(ttstate, _cfg(text_teacher="al2", epochs=1))
    assert "was trained on manifest lib2" in caplog.text and res.steps > 0
    assert "text_distill_dsp" in _steps(ttstate, "s")[0]


@pytest.mark.parametrize("args, message", [
    (["--text-teacher", "nope"], "--text-teacher run 'nope' not found"),
    (["--text-teacher", "st"], "--text-teacher run 'st' is a student run, not an align run"),
    (["--text-teacher", "al", "--teachers", "tiny:1"], "is aligned to dsp, which is not one of --teachers (tiny)"),
    (["--text-teacher", "al:abc"], "invalid --text-teacher weight"),
    (["--text-teacher", "al:-1"], "invalid --text-teacher 'al:-1'"),
    (["--text-teacher", "../al"], "invalid run name"),
])
def test_bad_text_teachers_are_refused_in_one_line(cli, ttstate, args, message):
    base = ["train", "--objective", "student", "--manifest", "lib", "--teachers", "dsp:0.4,tiny:0.3", "--run", "bad",
            *TINY]
    r = cli(*base, *args)
    assert r.exit_code == 1, r.output
    assert message in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and "hint" in r.output.lower()
    assert not ttstate.run_dir("bad").exists() and not list(ttstate.stages_dir.glob("train_bad*"))


def test_text_teacher_only_applies_to_the_student(cli, ttstate):
    r = cli("train", "--audio-encoder", "dsp", "--text-teacher", "al", "--epochs", "1", "--device", "cpu")
    assert r.exit_code == 1 and "--text-teacher only applies to --objective student" in r.output


# --------------------------------------------------------------------------- the shared skeleton
class _Recorder:
    def __init__(self, skipped=None, build_error=None):
        self.calls, self.skipped, self.build_error = [], skipped, build_error

    def setup(self):
        self.calls.append("setup")
        return self.skipped

    def build(self):
        self.calls.append("build")
        if self.build_error is not None:
            raise self.build_error

    def fit(self):
        self.calls.append("fit")
        return "result"

    def abandon(self):
        self.calls.append("abandon")

    def close(self):
        self.calls.append("close")


@pytest.mark.parametrize("trainer, outcome, calls", [
    (_Recorder(), "result", ["setup", "build", "fit", "close"]),
    (_Recorder(skipped="done"), "done", ["setup", "close"]),
    (_Recorder(build_error="mtx"), "MtxError", ["setup", "build", "abandon", "close"]),
    (_Recorder(build_error=RuntimeError("bug")), "RuntimeError", ["setup", "build", "close"]),
])
def test_run_trainer_order(trainer, outcome, calls):
    from musiccli.errors import MtxError
    from musiccli.training.fit import run_trainer

    if trainer.build_error == "mtx":
        trainer.build_error = MtxError("bad input")
    if outcome in ("MtxError", "RuntimeError"):
        with pytest.raises(MtxError if outcome == "MtxError" else RuntimeError):
            run_trainer(trainer)
    else:
        assert run_trainer(trainer) == outcome
    assert trainer.calls == calls


def test_text_teacher_through_the_cli_logs_its_cosine(cli, ttstate):
    r = cli("train", "--objective", "student", "--manifest", "lib", "--teachers", "dsp:0.4,tiny:0.3", "--epochs", "1",
            "--run", "tt", "--text-teacher", "al:0.5", "--no-export", *TINY)
    assert r.exit_code == 0, r.output
    assert "dsp text cos" in r.output
    info = json.loads((ttstate.run_dir("tt") / "run.json").read_text())
    assert info["text_teacher"]["weight"] == 0.5 and info["config"]["text_teacher"] == "al:0.5"


def test_cache_built_in_loader_workers_is_the_same_file(sstate, tmp_path: Path):
    from musiccli.state import StateDir

    other = StateDir.resolve(tmp_path / "other")
    shutil.copytree(sstate.root, other.root)
    a, b = _contents(_build(sstate).path), _contents(_build(other, num_workers=2).path)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_a_run_that_builds_the_mel_cache_computes_what_a_run_that_finds_it_does(sstate):
    """The cache is built before the seed is set: building it must not move the training RNG streams."""
    from musiccli.families.student.train import run_student_train

    built = run_student_train(sstate, _cfg(epochs=1, mel_cache=True, run="builds"))
    found = run_student_train(sstate, _cfg(epochs=1, mel_cache=True, run="finds"))
    assert built.steps == found.steps
    a = json.loads((sstate.run_dir("builds") / "latest" / "meta.json").read_text())["losses"]
    b = json.loads((sstate.run_dir("finds") / "latest" / "meta.json").read_text())["losses"]
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
