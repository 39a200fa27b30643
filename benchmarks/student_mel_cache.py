"""Student training seconds per epoch with and without ``--mel-cache``, measured in the same run.

A small synthetic corpus (``synth`` source: N clips of D seconds at 44.1 kHz, decoded and
resampled to 48 kHz by the trainer as for real audio) and one random 64-d teacher store. Both
runs train the same student (default architecture unless ``--channels`` is given) for the same
epochs on the same DataLoader worker count; the uncached run decodes and computes the STFT/mel
of every crop in every epoch, the cached one reads its crops from the cache built once before
(its build time is reported separately: it is paid once per manifest and front end). The data path
alone (one epoch of loader batches, no model step) is timed too: on a CPU the model's backward pass
dominates a step, so the whole-epoch ratio understates what the cache removes from the loaders.

    python benchmarks/student_mel_cache.py                       # 48 clips x 30 s, 2 epochs, 2 workers
    python benchmarks/student_mel_cache.py --clips 24 --seconds 10 --crop 5 --channels 8 --epochs 2
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_corpus(root: Path, clips: int, seconds: float) -> None:
    from musiccli import store as store_mod
    from musiccli.download import DownloadRequest, run_download
    from musiccli.manifest import read_manifest
    from musiccli.sources.base import DownloadConfig
    from musiccli.state import StateDir
    from musiccli.unify import UnifyConfig, run_unify

    state = StateDir.resolve(root)
    run_download(state, DownloadRequest(DownloadConfig(source="synth", n=clips, duration=seconds, sample_rate=44100,
                                                       seed=0, workers=2)))
    run_unify(state, UnifyConfig(datasets=["synth"], name="bench"))
    ids = [r.id for r in read_manifest(state.manifest_path("bench"))]
    path = state.embeddings_path("teacher", "bench")
    store_mod.write_part(path, 0, ids, np.random.default_rng(0).normal(size=(len(ids), 64)).astype(np.float32))
    store_mod.assemble(path, 64, "float32", {"encoder": "teacher", "dim": 64, "aggregation": "mean"}, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=30.0, help="clip length")
    ap.add_argument("--crop", type=float, default=10.0, help="student crop seconds")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=32, help="first conv block's channels")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (both runs)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the main process")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from musiccli.encoders.student import StudentConfig
    from musiccli.manifest import manifest_hash, read_manifest
    from musiccli.state import StateDir
    from musiccli.training.melcache import ensure_mel_cache
    from musiccli.training.student import StudentTrainConfig, run_student_train

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_corpus(root, args.clips, args.seconds)
        state = StateDir.resolve(root)
        print(f"corpus: {args.clips} clips x {args.seconds:g} s ({time.perf_counter() - t0:.1f} s to make); "
              f"crop {args.crop:g} s, batch {args.batch_size}, {args.workers} workers, {args.threads} threads")
        mpath = state.manifest_path("bench")
        t0 = time.perf_counter()
        cache = ensure_mel_cache(state, "bench", manifest_hash(mpath), read_manifest(mpath), StudentConfig(),
                                 num_workers=args.workers)
        build_s = time.perf_counter() - t0
        print(f"mel cache build (once): {build_s:.2f} s, {cache.tracks} tracks, "
              f"{cache.path.stat().st_size / 1e6:.1f} MB")

        # The data path alone: one epoch of training batches through the same DataLoader, no model step.
        from musiccli.training.data import EpochSampler
        from musiccli.training.melcache import MelCache
        from musiccli.training.student import AudioCrops, CachedCrops, _collate, _worker_init

        scfg = StudentConfig(crop_s=args.crop)
        train = [r for r in read_manifest(mpath) if r.split == "train"]
        batches = [b.tolist() for b in EpochSampler(len(train), args.batch_size, 0).batches(0)]
        loader_s = {}
        for cached in (False, True):
            ds = CachedCrops(train, scfg, 0, True, MelCache(cache.path)) if cached else AudioCrops(train, scfg, 0, True)
            t0 = time.perf_counter()
            for _ in torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=args.workers,
                                                 collate_fn=_collate, worker_init_fn=_worker_init):
                pass
            loader_s[cached] = time.perf_counter() - t0
        print(f"data path only (one epoch of {len(batches)} batches, no model): uncached {loader_s[False]:.2f} s, "
              f"cached {loader_s[True]:.2f} s ({loader_s[False] / loader_s[True]:.1f}x)")

        per_epoch = {}
        # A first, unmeasured epoch pays the one-off costs (lazy imports, allocator warm-up) for both.
        for cached, run, epochs in ((True, "warmup", 1), (False, "uncached", args.epochs),
                                    (True, "cached", args.epochs)):
            cfg = StudentTrainConfig(manifest="bench", run=f"bench-{run}", teachers="teacher:1", epochs=epochs,
                                     batch_size=args.batch_size, crop_s=args.crop, base_channels=args.channels,
                                     num_workers=args.workers, device="cpu", precision="fp32", mel_cache=cached)
            res = run_student_train(state, cfg)
            if run == "warmup":
                continue
            per_epoch[cached] = res.seconds / res.epochs_done
            print(f"{'cached  ' if cached else 'uncached'}: {per_epoch[cached]:.2f} s/epoch "
                  f"({res.steps} steps, {res.steps_per_s:.2f} steps/s, validation included)")
        print(f"speed-up with --mel-cache: {per_epoch[False] / per_epoch[True]:.2f}x per epoch "
              f"(the cache pays for itself after {build_s / max(1e-9, per_epoch[False] - per_epoch[True]):.1f} "
              f"epochs)")


if __name__ == "__main__":
    main()
