#!/usr/bin/env python
"""Parity of ``musiccli.encoders.musicnn_torch`` against the original TensorFlow musicnn.

TensorFlow and librosa must not enter the main environment, so the check runs in
two steps that talk through an ``.npz`` file:

``tf``       (run in a TF env: tensorflow 2.x, librosa, ``musicnn`` installed --no-deps)
             renders deterministic synthetic audio, runs musicnn's own
             ``extractor.extractor`` (librosa mel + TF graph + checkpoint restore) on it
             and saves waveforms, librosa log-mel patches, tag probabilities and
             200-d penultimate features.
``compare``  (main env, torch) recomputes everything with the PyTorch port and checks
             max abs diff <= 1e-3 for embeddings and tags. ``--write-fixture`` also
             stores the small reference used by ``tests/test_musicnn.py``.
(default)    does both: the TF step runs under ``$MTX_TF_PYTHON`` when set, else in this
             interpreter if it has TensorFlow; otherwise the script says so and exits 0.

Example::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install "tensorflow-cpu==2.15.*" librosa soundfile
    /tmp/tfenv/bin/pip install --no-deps musicnn
    MTX_TF_PYTHON=/tmp/tfenv/bin/python python benchmarks/musicnn_parity.py

The musicnn wheel ships no example audio, so only synthetic clips are used.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SR = 16000
MODELS = ("MSD_musicnn", "MTT_musicnn")
TOLERANCE = 1e-3
FIXTURE_CLIP = "fixture_3s"


# ----------------------------------------------------------------------------- audio


def _notes(rng: np.random.Generator, seconds: float, note_len: float, amp: float) -> np.ndarray:
    """A melody of harmonic notes (random MIDI pitches) with attack/decay envelopes."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    out = np.zeros(n)
    step = int(note_len * SR)
    for start in range(0, n, step):
        f0 = 440.0 * 2 ** ((rng.integers(40, 80) - 69) / 12)
        seg = slice(start, min(n, start + step))
        tt = t[seg] - t[start]
        env = np.minimum(1.0, tt / 0.01) * np.exp(-3.0 * tt)
        for h in range(1, 6):
            out[seg] += amp / h * env * np.sin(2 * np.pi * f0 * h * tt + rng.uniform(0, 2 * np.pi))
    return out


def _drums(rng: np.random.Generator, seconds: float, period: float, amp: float) -> np.ndarray:
    """Decaying noise bursts plus a pitched kick every ``period`` seconds."""
    n = int(seconds * SR)
    out = np.zeros(n)
    hit = int(0.15 * SR)
    tt = np.arange(hit) / SR
    for start in range(0, n - hit, int(period * SR)):
        burst = rng.standard_normal(hit) * np.exp(-tt / 0.03)
        kick = np.sin(2 * np.pi * (60 + 100 * np.exp(-tt / 0.02)) * tt) * np.exp(-tt / 0.08)
        out[start : start + hit] += amp * (0.5 * burst + kick)
    return out


def make_clips() -> dict[str, np.ndarray]:
    """Deterministic test audio at 16 kHz, float32 in [-1, 1]."""
    clips: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(1234)
    n = 10 * SR
    t = np.arange(n) / SR
    tones = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((220.0, 0.3), (330.0, 0.2), (587.3, 0.1), (1760.0, 0.05)))
    x = tones + 0.05 * rng.standard_normal(n)
    clips["tones_noise_10s"] = x / np.abs(x).max() * 0.8

    rng = np.random.default_rng(5678)
    chirp = 0.2 * np.sin(2 * np.pi * (100 * t + 350 * t**2))  # 100 Hz -> 7.1 kHz sweep
    x = _notes(rng, 10, 0.25, 0.3) + _drums(rng, 10, 0.5, 0.6) + chirp + 0.01 * rng.standard_normal(n)
    clips["music_like_10s"] = x / np.abs(x).max() * 0.9
    clips["quiet_music_like_10s"] = clips["music_like_10s"] * 0.01  # low level: float16 mel underflow

    rng = np.random.default_rng(42)
    x = _notes(rng, 3, 0.2, 0.3) + _drums(rng, 3, 0.375, 0.5) + 0.005 * rng.standard_normal(3 * SR)
    x = x / np.abs(x).max() * 0.8
    # Quantised to 16-bit so the fixture can store it exactly as int16.
    clips[FIXTURE_CLIP] = np.round(x * 32767) / 32768
    return {k: v.astype(np.float32) for k, v in clips.items()}


