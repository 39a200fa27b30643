"""The student objective: tiny two-tower runs on tiny synth audio with tiny teachers (dsp + a small store).

train -> export -> onnxruntime parity (and our own ORT run on the exported files) -> embed a folder -> search;
exact resume; the mel front end against preprocessing.json recomputed in NumPy; size limit; refusals.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

TINY = ["--crop", "1", "--student-channels", "4", "--vocab-size", "200", "--batch-size", "6",
        "--num-workers", "0", "--device", "cpu", "--precision", "fp32"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synth clips (2 s), a dsp store and a tiny 8-d teacher store, built once per module."""
    from musiccli import store as store_mod
    from musiccli.download import DownloadRequest, run_download
    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.manifest import read_manifest
    from musiccli.sources.base import DownloadConfig
    from musiccli.state import StateDir
    from musiccli.unify import UnifyConfig, run_unify

    root = tmp_path_factory.mktemp("student-base")
    state = StateDir.resolve(root)
    run_download(state, DownloadRequest(DownloadConfig(source="synth", n=24, duration=2.0, sample_rate=16000,
                                                       seed=0, workers=1)))
    run_unify(state, UnifyConfig(datasets=["synth"], name="lib"))
    run_embed(state, EmbedConfig(audio_encoder="dsp", manifest="lib", num_workers=0, device="cpu"))
    ids = [r.id for r in read_manifest(state.manifest_path("lib"))]
    rng = np.random.default_rng(0)
    path = state.embeddings_path("tiny", "lib")
    store_mod.write_part(path, 0, ids, rng.normal(1.0, 2.0, (len(ids), 8)).astype(np.float32))
    store_mod.assemble(path, 8, "float32", {"encoder": "tiny", "dim": 8, "aggregation": "mean"}, 1)
    return root


@pytest.fixture()
def sstate(base_state: Path, state_dir: Path):
    from musiccli.state import StateDir

    shutil.copytree(base_state, state_dir, dirs_exist_ok=True)
    return StateDir.resolve(state_dir)


