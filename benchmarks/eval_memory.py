"""Build a synthetic state for measuring `mtx eval`'s peak memory on a large split.

    python benchmarks/eval_memory.py STATE_DIR [--tracks 20000] [--dim 1536]
    /usr/bin/time -v python -m musiccli --state-dir STATE_DIR eval --no-baselines

The state holds a manifest whose test split has ``--tracks`` tracks (plus a small train split),
an HDF5 store of random ``--dim``-d vectors for them, and a run (``run.json`` + ``best/``) whose
text model is a 2-layer BERT with random weights and the MiniLM tokenizer: retrieval quality is
meaningless, the memory and time of ranking N x N are not. Only the public APIs that every
version of mtx has are used, so the same state measures older code too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def build(root: Path, tracks: int, dim: int, seed: int = 0) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from musiccli import store as store_mod
    from musiccli.encoders.text import TextEmbedder, resolve_backbone
    from musiccli.manifest import Record, manifest_hash, write_manifest
    from musiccli.state import StateDir

    state = StateDir(root)
    words = ["calm", "dark", "bright", "piano", "guitar", "synth", "drums", "slow", "fast", "vocal", "jazz", "rock"]
    rng = np.random.default_rng(seed)
    n_train = max(64, tracks // 50)
    records = []
    for i in range(tracks + n_train):
        picks = rng.choice(len(words), size=4, replace=False)
        records.append(Record(id=f"t{i:06d}", audio_path=f"/music/t{i:06d}.wav",
                              caption=f"{' '.join(words[p] for p in picks)} track {i}", duration=30.0,
                              dataset="synthetic", artist=f"artist {i}", tags=[f"genre---{words[picks[0]]}"],
                              split="test" if i < tracks else "train"))
    mpath = state.manifest_path("big")
    write_manifest(mpath, records)
    spath = state.embeddings_path("fake", "big")
    per_part = 4096
    n_parts = 0
    for k, s in enumerate(range(0, len(records), per_part)):
        chunk = records[s:s + per_part]
        store_mod.write_part(spath, k, [r.id for r in chunk], rng.standard_normal((len(chunk), dim)).astype(np.float32))
        n_parts += 1
    store_mod.assemble(spath, dim, "float32", {"encoder": "fake", "dim": dim, "aggregation": "mean"}, n_parts)

    backbone = root / "tiny-bert"
    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    model = TextEmbedder.from_backbone(str(backbone), out_dim=dim, hidden_dim=64, audio_encoder="fake")
    model.set_audio_stats(np.zeros(dim, np.float32), np.ones(dim, np.float32))
    rdir = state.run_dir("big-run")
    model.save_pretrained(rdir / "best")
    (rdir / "run.json").write_text(json.dumps({
        "run": "big-run", "audio_encoder": "fake", "manifest": "big", "manifest_path": str(mpath),
        "embeddings": str(spath), "manifest_hash": manifest_hash(mpath), "text_backbone": str(backbone),
        "config": {"out_dim": dim}, "created": time.time(), "status": "complete", "best": {"step": 1}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("state_dir", type=Path)
    ap.add_argument("--tracks", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1536)
    args = ap.parse_args()
    build(args.state_dir, args.tracks, args.dim)
    print(f"built {args.state_dir}: {args.tracks} test tracks x {args.dim} dims; now run\n"
          f"  /usr/bin/time -v python -m musiccli --state-dir {args.state_dir} eval --no-baselines")


if __name__ == "__main__":
    main()