# ----------------------------------------------------------------------------- TF step


def run_tf(out: Path) -> None:
    """Reference outputs from the original musicnn (TF + librosa). Needs a TF env."""
    import librosa
    import soundfile as sf
    import tensorflow as tf
    from musicnn import extractor as mx  # noqa: I001 - imports TF, disables eager mode

    arrays: dict[str, np.ndarray] = {
        "meta_tf_version": np.array(tf.__version__),
        "meta_librosa_version": np.array(librosa.__version__),
        "meta_numpy_version": np.array(np.__version__),
        "meta_librosa_mel_fb": librosa.filters.mel(sr=SR, n_fft=512, n_mels=96),
    }
    n_frames = librosa.time_to_frames(3, sr=SR, n_fft=512, hop_length=256) + 1
    with tempfile.TemporaryDirectory() as tmp:
        for name, wave in make_clips().items():
            path = os.path.join(tmp, f"{name}.wav")
            sf.write(path, wave, SR, subtype="FLOAT")  # exact float32 round trip
            overlap_s = False if name == FIXTURE_CLIP else 1  # 1 s hop: patches off the start
            overlap = n_frames  # extractor()'s frame hop for input_overlap=False
            if overlap_s:
                overlap = librosa.time_to_frames(overlap_s, sr=SR, n_fft=512, hop_length=256)
            batch, _ = mx.batch_data(path, n_frames, overlap)
            arrays[f"{name}__wave"] = wave
            arrays[f"{name}__logmel"] = batch.astype(np.float32)
            arrays[f"{name}__hop_frames"] = np.array(overlap)
            for model in MODELS:
                taggram, _labels, feats = mx.extractor(
                    path, model=model, input_length=3, input_overlap=overlap_s, extract_features=True
                )
                # musicnn 0.1.0's extractor() returns the *first* patch's penultimate for
                # every patch (its batch loop concatenates a stale variable), so the
                # features come from a direct session on the same graph and checkpoint;
                # extractor()'s tags and first-patch features cross-check that session.
                tags, emb = _tf_session_outputs(mx, model, batch)
                if not np.allclose(tags, taggram, atol=1e-6, rtol=0) or not np.allclose(
                    emb[0], np.asarray(feats["penultimate"]).reshape(-1, emb.shape[1])[0], atol=1e-6, rtol=0
                ):
                    raise RuntimeError(f"direct TF session disagrees with musicnn.extractor on {name}/{model}")
                arrays[f"{name}__{model}__tags"] = tags
                arrays[f"{name}__{model}__penultimate"] = emb
    np.savez_compressed(out, **arrays)
    print(f"TF reference written to {out} (tensorflow {tf.__version__}, librosa {librosa.__version__})")