def _cfg(**kw):
    from musiccli.families.student.train import StudentTrainConfig

    base = dict(manifest="lib", run="s", teachers="dsp:0.4,tiny:0.3", epochs=2, batch_size=6, crop_s=1.0,
                base_channels=4, dim=16, text_width=16, vocab_size=200, num_workers=0, device="cpu",
                precision="fp32")
    base.update(kw)
    return StudentTrainConfig(**base)


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_train_export_parity_embed_folder_search(cli, sstate, tmp_path: Path):
    r = cli("train", "--objective", "student", "--teachers", "dsp:0.4,tiny:0.3", "--epochs", "1", "--run", "s1",
            *TINY)
    assert r.exit_code == 0, r.output
    assert "dsp cos" in r.output and "tiny cos" in r.output
    run_dir = sstate.run_dir("s1")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["objective"] == "student" and set(info["teachers"]) == {"dsp", "tiny"}
    # the student's defaults filled in by TrainConfig.resolved(), and main's provenance record
    assert (info["config"]["lr"], info["config"]["weight_decay"]) == (1e-3, 1e-4)
    from musiccli.manifest import read_manifest

    train_ids = {r.id for r in read_manifest(sstate.manifest_path("lib")) if r.split == "train"}
    assert info["training_data"]["manifest"] == "lib" and info["training_data"]["tracks"] == len(train_ids)
    losses = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in losses if "train_loss" in e]
    assert steps and all(e["train_loss"] > 0 and "distill_dsp" in e and "infonce" in e for e in steps)

    r = cli("export", "--run", "s1")
    assert r.exit_code == 0, r.output
    assert "ONNX sizes" in r.output
    onnx_dir = sstate.export_dir("s1") / "best" / "onnx"
    meta = json.loads((onnx_dir / "meta.json").read_text())
    assert max(meta["parity"].values()) <= 1e-4 and max(meta["client"].values()) <= 1e-4
    pre = json.loads((onnx_dir / "preprocessing.json").read_text())
    assert (pre["sample_rate"], pre["n_fft"], pre["hop_length"], pre["n_mels"]) == (48000, 2048, 512, 128)

    # Our own onnxruntime run on the exported files, against the trained PyTorch checkpoint.
    import onnxruntime as ort
    import torch
    from tokenizers import Tokenizer

    from musiccli.families.student.model import StudentModel

    model = StudentModel.from_pretrained(run_dir / "best")
    music = ort.InferenceSession(str(onnx_dir / "student_music_encoder.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(onnx_dir / "student_text_encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in music.get_inputs()] == ["mel_spectrogram"]
    assert [o.name for o in text.get_outputs()] == ["text_embedding"]
    for frames in (16, 77):
        mel = np.random.default_rng(frames).random((2, 1, 128, frames), dtype=np.float32)
        got = music.run(["music_embedding"], {"mel_spectrogram": mel})[0]
        with torch.inference_mode():
            ref = model.music(torch.from_numpy(mel)).numpy()
        assert got.shape == (2, 256) and np.abs(got - ref).max() <= 1e-4
    tok = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    enc = tok.encode_batch(["calm piano", "dark heavy metal with distorted guitars"])
    got = text.run(None, {"input_ids": np.array([e.ids for e in enc], np.int64),
                          "attention_mask": np.array([e.attention_mask for e in enc], np.int64)})[0]
    assert np.abs(got - model.encode(["calm piano", "dark heavy metal with distorted guitars"])).max() <= 1e-4

    # Embed a folder of music with the student and search it with the student's text tower.
    folder = tmp_path / "music"
    for i, f in enumerate(sorted((sstate.dataset_dir("synth") / "audio").rglob("*.flac"))[:5]):
        (folder / f"artist{i}").mkdir(parents=True)
        shutil.copy(f, folder / f"artist{i}" / f"0{i} song {i}.flac")
    assert cli("download", "folder", "--path", str(folder)).exit_code == 0
    assert cli("unify", "--datasets", "folder", "--name", "mine").exit_code == 0
    r = cli("embed", "--audio-encoder", "student", "--model", "s1", "--manifest", "mine", "--num-workers", "0")
    assert r.exit_code == 0, r.output
    from musiccli.store import EmbeddingStore

    with EmbeddingStore(sstate.embeddings_path("student", "mine")) as st:
        assert len(st) == 5 and st.dim == 256 and st.attrs["model_id"] == "s1"
    r = cli("search", "calm piano", "--run", "s1", "--manifest", "mine", "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    # The scores are the student text tower against the stored student vectors.
    with EmbeddingStore(sstate.embeddings_path("student", "mine")) as st:
        vecs = model.audio_for_retrieval(st.get([h["id"] for h in hits]))
    np.testing.assert_allclose([h["score"] for h in hits], vecs @ model.encode(["calm piano"])[0], atol=1e-5)

    r = cli("eval", "--run", "s1", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert set(rep["teacher_cosine"]) == {"dsp", "tiny"} and {"model", "random"} <= set(rep["results"])


@pytest.mark.slow
def test_student_encoder_runs_onnx_on_cpu_and_agrees_with_torch(cli, sstate):
    from musiccli.store import EmbeddingStore
    from musiccli.families.student.train import run_student_train

    run_student_train(sstate, _cfg(epochs=1))
    vecs = {}
    for rt in ("torch", "onnx"):
        r = cli("embed", "--audio-encoder", "student", "--model", "s", "--manifest", "lib", "--num-workers", "0",
                "-O", f"runtime={rt}", "--force")
        assert r.exit_code == 0, r.output
        with EmbeddingStore(sstate.embeddings_path("student", "lib")) as st:
            assert st.attrs["runtime"] == rt
            vecs[rt] = st.get(st.ids)
    np.testing.assert_allclose(vecs["onnx"], vecs["torch"], atol=1e-4)
    assert list((sstate.root / "models" / "student-onnx").glob("*/student_music_encoder.onnx"))
    # auto on the CPU is the ONNX path; an unknown runtime is one line.
    r = cli("embed", "--audio-encoder", "student", "--model", "s", "--manifest", "lib", "--num-workers", "0",
            "--force")
    assert r.exit_code == 0, r.output
    with EmbeddingStore(sstate.embeddings_path("student", "lib")) as st:
        assert st.attrs["runtime"] == "onnx"
    r = cli("embed", "--audio-encoder", "student", "--model", "s", "--manifest", "lib", "-O", "runtime=tpu")
    assert r.exit_code == 1 and "unknown student runtime" in r.output.lower(), r.output


def test_missing_teacher_store_is_refused_with_the_embed_command(cli, sstate):
    r = cli("train", "--objective", "student", "--teachers", "dsp:0.4,musicnn:0.3", *TINY)
    assert r.exit_code == 1
    assert "mtx embed --audio-encoder musicnn --manifest lib" in r.output
    assert not sstate.run_dir("student-lib").exists()


def test_align_still_needs_an_audio_encoder(cli, sstate):
    r = cli("train")
    assert r.exit_code == 1 and "--audio-encoder is required" in r.output


# --------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_gives_the_same_losses(sstate, tmp_path: Path):
    from progress_doubles import StopAfter

    from musiccli.errors import Interrupted
    from musiccli.state import Resume, StateDir
    from musiccli.families.student.train import run_student_train

    other = StateDir.resolve(tmp_path / "other")
    shutil.copytree(sstate.root, other.root)
    full = run_student_train(other, _cfg(text_encoder="transformer", text_layers=1, text_heads=2))
    with pytest.raises(Interrupted):
        run_student_train(sstate, _cfg(text_encoder="transformer", text_layers=1, text_heads=2), StopAfter(4))
    resumed = run_student_train(sstate, _cfg(text_encoder="transformer", text_layers=1, text_heads=2,
                                             resume=Resume.CONTINUE))
    assert resumed.steps == full.steps
    a = json.loads((other.run_dir("s") / "latest" / "meta.json").read_text())["losses"]
    b = json.loads((sstate.run_dir("s") / "latest" / "meta.json").read_text())["losses"]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert resumed.best_val_r10 == pytest.approx(full.best_val_r10)


def test_crops_are_seeded_per_epoch_and_index():
    from musiccli.families.student.frontend import take_crop
    from musiccli.families.student.train import _key

    wave = np.arange(1000, dtype=np.float32)
    a = take_crop(wave, 100, _key("crop", 0, 1, 5))
    assert np.array_equal(a, take_crop(wave, 100, _key("crop", 0, 1, 5)))
    starts = {int(take_crop(wave, 100, _key("crop", 0, e, 5))[0]) for e in range(20)}
    assert len(starts) > 10 and all(0 <= s <= 900 for s in starts)
    assert take_crop(wave, 100, None)[0] == 450                      # validation: the centre
    assert np.array_equal(take_crop(wave[:30], 100, 7)[:60], np.concatenate([wave[:30], wave[:30]]))


# --------------------------------------------------------------------------- front end
def test_mel_front_end_matches_preprocessing_json_in_numpy():
    import torch

    from musiccli.families.student.frontend import LogMel
    from musiccli.families.student.model import StudentConfig
    from musiccli.families.student.frontend import numpy_log_mel
    from musiccli.families.student.onnx import test_signal

    cfg = StudentConfig()
    pre = json.loads(json.dumps(cfg.preprocessing()))   # exactly what a client reads
    wave = test_signal(cfg.sample_rate, seconds=2.0)
    ours = LogMel(cfg)(torch.from_numpy(wave)[None]).numpy()
    ref = numpy_log_mel(wave, pre)
    assert ours.shape == ref.shape == (1, 1, 128, 1 + len(wave) // 512)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert ours.min() == pytest.approx(0.0) and ours.max() == pytest.approx(1.0)
    # A pure tone lands in the band whose centre is nearest to it (the HTK scale, 0..24 kHz).
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(48000) / 48000).astype(np.float32)
    mel = numpy_log_mel(tone, pre)[0, 0, :, 40]
    centres = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 24000 / 700), 130)[1:-1] / 2595) - 1)
    assert int(np.argmax(mel)) == int(np.argmin(np.abs(centres - 1000.0)))
    # Silence is all zeros, not NaN.
    assert not numpy_log_mel(np.zeros(4096, np.float32), pre).any()
    assert not LogMel(cfg)(torch.zeros(1, 4096)).any()


