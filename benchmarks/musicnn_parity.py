#!/usr/bin/env python
"""``mtx embed --audio-encoder musicnn`` vs musicnn 0.1.0's own TensorFlow output: the figures.

Runs the real embed stage on the clips of ``tests/reference/musicnn_clips.py`` and prints,
per clip and model, the worst per-patch abs difference and the track-mean cosine against
``tests/fixtures/musicnn_tf_reference.npz`` (written by musicnn's ``extractor`` through
``tests/reference/make_musicnn_reference.py``; see its docstring for the TF venv). The
gated version of this comparison is ``tests/test_musicnn_reference.py``.

``--front-end librosa-0.10`` reruns it with the front end mtx had before encoder version 3
(torchaudio's sinc resampler, zeros past the file edges), for the before/after figures.
``shipped cos`` compares with the track mean of what musicnn's extractor returns at its
shipped batch size of 1 (it repeats the first patch's features; see the generator script).

    PYTHONPATH=. python benchmarks/musicnn_parity.py [--front-end librosa-0.10]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reference"))
import musicnn_clips  # noqa: E402

from musiccli.embed import EmbedConfig, run_embed  # noqa: E402
from musiccli.encoders.base import AUDIO_ENCODERS  # noqa: E402
from musiccli.manifest import Record, write_manifest  # noqa: E402
from musiccli.state import StateDir  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "musicnn_tf_reference.npz"


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--front-end", choices=("librosa-0.8", "librosa-0.10"), default="librosa-0.8")
    args = parser.parse_args(argv)
    if args.front_end == "librosa-0.10":
        spec, cls = AUDIO_ENCODERS["musicnn"]
        AUDIO_ENCODERS["musicnn"] = (dataclasses.replace(spec, resampler="sinc", edge_pad="zeros"), cls)
        cls.spec = AUDIO_ENCODERS["musicnn"][0]
    ref = np.load(FIXTURE)
    clips = musicnn_clips.all_clips()
    with tempfile.TemporaryDirectory() as tmp:
        records = []
        for name, kind, seconds, sr in clips:
            path = Path(tmp) / f"{name}.wav"
            sf.write(path, musicnn_clips.make_clip(kind, seconds, sr), sr, subtype="PCM_16")
            records.append(Record(id=name, audio_path=str(path), caption=name, duration=float(seconds)))
        state = StateDir.resolve(Path(tmp) / "state")
        print(f"front end: {args.front_end}; reference: musicnn 0.1.0, tensorflow {ref['meta/tensorflow']}, "
              f"librosa {ref['meta/librosa']}")
        worst_patch, worst_cos = 0.0, 1.0
        for model in ("MSD_musicnn", "MTT_musicnn"):
            write_manifest(state.manifest_path(model.lower()), records)
            res = run_embed(state, EmbedConfig(manifest=model.lower(), audio_encoder="musicnn", model=model,
                                               aggregation="none", num_workers=0, device="cpu"))
            with h5py.File(res.path) as f:
                off, win = f["window_offsets"][()], f["windows"][()]
            print(f"\n== {model}\n{'clip':18s} {'patches':>7s} {'patch max|d|':>12s} {'mean max|d|':>11s} "
                  f"{'mean cos':>9s} {'shipped cos':>11s}")
            for i, (name, *_) in enumerate(clips):
                got, tf = win[off[i]:off[i + 1]], ref[f"{name}/{model}/penultimate"]
                if got.shape != tf.shape:
                    print(f"{name:18s} patch count differs: mtx {len(got)}, musicnn {len(tf)}")
                    worst_patch, worst_cos = np.inf, -1.0
                    continue
                d = float(np.abs(got - tf).max())
                c = _cos(got.mean(0), tf.mean(0))
                worst_patch, worst_cos = max(worst_patch, d), min(worst_cos, c)
                print(f"{name:18s} {len(got):7d} {d:12.2e} {np.abs(got.mean(0) - tf.mean(0)).max():11.2e} "
                      f"{c:9.6f} {_cos(got.mean(0), ref[f'{name}/{model}/shipped_mean']):11.4f}")
        print(f"\nworst per-patch max|d| {worst_patch:.2e}; worst track-mean cosine {worst_cos:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
