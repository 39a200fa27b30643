#!/usr/bin/env python
"""Embedding throughput of ``mtx embed`` versus a naive loop, in clips per second.

For each device (the CPU, and CUDA when available) the script measures, in the
same run and on the same synthetic clips:

``mtx embed``  ``musiccli.embed.run_embed``: decoding and resampling in DataLoader
               workers, large batches of windows across tracks, autocast precision
               of the runtime, chunked commits to HDF5 (all included in the time).
``naive``      one track at a time in the main process: decode + resample, cut
               windows, run that track's windows through the encoder in fp32,
               aggregate. No worker processes and no batching across tracks.

It prints both rates, their ratio, and the largest difference between the two
sets of vectors (a sanity check that both compute the same thing; expect float
rounding only in fp32, more under bf16/fp16).

Works for any registered encoder (``--encoder``, ``--model``), built with
``encoders.build_encoder(name, EncoderOptions(model=...), runtime)``.

Example::

    python benchmarks/embed_throughput.py                       # dsp, 64 x 30 s clips
    python benchmarks/embed_throughput.py --clips 16 --encoder mert --model m-a-p/MERT-v1-95M
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from musiccli.audio import decode_windows
from musiccli.embed import EmbedConfig, run_embed
from musiccli.encoders import EncoderOptions, aggregate, build_encoder, encoder_names, get_spec
from musiccli.manifest import Record, write_manifest
from musiccli.runtime import select_runtime
from musiccli.state import Resume, StateDir
from musiccli.store import EmbeddingStore


def synth_clip(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """A few seconds of 'music': a chord pad, a kick/hat pattern at a random tempo, some noise."""
    t = np.arange(int(seconds * sr)) / sr
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    pad = sum(np.sin(2 * np.pi * root * r * t) for r in (1.0, 1.26, 1.5, 2.0)) * 0.05
    bpm = rng.uniform(70, 180)
    beat = (t * bpm / 60.0) % 1.0
    kick = np.sin(2 * np.pi * 55 * beat) * np.exp(-beat * 25) * 0.4
    hats = rng.standard_normal(len(t)) * np.exp(-((t * bpm / 30.0) % 1.0) * 40) * 0.05
    return (pad + kick + hats + rng.standard_normal(len(t)) * 0.005).astype(np.float32)


def make_dataset(root: Path, n: int, seconds: float, sr: int) -> StateDir:
    rng = np.random.default_rng(0)
    audio = root / "audio"
    audio.mkdir(parents=True)
    records = []
    for i in range(n):
        path = audio / f"clip{i:04d}.wav"
        sf.write(path, synth_clip(rng, seconds, sr), sr)
        records.append(Record(id=f"clip{i:04d}", audio_path=str(path), caption="synthetic", duration=seconds))
    state = StateDir.resolve(root / "state")
    write_manifest(state.manifest_path("bench"), records)
    return state


def run_optimized(state: StateDir, args: argparse.Namespace, device: str) -> tuple[float, dict[str, np.ndarray]]:
    cfg = EmbedConfig(audio_encoder=args.encoder, manifest="bench", model=args.model, device=device,
                      precision=args.precision, batch_size=args.batch_size, num_workers=args.num_workers,
                      max_windows=args.max_windows, resume=Resume.FORCE)
    start = time.perf_counter()
    result = run_embed(state, cfg)
    seconds = time.perf_counter() - start
    with EmbeddingStore(result.path) as s:
        vectors = dict(zip(s.ids, s.rows(np.arange(len(s)))))
    return seconds, vectors


def run_naive(state: StateDir, args: argparse.Namespace, device: str) -> tuple[float, dict[str, np.ndarray]]:
    from musiccli.manifest import read_manifest

    spec = get_spec(args.encoder)
    runtime = select_runtime(device, "fp32")
    encoder = build_encoder(args.encoder, EncoderOptions(model=args.model), runtime)
    sr = spec.sample_rate
    window, hop = int(round(spec.window_s * sr)), int(round(spec.hop_s * sr))
    records = read_manifest(state.manifest_path("bench"))
    # Load weights and warm up outside the timed loop: the baseline gets a warm model, while the
    # mtx embed time includes everything (model load, worker start-up, HDF5 commits).
    encoder.embed_windows(torch.zeros(1, encoder.context_samples + window, device=runtime.device))
    out = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for r in records:
            # The same windows mtx embed cuts (the encoder's context, resampler and edge padding).
            windows = torch.from_numpy(decode_windows(
                r.audio_path, sr, window, hop, args.max_windows, context=encoder.context_samples,
                patch=encoder.patch_samples, tail=spec.tail, resampler=spec.resampler,
                edge_pad=spec.edge_pad)).to(runtime.device)
            out[r.id] = aggregate(encoder.embed_windows(windows).float().cpu().numpy(), spec.default_aggregation)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="dsp", help=f"registered encoder ({', '.join(encoder_names())})")
    p.add_argument("--model", default=None, help="model id or path (default: the encoder's)")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--source-rate", type=int, default=24000, help="sample rate of the generated files")
    p.add_argument("--batch-size", type=int, default=64, help="windows per encoder batch (mtx embed)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (mtx embed)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--devices", default=None, help="comma list, default: cpu plus cuda when available")
    p.add_argument("--keep", action="store_true", help="keep the temporary data set")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    get_spec(args.encoder)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    tmp = Path(tempfile.mkdtemp(prefix="mtx-bench-"))
    try:
        state = make_dataset(tmp, args.clips, args.seconds, args.source_rate)
        print(f"encoder {args.encoder}, {args.clips} clips x {args.seconds:g} s at {args.source_rate} Hz, "
              f"torch threads {torch.get_num_threads()}")
        print(f"{'device':8} {'method':10} {'seconds':>8} {'clips/s':>9}")
        for device in devices:
            naive_s, naive_v = run_naive(state, args, device)
            fast_s, fast_v = run_optimized(state, args, device)
            diff = max(float(np.abs(fast_v[k] - naive_v[k]).max()) for k in naive_v)
            print(f"{device:8} {'naive':10} {naive_s:8.2f} {args.clips / naive_s:9.1f}")
            print(f"{device:8} {'mtx embed':10} {fast_s:8.2f} {args.clips / fast_s:9.1f}")
            print(f"{device:8} speed-up x{naive_s / fast_s:.2f}   max |difference| {diff:.2e}")
    finally:
        if args.keep:
            print(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
