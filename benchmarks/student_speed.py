#!/usr/bin/env python
"""CPU ms per 30 s clip: the student music ONNX (mel included) against MusiCNN (PyTorch), same run.

``student-onnx``   NumPy log-mel computed from ``preprocessing.json`` (what a client does: ``ClientLogMel``)
                   + onnxruntime (``client_session``: ORT_ENABLE_ALL) on ``student_music_encoder.onnx``:
                   one [1, 1, 128, T] input per 30 s crop.
``*-library``      throughput when embedding many clips: the mel of the next clip (one thread) is computed
                   while onnxruntime (one thread) runs the current one; wall time / clips.
``student-torch``  the training front end (``LogMel``, torch STFT) + the PyTorch music tower.
``musicnn``        ``MusiCNN`` in PyTorch with its own log-mel, ten 3 s windows per 30 s clip
                   (its native rate, 16 kHz), as ``mtx embed --audio-encoder musicnn`` runs it.

Resampling and decoding are left out of all three (the clips are synthesised at each model's rate).
Without ``--onnx-dir`` a default-architecture student (3 blocks 32/64/128, 256-d; speed does not depend on
the weights) is exported into a temporary folder. Interleaved runs, median over ``--clips`` x ``--repeats``.

Example::

    python benchmarks/student_speed.py --threads 2 --clips 5 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CLIP_S = 30.0


def synth_clip(rng: np.random.Generator, sr: int, seconds: float = CLIP_S) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    pad = sum(np.sin(2 * np.pi * root * r * t) for r in (1.0, 1.26, 1.5, 2.0)) * 0.05
    beat = (t * rng.uniform(70, 180) / 60.0) % 1.0
    kick = np.sin(2 * np.pi * 55 * beat) * np.exp(-beat * 25) * 0.4
    return (pad + kick + rng.standard_normal(len(t)) * 0.005).astype(np.float32)


def default_export(out: Path) -> Path:
    from musiccli.encoders.student import StudentConfig, StudentModel, train_tokenizer
    from musiccli.export_student import PREPROCESSING, _export_graphs
    from musiccli.state import atomic_write_json

    tok = train_tokenizer(["a calm piano piece", "dark metal"], 64, 64)
    model = StudentModel(StudentConfig(vocab_size=tok.get_vocab_size()), tok).eval()
    _export_graphs(model, out, 17)
    atomic_write_json(out / PREPROCESSING, model.student_config.preprocessing())
    model.save_pretrained(out / "checkpoint")
    return out


def pipelined(sess, mel, clips: list[np.ndarray]) -> float:
    """ms per clip over ``clips``: clip i+1's features computed in a thread while clip i runs."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(mel, clips[0])
        for i in range(len(clips)):
            feats = nxt.result()
            if i + 1 < len(clips):
                nxt = pool.submit(mel, clips[i + 1])
            sess.run(["music_embedding"], {"mel_spectrogram": feats})
    return (time.perf_counter() - start) * 1000.0 / len(clips)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clips", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--onnx-dir", type=Path, default=None, help="an export's onnx/ folder (default: a fresh "
                                                                 "default-architecture student)")
    ap.add_argument("--musicnn-cache", type=Path, default=Path(tempfile.gettempdir()) / "musicnn_speed_cache",
                    help="where the converted MusiCNN weights are cached")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime as ort

    from musiccli.encoders import musicnn_torch as mt
    from musiccli.encoders.student import LogMel, StudentModel
    from musiccli.export_student import MUSIC_ONNX, PREPROCESSING, ClientLogMel, client_session

    tmp = tempfile.TemporaryDirectory(prefix="student_speed_")
    onnx_dir = args.onnx_dir or default_export(Path(tmp.name))
    pre = json.loads((onnx_dir / PREPROCESSING).read_text())
    mel = ClientLogMel(pre, fft_workers=args.threads)
    rng = np.random.default_rng(0)
    sr = int(pre["sample_rate"])
    sess = client_session(onnx_dir / MUSIC_ONNX, args.threads)
    ckpt = onnx_dir / "checkpoint" if (onnx_dir / "checkpoint").exists() else onnx_dir.parent / "hf"
    student = StudentModel.from_pretrained(ckpt) if ckpt.exists() else None
    front = LogMel(student.student_config) if student is not None else None
    musicnn = mt.load_musicnn("MSD_musicnn", args.musicnn_cache).eval()

    clips48 = [synth_clip(rng, sr) for _ in range(args.clips)]
    clips16 = [synth_clip(rng, mt.SAMPLE_RATE) for _ in range(args.clips)]
    win = mt.WINDOW_SAMPLES

    def student_onnx(wave: np.ndarray) -> None:
        sess.run(["music_embedding"], {"mel_spectrogram": mel(wave)})

    def student_torch(wave: np.ndarray) -> None:
        with torch.inference_mode():
            student.music(front(torch.from_numpy(wave)[None]))

    def musicnn_clip(wave: np.ndarray) -> None:
        windows = torch.from_numpy(np.stack([wave[s:s + win] for s in range(0, len(wave) - win + 1, win)]))
        with torch.inference_mode():
            musicnn(musicnn.logmel(windows)[:, :mt.N_FRAMES])

    systems = {"student-onnx": (student_onnx, clips48), "musicnn": (musicnn_clip, clips16)}
    if student is not None:
        systems["student-torch"] = (student_torch, clips48)
    for fn, clips in systems.values():   # warm-up
        fn(clips[0])
    times: dict[str, list[float]] = {k: [] for k in systems}
    for _ in range(args.repeats):
        for i in range(args.clips):
            for name, (fn, clips) in systems.items():   # interleaved: load from others hits all alike
                times[name].append(timed(lambda: fn(clips[i])))
    mel_ms = statistics.median(timed(lambda: mel(c)) for c in clips48 for _ in range(args.repeats))
    library = {}
    if args.threads >= 2:
        mel1 = ClientLogMel(pre, fft_workers=1)
        one = client_session(onnx_dir / MUSIC_ONNX, 1)
        library["student-library"] = statistics.median(pipelined(one, mel1, clips48) for _ in range(args.repeats))
    sizes = {p.name: p.stat().st_size / 1e6 for p in onnx_dir.glob("*.onnx")}
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}, {args.clips} clips x {args.repeats} repeats of {CLIP_S:g} s")
    print("ONNX sizes: " + ", ".join(f"{k} {v:.2f} MB" for k, v in sorted(sizes.items())))
    for name, ts in times.items():
        print(f"{name:14s} {statistics.median(ts):9.1f} ms per 30 s clip (min {min(ts):.1f})")
    print(f"{'(numpy mel)':14s} {mel_ms:9.1f} ms of the student-onnx time")
    for name, ms in library.items():
        print(f"{name:14s} {ms:9.1f} ms per 30 s clip (mel and network overlapped, one thread each)")
    per_clip = {**{k: statistics.median(v) for k, v in times.items()}, **library}
    for name in ("student-onnx", *library):
        ms = per_clip[name]
        print(f"{name} is {per_clip['musicnn'] / ms:.2f}x the speed of musicnn; target <= 50 ms "
              f"per clip: {'met' if ms <= 50 else 'not met'} ({ms:.1f} ms)")
    print(f"CUDA: {'available' if torch.cuda.is_available() else 'not available on this machine'}")


if __name__ == "__main__":
    main()
