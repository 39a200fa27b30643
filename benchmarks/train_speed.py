"""Training throughput (steps/s) of mtx's step loop vs a naive baseline, measured in the same run.

Synthetic data: a manifest of N clips and an HDF5 store of dim D (MuQ-MuLan-like 1536 by
default). Both loops run the same model, loss (combined) and AdamW optimizer; they differ in
what mtx does on purpose:

- mtx: per batch one sorted HDF5 read of just the batch's rows (``PairDataset.batch``),
  AMP via ``runtime.autocast()`` on CUDA (bf16/fp16), fp32 on CPU;
- naive: per step the whole store is read into memory and rows are looked up one record at
  a time, always fp32 (a common first version of such a loop).

Also reported: end-to-end ``run_train`` steps/s (validation and checkpoints included).

    python benchmarks/train_speed.py                       # tiny + minilm, CPU (+ CUDA if present)
    python benchmarks/train_speed.py --backbones tiny --threads 1 --end-to-end
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_tiny_backbone(out: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from musiccli.encoders.text import resolve_backbone

    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_data(state, n: int, dim: int) -> None:
    from musiccli import store as store_mod
    from musiccli.manifest import Record, assign_splits, write_manifest

    rng = np.random.default_rng(0)
    words = ["rock", "jazz", "calm", "dark", "piano", "guitar", "drums", "happy", "slow", "fast", "vocal", "synth"]
    records = [Record(id=f"t{i:05d}", audio_path=f"/x/{i}.wav", duration=30.0, artist=f"a{i}",
                      caption=" ".join(rng.choice(words, 6)), alt_captions=[" ".join(rng.choice(words, 8))])
               for i in range(n)]
    assign_splits(records)
    write_manifest(state.manifest_path("bench"), records)
    path = state.embeddings_path("synthetic", "bench")
    step = 1024
    for k, s in enumerate(range(0, n, step)):
        ids = [r.id for r in records[s:s + step]]
        store_mod.write_part(path, k, ids, rng.standard_normal((len(ids), dim)).astype(np.float32) + 1.0)
    store_mod.assemble(path, dim, "float32", {"encoder": "synthetic", "dim": dim, "aggregation": "mean"},
                       (n + step - 1) // step)


def _model_and_opt(backbone: str, dim: int, device: torch.device, mean, std):
    from musiccli.encoders.text import TextEmbedder
    from musiccli.training.losses import build_loss

    torch.manual_seed(0)
    model = TextEmbedder.from_backbone(backbone, out_dim=dim, max_length=32).to(device).train()
    model.set_audio_stats(mean, std)
    loss_fn = build_loss("combined").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    return model, loss_fn, opt


def _step(model, loss_fn, opt, texts, audio, device, autocast) -> float:
    tok = model.tokenize(texts)
    with autocast:
        pred = model(tok["input_ids"].to(device), tok["attention_mask"].to(device))
    loss, _ = loss_fn(pred.float(), audio)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_loops(state, backbone: str, device_name: str, steps: int, batch: int, rounds: int) -> dict[str, float]:
    """Interleave timed blocks of both loops and take medians: robust to a busy machine's drift."""
    import contextlib

    from musiccli.manifest import read_manifest
    from musiccli.runtime import select_runtime
    from musiccli.store import EmbeddingStore
    from musiccli.training.data import EpochSampler, PairDataset, split_pairs

    runtime = select_runtime(device_name, "auto")
    device = runtime.device
    records = read_manifest(state.manifest_path("bench"))
    store = EmbeddingStore(state.embeddings_path("synthetic", "bench"))
    train = split_pairs(records, store, "train")
    mean, std = store.mean_std(train.positions)
    batches = EpochSampler(len(train), batch, seed=0).batches(0)

    # mtx: one sorted HDF5 read of the batch's rows + AMP where the device has it
    ds = PairDataset(train, store, mean, std, seed=0)

    def mtx_batch(idx):
        return ds.batch(idx)

    # naive: the whole store per step, row lookups one record at a time, fp32
    pos = {id_: k for k, id_ in enumerate(store.ids)}

    def naive_batch(idx):
        full = np.concatenate([c for _, c in store.iter_chunks()])
        recs = [train.records[i] for i in idx]
        raw = np.stack([full[pos[r.id]] for r in recs])
        # same captions as mtx (alt captions included), so both loops tokenise the same text
        return [ds.caption(int(i)) for i in idx], ((raw - mean) / std).astype(np.float32)

    loops = {
        "mtx": (mtx_batch, runtime.autocast, _model_and_opt(backbone, store.dim, device, mean, std)),
        "naive": (naive_batch, contextlib.nullcontext, _model_and_opt(backbone, store.dim, device, mean, std)),
    }
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(rounds + 1):  # round 0 warms up (allocator, kernels, tokenizer caches)
        order = list(loops) if r % 2 else list(reversed(loops))  # ABBA: cancel "who runs first" effects
        for name in order:
            get_batch, autocast, (model, loss_fn, opt) = loops[name]
            _sync(device)
            t0 = time.perf_counter()
            for s in range(steps):
                texts, audio = get_batch(batches[(r * steps + s) % len(batches)])
                _step(model, loss_fn, opt, texts, torch.from_numpy(audio).to(device), device, autocast())
            _sync(device)
            if r:
                rates[name].append(steps / (time.perf_counter() - t0))
    store.close()
    return {"mtx": float(np.median(rates["mtx"])), "naive": float(np.median(rates["naive"])),
            "precision": runtime.precision}


def bench_run_train(state, backbone: str, device_name: str, batch: int) -> tuple[float, int]:
    from musiccli.training import TrainConfig, run_train

    cfg = TrainConfig(audio_encoder="synthetic", manifest="bench", run=f"bench-{device_name}-{Path(backbone).name}",
                      text_backbone=backbone, epochs=1, batch_size=batch, device=device_name, max_length=32)
    res = run_train(state, cfg)
    return res.steps_per_s, res.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["tiny", "minilm"])
    ap.add_argument("--n", type=int, default=4096, help="clips in the synthetic store")
    ap.add_argument("--dim", type=int, default=1536, help="embedding dim (1536 = MuQ-MuLan mean+sigma+dmean)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per block")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved timed blocks per loop (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--end-to-end", action="store_true", help="also time a full run_train epoch")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    from musiccli.state import StateDir

    with tempfile.TemporaryDirectory() as tmp:
        state = StateDir.resolve(Path(tmp) / "state")
        make_data(state, args.n, args.dim)
        tiny = str(make_tiny_backbone(Path(tmp) / "tiny-bert"))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        print(f"synthetic store: {args.n} x {args.dim} float32, batch {args.batch}, median of {args.rounds} "
              f"blocks of {args.steps} steps, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
        print(f"{'backbone':8} {'device':6} {'prec':5} {'mtx steps/s':>12} {'naive steps/s':>14} {'ratio':>6}")
        for name in args.backbones:
            backbone = tiny if name == "tiny" else name
            for dev in devices:
                r = bench_loops(state, backbone, dev, args.steps, args.batch, args.rounds)
                print(f"{name:8} {dev:6} {r['precision']:5} {r['mtx']:12.2f} {r['naive']:14.2f} "
                      f"{r['mtx'] / r['naive']:6.2f}x", flush=True)
                if args.end_to_end:
                    sps, steps = bench_run_train(state, backbone, dev, args.batch)
                    print(f"{'':8} {dev:6} run_train end to end: {sps:.2f} steps/s over {steps} steps "
                          "(validation + checkpoints included)", flush=True)


if __name__ == "__main__":
    main()
