#!/usr/bin/env python
"""Regenerate ``tests/fixtures/musicnn_tf_reference.npz`` from musicnn 0.1.0's own TensorFlow code.

What it stores: for every clip of :mod:`musicnn_clips` (16 kHz and 44.1 kHz; 3 s, 12 s and
31 s; tones, drums and noise), written as a 16-bit WAV and run through
``musicnn.extractor.extractor(path, model, input_length=3, input_overlap=False,
extract_features=True)`` for ``MSD_musicnn`` and ``MTT_musicnn``:

- ``<clip>/<model>/penultimate``: [patches, 200] float32, ``features['penultimate']``;
- ``<clip>/<model>/taggram``: [patches, 50] float32, the sigmoid taggram;
- ``<clip>/<model>/shipped_mean``: [200], the mean of ``features['penultimate']`` as the
  extractor returns it with its shipped ``BATCH_SIZE = 1`` (see below);
- ``<clip>/sha256``, ``<clip>/sample_rate``, ``<clip>/samples``: which audio it was;
- ``meta/*``: the versions of every package that shaped the numbers.

musicnn 0.1.0's extractor feeds patches ``configuration.BATCH_SIZE`` (1) at a time, and its
loop over the second and later batches concatenates a stale variable (``penultimate_``,
the first batch's value, instead of the ``backend_`` it just unpacked). With the shipped
batch size every patch's penultimate is therefore the *first* patch's. The script sets
``musicnn.configuration.BATCH_SIZE`` to the number of patches, so one batch (no loop)
returns every patch's own features from the same extractor code path, checks that the
taggram of that run equals the shipped batch-of-one run (inference-mode batch norm makes
batching irrelevant), and keeps the shipped run's (wrong) track mean as ``shipped_mean``
so the difference can be reported. Two runs agreeing also proves that the checkpoint was
restored: the extractor swallows a failed restore and would run random weights.

The environment (Python 3.11; nothing of it enters the project venv, and CI never needs it)::

    python3.11 -m venv /work/venvs/tf
    /work/venvs/tf/bin/pip install tensorflow-cpu==2.15.1 numpy==1.23.5 librosa==0.8.1 \\
        resampy==0.2.2 numba==0.57.1 llvmlite==0.40.1 scipy==1.10.1 scikit-learn==1.2.2 soundfile
    /work/venvs/tf/bin/pip install --no-deps musicnn==0.1.0
    /work/venvs/tf/bin/python tests/reference/make_musicnn_reference.py

Why librosa 0.8.1: musicnn 0.1.0 declares ``librosa>=0.7.0`` and ``numpy<1.17``; 0.8.1 is the
newest librosa that installs with numpy < 1.17 (0.9 needs >= 1.17), so it is the newest
librosa a musicnn 0.1.0 install could have had. It keeps the 0.7/0.8 behaviour that
musicnn was written against and that librosa 0.10 changed: the centred STFT pads with
``pad_mode="reflect"`` (0.10+: zeros) and ``librosa.load`` resamples with resampy's
``kaiser_best`` filter (0.10+: soxr). librosa 0.7.2 itself no longer imports with any
numba that supports Python 3.11 (``numba.decorators`` is gone); its STFT, mel filterbank
and resampling are the same code as 0.8.1's. TensorFlow 2.15 needs numpy >= 1.23.5, so
numpy is 1.23.5 (musicnn's ``numpy<1.17`` pin is ignored with ``--no-deps``; the code it
runs is unaffected).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import musicnn_clips  # noqa: E402

MODELS = ("MSD_musicnn", "MTT_musicnn")
DEFAULT_OUT = HERE.parent / "fixtures" / "musicnn_tf_reference.npz"


def _extract(path: str, model: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(taggram [P, 50], penultimate [P, 200]) from musicnn's own extractor at a batch size."""
    from musicnn import configuration, extractor

    configuration.BATCH_SIZE = batch_size
    taggram, _labels, feats = extractor.extractor(path, model=model, input_length=3, input_overlap=False,
                                                  extract_features=True)
    return np.asarray(taggram, np.float32), np.asarray(feats["penultimate"], np.float32).reshape(-1, 200)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import librosa
    import musicnn
    import resampy
    import scipy
    import soundfile as sf
    import tensorflow as tf

    arrays: dict[str, np.ndarray] = {
        "meta/tensorflow": np.array(tf.__version__),
        "meta/librosa": np.array(librosa.__version__),
        "meta/resampy": np.array(resampy.__version__),
        "meta/numpy": np.array(np.__version__),
        "meta/scipy": np.array(scipy.__version__),
        "meta/musicnn": np.array(getattr(musicnn, "__version__", "0.1.0")),
        "meta/python": np.array(sys.version.split()[0]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, seconds, sr in musicnn_clips.all_clips():
            samples = musicnn_clips.make_clip(kind, seconds, sr)
            path = os.path.join(tmp, f"{name}.wav")
            sf.write(path, samples, sr, subtype="PCM_16")
            arrays[f"{name}/sha256"] = np.array(musicnn_clips.sha256(samples))
            arrays[f"{name}/sample_rate"] = np.array(sr)
            arrays[f"{name}/samples"] = np.array(len(samples))
            for model in MODELS:
                tags, emb = _extract(path, model, batch_size=10_000)   # one batch: every patch's own features
                tags1, emb1 = _extract(path, model, batch_size=1)      # as shipped
                if tags.shape != tags1.shape or np.abs(tags - tags1).max() > 1e-5:
                    raise RuntimeError(f"{name}/{model}: batched and shipped taggrams differ "
                                       "(a failed checkpoint restore runs random weights)")
                if np.abs(emb[0] - emb1[0]).max() > 1e-4:
                    raise RuntimeError(f"{name}/{model}: first-patch features differ between batch sizes")
                arrays[f"{name}/{model}/taggram"] = tags
                arrays[f"{name}/{model}/penultimate"] = emb
                arrays[f"{name}/{model}/shipped_mean"] = emb1.mean(0)
                print(f"{name:20s} {model}: {len(tags)} patches", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(f".{args.out.name}.tmp.npz")
    np.savez_compressed(tmp_out, **arrays)
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