def _naive_log_mel(wave: np.ndarray, pre: dict) -> np.ndarray:
    """preprocessing.json read literally, one frame and one band at a time, in float64."""
    n, hop, n_mels, sr = pre["n_fft"], pre["hop_length"], pre["n_mels"], pre["sample_rate"]
    x = np.pad(wave.astype(np.float64), n // 2, mode="reflect")
    window = np.array([0.5 - 0.5 * np.cos(2 * np.pi * i / n) for i in range(n)])
    mel_of = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)   # noqa: E731
    pts = [700.0 * (10 ** (m / 2595.0) - 1) for m in np.linspace(mel_of(pre["fmin"]), mel_of(pre["fmax"]), n_mels + 2)]
    bins = [k * sr / n for k in range(n // 2 + 1)]
    out = np.zeros((n_mels, 1 + len(wave) // hop))
    for t in range(out.shape[1]):
        power = np.abs(np.fft.rfft(x[t * hop:t * hop + n] * window)) ** 2
        for m in range(n_mels):
            weights = [max(0.0, min((f - pts[m]) / (pts[m + 1] - pts[m]), (pts[m + 2] - f) / (pts[m + 2] - pts[m + 1])))
                       for f in bins]
            out[m, t] = float(np.dot(weights, power))
    db = 10 * np.log10(np.maximum(out, pre["log"]["amin"]))
    db = np.maximum(db - db.max(), -pre["log"]["top_db"])
    return (db - db.min()) / (db.max() - db.min())


def test_client_front_end_against_a_naive_reading_of_preprocessing_json(monkeypatch):
    import builtins

    from musiccli.families.student.model import StudentConfig
    from musiccli.families.student.frontend import ClientLogMel
    from musiccli.families.student.onnx import test_signal

    pre = json.loads(json.dumps(StudentConfig(n_mels=24, n_fft=256, hop=128, sample_rate=8000,
                                              fmax=4000.0).preprocessing()))
    wave = test_signal(8000, seconds=0.5)
    ref = _naive_log_mel(wave, pre)
    fast = ClientLogMel(pre)(wave)
    assert fast.shape == (1, 1, 24, ref.shape[1]) and fast.dtype == np.float32
    np.testing.assert_allclose(fast[0, 0], ref, atol=2e-5)
    # Without SciPy the client falls back to NumPy's FFT: the same features.
    real_import = builtins.__import__

    def no_scipy(name, *a, **kw):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    np.testing.assert_allclose(ClientLogMel(pre)(wave), fast, atol=1e-6)


# --------------------------------------------------------------------------- sizes / refusals
def test_size_limit_is_enforced_unless_allow_large(sstate, monkeypatch):
    from musiccli.families.student import onnx as export_student
    from musiccli.errors import MtxError
    from musiccli.export import ExportConfig, run_export
    from musiccli.state import Resume
    from musiccli.families.student.train import run_student_train

    run_student_train(sstate, _cfg(epochs=1))
    monkeypatch.setitem(export_student.LIMITS_MB, "text", 0.001)
    with pytest.raises(MtxError, match="too large.*text") as e:
        run_export(sstate, ExportConfig(run="s", formats=("onnx",)))
    assert "--allow-large" in e.value.hint
    assert not (sstate.export_dir("s") / "best" / "onnx").exists()
    res = run_export(sstate, ExportConfig(run="s", formats=("onnx",), allow_large=True, resume=Resume.FORCE))
    assert res.details["sizes_mb"]["text"] > 0.001 and (sstate.export_dir("s") / "best" / "onnx" / "tokenizer.json").exists()


def test_default_student_fits_the_size_budget(tmp_path: Path):
    """The default architectures (both text towers) export under 5 MB / 8 MB."""
    from musiccli.families.student.model import StudentConfig, StudentModel, train_tokenizer
    from musiccli.families.student.onnx import LIMITS_MB, _export_graphs, sizes_mb

    captions = [f"word{i} piece{i * 7} track" for i in range(4000)]   # enough distinct words for 3072 pieces
    tok = train_tokenizer(captions, 3072, 64)
    assert tok.get_vocab_size() == 3072
    for encoder in ("mean", "transformer"):
        out = tmp_path / encoder
        out.mkdir()
        model = StudentModel(StudentConfig(vocab_size=3072, text_encoder=encoder, teachers={"musicnn": 200}), tok)
        _export_graphs(model.eval(), out, 17)
        sizes = sizes_mb(out)
        assert sizes["music"] <= LIMITS_MB["music"] and sizes["text"] <= LIMITS_MB["text"], (encoder, sizes)


@pytest.mark.parametrize("text, message", [
    ("", "no teachers"),
    ("dsp:abc", "invalid teacher weight"),
    ("dsp:-1", "invalid teacher"),
    ("dsp:0.3,dsp:0.4", "invalid teacher"),
])
def test_bad_teacher_lists(text, message):
    from musiccli.errors import MtxError
    from musiccli.families.student.train import parse_teachers

    with pytest.raises(MtxError, match=message):
        parse_teachers(text)


def test_teacher_parsing():
    from musiccli.families.student.train import parse_teachers

    assert parse_teachers("musicnn:0.3, clap:0.4") == {"musicnn": 0.3, "clap": 0.4}
    assert parse_teachers("dsp") == {"dsp": 1.0}


@pytest.mark.parametrize("args, message", [
    (["--distill-loss", "kl"], "unknown distillation loss"),
    (["--text-tower", "lstm"], "unknown student text encoder"),
    (["--objective", "nope"], "unknown objective"),
])
def test_bad_student_options(cli, sstate, args, message):
    r = cli("train", "--objective", "student", *TINY, *args)
    assert r.exit_code == 1 and message in r.output.lower(), r.output


@pytest.mark.parametrize("args, message", [
    (["--audio-encoder", "dsp", "--teachers", "dsp:1"], "--teachers only applies to --objective student"),
    (["--audio-encoder", "dsp", "--student-blocks", "4"], "--student-blocks only applies to --objective student"),
    (["--audio-encoder", "dsp", "--objective", "joint", "--crop", "3"], "--crop only applies"),
    (["--objective", "student", "--audio-encoder", "dsp"], "--audio-encoder does not apply to --objective student"),
    (["--objective", "student", "--loss", "infonce"], "--loss does not apply to --objective student"),
    (["--objective", "student", "--init-from", "x"], "--init-from does not apply"),
])
def test_flags_of_one_objective_are_refused_by_the_others(cli, sstate, args, message):
    r = cli("train", "--epochs", "1", "--device", "cpu", *args)
    assert r.exit_code == 1 and message in r.output, r.output
    assert not list(sstate.stages_dir.glob("train*"))


def test_objective_names_match_the_registry():
    from musiccli.cli.train import OBJECTIVE_NAMES
    from musiccli.families import OBJECTIVES

    assert set(OBJECTIVE_NAMES) == set(OBJECTIVES)


def test_student_encoder_needs_a_student_run(sstate):
    from musiccli.encoders import EncoderOptions, build_encoder
    from musiccli.errors import MtxError
    from musiccli.runtime import select_runtime

    with pytest.raises(MtxError, match="needs a trained student run"):
        build_encoder("student", EncoderOptions(cache_dir=sstate.root / "models"), select_runtime("cpu", "fp32"))
    with pytest.raises(MtxError, match="no student checkpoint"):
        build_encoder("student", EncoderOptions(model="nope", cache_dir=sstate.root / "models"),
                      select_runtime("cpu", "fp32"))


def test_unreadable_training_audio_is_one_clear_error(sstate):
    from musiccli.errors import MtxError
    from musiccli.manifest import read_manifest
    from musiccli.families.student.train import run_student_train

    victim = next(r for r in read_manifest(sstate.manifest_path("lib")) if r.split == "train")
    Path(victim.audio_path).unlink()
    with pytest.raises(MtxError, match="cannot read training audio.*missing audio file") as e:
        run_student_train(sstate, _cfg(epochs=1))
    assert "mtx verify" in e.value.hint


def test_vocab_size_below_the_captions_characters_is_refused(sstate):
    from musiccli.errors import MtxError
    from musiccli.families.student.train import run_student_train

    with pytest.raises(MtxError, match=r"--vocab-size 16 is smaller than the \d+ pieces") as e:
        run_student_train(sstate, _cfg(epochs=1, vocab_size=16))
    assert "--vocab-size" in e.value.hint and not sstate.run_dir("s").exists()


def test_every_eval_option_works_for_a_student_run(cli, sstate):
    """Zero-shot tables, prompts and plots, as for every family; `train --export` writes the torch-free files."""
    from musiccli.training import TrainConfig, run_train

    res = run_train(sstate, TrainConfig(objective="student", manifest="lib", run="zs", teachers="dsp:0.4,tiny:0.3",
                                        epochs=1, batch_size=6, crop=1.0, student_channels=4, vocab_size=200,
                                        num_workers=0, device="cpu", precision="fp32"))
    assert res.onnx is not None and Path(res.onnx).name == "student_text_encoder.onnx", res.onnx_note
    # the train split: the only one of these 24 clips that holds several styles
    r = cli("eval", "--run", "zs", "--split", "train", "--zero-shot", "style", "--prompt", "clap", "--device", "cpu",
            "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    zs = rep["zero_shot"]
    assert zs["prompt"] == "clap" and zs["templates"] == ["This audio is a {} song."]
    assert {"model", "random", "probe"} <= set(zs["fields"]["style"]["systems"])
    assert set(rep["teacher_cosine"]) == {"dsp", "tiny"} and rep["objective"] == "student"
    html = sstate.run_dir("zs") / "eval-train-best" / "report.html"
    assert html.exists() and "Zero-shot classification" in html.read_text()