def _tf_session_outputs(mx: Any, model: str, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sigmoid tags, penultimate) of musicnn's TF graph for log-mel patches ``batch``.

    Builds the graph exactly as ``extractor.extractor`` does but restores without its
    blanket ``except`` (which would silently leave random weights) and feeds one patch
    per run like musicnn's BATCH_SIZE = 1.
    """
    import tensorflow as tf

    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, batch.shape[1], batch.shape[2]])
        is_training = tf.compat.v1.placeholder(tf.bool)
        outs = mx.models.define_model(x, is_training, model, 50)
        y, penultimate = tf.nn.sigmoid(outs[0]), outs[-1]
    ckpt = os.path.join(os.path.dirname(mx.__file__), model, "")
    with tf.compat.v1.Session() as sess:
        tf.compat.v1.train.Saver().restore(sess, ckpt)
        res = [
            sess.run([y, penultimate], feed_dict={x: batch[i : i + 1], is_training: False})
            for i in range(len(batch))
        ]
    tags = np.concatenate([r[0] for r in res]).astype(np.float32)
    emb = np.concatenate([r[1] for r in res]).astype(np.float32)
    return tags, emb


# ----------------------------------------------------------------------------- compare step


def _import_port():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from musiccli.encoders import musicnn_torch

    return musicnn_torch


def run_compare(ref_path: Path, cache_dir: Path | None, fixture: Path | None) -> int:
    import torch

    mt = _import_port()
    ref = np.load(ref_path)
    clips = sorted({k.split("__")[0] for k in ref.files if not k.startswith("meta_")})
    print(f"reference: tensorflow {ref['meta_tf_version']}, librosa {ref['meta_librosa_version']}")
    worst = {"embedding": 0.0, "tags": 0.0}
    failures: list[str] = []
    fb_diff = float(np.abs(mt.mel_filterbank() - ref["meta_librosa_mel_fb"]).max())
    print(f"mel filterbank vs librosa.filters.mel: max abs diff {fb_diff:.2e}")
    if fb_diff > 1e-6:
        failures.append("mel filterbank")
    front = mt.LogMelFrontend()
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in MODELS:
            model = mt.load_musicnn(model_name, cache_dir or Path(tmp))

            def emb_tags(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                probs, penultimate = model(patches)  # noqa: B023 - used within this iteration
                return penultimate, probs

            print(f"\n== {model_name}")
            print(f"{'clip':22s} {'path':16s} {'patches':>7s} {'emb max|d|':>11s} {'tags max|d|':>11s}")
            for clip in clips:
                wave = torch.from_numpy(ref[f"{clip}__wave"])
                tf_logmel = torch.from_numpy(ref[f"{clip}__logmel"])
                hop = int(ref[f"{clip}__hop_frames"])
                tf_emb = ref[f"{clip}__{model_name}__penultimate"]
                tf_tags = ref[f"{clip}__{model_name}__tags"]
                starts = [p * hop * mt.FFT_HOP for p in range(len(tf_logmel))]
                with torch.no_grad():
                    ours_logmel = mt.musicnn_patches(front(wave)[0], hop)
                    windows = torch.stack([_pad_to(wave[s : s + mt.WINDOW_SAMPLES], mt.WINDOW_SAMPLES) for s in starts])
                    padded = torch.nn.functional.pad(wave, (mt.CONTEXT_SAMPLES, 0))  # zeros before the file
                    context = torch.stack([padded[s : s + mt.CONTEXT_SAMPLES] for s in starts])
                    # (label, outputs, gated): gated paths must be within TOLERANCE.
                    results = [
                        # TF's own librosa patches through our network: architecture + weights.
                        ("model(tf mel)", emb_tags(tf_logmel), True),
                        # Whole-file torch mel cut like batch_data: the full musicnn pipeline.
                        ("full-file", emb_tags(ours_logmel), True),
                        # 3 s windows + the 256 samples before each: identical framing.
                        ("3s win+context", model.embed_audio(windows, context), True),
                        # 3 s windows alone: frame 0 sees padding instead of the preceding
                        # audio, so only the window at 0 is framed identically.
                        ("3s windows", model.embed_audio(windows), False),
                        ("3s window @0", model.embed_audio(windows[:1]), True),
                    ]
                mel_diff = (ours_logmel - tf_logmel).abs().max().item()
                print(f"{clip:22s} {'log-mel':16s} {len(tf_logmel):7d} {mel_diff:11.2e}")
                for label, (emb, tags), gated in results:
                    n = len(emb)
                    d_emb = float(np.abs(emb.numpy() - tf_emb[:n]).max())
                    d_tags = float(np.abs(tags.numpy() - tf_tags[:n]).max())
                    note = "" if gated else "  (not gated)"
                    print(f"{'':22s} {label:16s} {n:7d} {d_emb:11.2e} {d_tags:11.2e}{note}")
                    if gated:
                        worst["embedding"] = max(worst["embedding"], d_emb)
                        worst["tags"] = max(worst["tags"], d_tags)
                        if d_emb > TOLERANCE or d_tags > TOLERANCE:
                            failures.append(f"{model_name}/{clip}/{label}")
    print(f"\nmax abs diff (gated paths): embedding {worst['embedding']:.2e}, tags {worst['tags']:.2e}")
    if failures:
        print(f"FAIL (> {TOLERANCE}): {', '.join(failures)}")
        return 1
    print(f"PASS: all within {TOLERANCE}")
    if fixture is not None:
        _write_fixture(ref, fixture)
    return 0


def _pad_to(x, length: int):  # type: ignore[no-untyped-def]
    """Zero-pad a 1-D tensor to ``length`` (a window running past the end of a clip)."""
    import torch

    return torch.nn.functional.pad(x, (0, length - x.shape[0])) if x.shape[0] < length else x


def _write_fixture(ref: np.lib.npyio.NpzFile, path: Path) -> None:
    c = FIXTURE_CLIP
    wave = ref[f"{c}__wave"]
    arrays = {
        "wave_int16": np.round(wave * 32768).astype(np.int16),
        "logmel": ref[f"{c}__logmel"].astype(np.float32),  # librosa's patch [1, 187, 96]
        "tf_version": ref["meta_tf_version"],
        "librosa_version": ref["meta_librosa_version"],
    }
    assert np.array_equal(arrays["wave_int16"].astype(np.float32) / 32768, wave)
    for model in MODELS:
        arrays[f"{model}__penultimate"] = ref[f"{c}__{model}__penultimate"].reshape(1, -1)
        arrays[f"{model}__tags"] = ref[f"{c}__{model}__tags"].reshape(1, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"fixture written to {path} ({path.stat().st_size} bytes)")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    p_tf = sub.add_parser("tf", help="write the TF reference npz (run in the TF env)")
    p_tf.add_argument("--out", type=Path, required=True)
    p_cmp = sub.add_parser("compare", help="compare the torch port against a TF reference npz")
    p_cmp.add_argument("--ref", type=Path, required=True)
    for p in (p_cmp, parser):
        p.add_argument("--cache-dir", type=Path, default=None, help="where converted weights go (default: temp)")
        p.add_argument("--write-fixture", type=Path, default=None, help="also write the test fixture npz here")
    parser.add_argument("--keep-ref", type=Path, default=None, help="keep the TF reference npz here")
    args = parser.parse_args(argv)

    if args.cmd == "tf":
        run_tf(args.out)
        return 0
    if args.cmd == "compare":
        return run_compare(args.ref, args.cache_dir, args.write_fixture)

    tf_python = os.environ.get("MTX_TF_PYTHON")
    with tempfile.TemporaryDirectory() as tmp:
        ref = args.keep_ref or Path(tmp) / "musicnn_tf_reference.npz"
        if tf_python:
            subprocess.run([tf_python, str(Path(__file__).resolve()), "tf", "--out", str(ref)], check=True)
        elif importlib.util.find_spec("tensorflow") is not None:
            run_tf(ref)
        else:
            print(
                "SKIP: TensorFlow is not available here; set MTX_TF_PYTHON to a Python that has "
                "tensorflow, librosa and musicnn (see this script's docstring)"
            )
            return 0
        return run_compare(ref, args.cache_dir, args.write_fixture)


if __name__ == "__main__":
    sys.exit(main())
