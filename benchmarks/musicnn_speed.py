#!/usr/bin/env python
"""MusiCNN CPU speed: the optimised forward versus the straightforward one, same run.

``naive``      the previous implementation, kept here: every front-end block as
               ``nn.Conv2d`` -> ReLU -> batch norm -> max over frequency on the full map.
``optimised``  ``MusiCNN.forward`` in eval mode: max over frequency before bias/ReLU/BN
               (sign-folded filters), temporal filters as one im2col + matmuls.

Both run on the same random log-mel windows with the real weights; the script prints
windows/s for each (median of ``--repeats`` timed runs), their ratio and the largest
difference between the two outputs. Then it times ``run_embed`` end to end on
``--clips`` synthetic 10 s clips, once with each forward, and prints clips/s.

Example::

    python benchmarks/musicnn_speed.py --threads 2 --batch 16 --clips 50
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from musiccli.encoders import musicnn_torch as mt


def naive_forward(model: mt.MusiCNN, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-optimisation ``MusiCNN.forward``: the literal TF graph, layer by layer."""
    x = model.input_bn(patches.unsqueeze(1))  # [B, 1, T, F]
    blocks = (model.timbral74, model.timbral77, model.temporal128, model.temporal64, model.temporal32)
    front = []
    for blk in blocks:
        z = F.conv2d(F.pad(x, (0, 0, *blk.time_pad)), blk.conv.weight, blk.conv.bias)
        front.append(blk.bn(F.relu(z)).amax(dim=3))
    front = torch.cat(front, dim=1)  # [B, 561, T]
    m1 = model.mid1(front)
    m2 = model.mid2(m1) + m1
    m3 = model.mid3(m2) + m2
    feats = torch.cat([front, m1, m2, m3], dim=1)
    pooled = torch.stack([feats.amax(dim=2), feats.mean(dim=2)], dim=2).flatten(1)
    penultimate = model.dense_bn(F.relu(model.dense(model.pool_bn(pooled))))
    return torch.sigmoid(model.out(penultimate)), penultimate


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_forward(model: mt.MusiCNN, batch: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    wave = torch.from_numpy(rng.standard_normal((batch, mt.WINDOW_SAMPLES)).astype(np.float32) * 0.1)
    with torch.inference_mode():
        patches = model.logmel(wave)[:, : mt.N_FRAMES]
        t_mel = median_time(lambda: model.logmel(wave), repeats)
        # Interleave the two so that load from other processes hits both alike.
        naive, fast = [], []
        for _ in range(repeats):
            naive.append(median_time(lambda: naive_forward(model, patches), 1))
            fast.append(median_time(lambda: model(patches), 1))
        t_naive, t_fast = statistics.median(naive), statistics.median(fast)
        p0, e0 = naive_forward(model, patches)
        p1, e1 = model(patches)
    diff = max((e0 - e1).abs().max().item(), (p0 - p1).abs().max().item())
    print(f"log-mel front end: {batch / t_mel:8.1f} windows/s")
    print(f"naive forward:     {batch / t_naive:8.1f} windows/s")
    print(f"optimised forward: {batch / t_fast:8.1f} windows/s")
    print(f"speed-up:          {t_naive / t_fast:8.2f}x   (max abs diff {diff:.2e})")


def synth_clip(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """A chord pad, a kick pattern at a random tempo and a little noise."""
    t = np.arange(int(seconds * sr)) / sr
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    pad = sum(np.sin(2 * np.pi * root * r * t) for r in (1.0, 1.26, 1.5, 2.0)) * 0.05
    beat = (t * rng.uniform(70, 180) / 60.0) % 1.0
    kick = np.sin(2 * np.pi * 55 * beat) * np.exp(-beat * 25) * 0.4
    return (pad + kick + rng.standard_normal(len(t)) * 0.005).astype(np.float32)


def bench_embed(n_clips: int, cache: Path, threads: int) -> None:
    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.manifest import Record, write_manifest
    from musiccli.state import Resume, StateDir

    with tempfile.TemporaryDirectory(prefix="musicnn_speed_") as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(1)
        records = []
        for i in range(n_clips):
            path = root / f"clip{i:03d}.wav"
            sf.write(path, synth_clip(rng, 10.0, mt.SAMPLE_RATE), mt.SAMPLE_RATE, subtype="PCM_16")
            records.append(Record(id=f"clip{i:03d}", audio_path=str(path), caption="synthetic", duration=10.0))
        state = StateDir.resolve(root / "state")
        write_manifest(state.manifest_path("bench"), records)
        models = state.root / "models" / "musicnn"
        models.mkdir(parents=True)
        for f in cache.glob("*.safetensors"):  # reuse a conversion: time the embedding only
            (models / f.name).symlink_to(f.resolve())
        cfg = EmbedConfig(audio_encoder="musicnn", num_workers=0, device="cpu", resume=Resume.FORCE)
        optimised = mt.MusiCNN.forward
        rates = {}
        for label, forward in (("naive", naive_forward), ("optimised", optimised)):
            mt.MusiCNN.forward = forward  # type: ignore[method-assign]
            try:
                torch.set_num_threads(threads)
                start = time.perf_counter()
                result = run_embed(state, cfg)
                rates[label] = n_clips / (time.perf_counter() - start)
            finally:
                mt.MusiCNN.forward = optimised  # type: ignore[method-assign]
            print(f"run_embed, {label:9s} forward: {rates[label]:6.2f} clips/s ({result.n_ok} clips of 10 s)")
        print(f"end-to-end speed-up:        {rates['optimised'] / rates['naive']:6.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="windows per forward call")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--clips", type=int, default=50, help="10 s clips for run_embed (0 skips it)")
    ap.add_argument("--model", default="MSD_musicnn", choices=mt.MODELS)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "musicnn_speed_cache",
                    help="where the converted safetensors weights are cached")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = mt.load_musicnn(args.model, args.cache)
    print(f"torch {torch.__version__}, {args.threads} threads, mkldnn={torch.backends.mkldnn.is_available()}")
    bench_forward(model, args.batch, args.repeats)
    if args.clips:
        bench_embed(args.clips, args.cache, args.threads)


if __name__ == "__main__":
    main()
