"""Shared fixtures: an isolated state dir, a CLI runner, and tiny models built from configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the network: the Hub client must fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture()
def one_thread():
    """Tiny models run fastest single-threaded: intra-op threads only add sync overhead (and on a
    busy 2-core machine, contention). Runs compared for exact resume use the same setting.
    Modules of tiny-model training tests use it for every test (``pytestmark``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "state"
    monkeypatch.setenv("MTX_HOME", str(root))
    return root


@pytest.fixture()
def state(state_dir: Path):
    from musiccli.state import StateDir

    return StateDir.resolve(state_dir)


@pytest.fixture()
def cli(state_dir: Path):
    """Invoke `mtx` in-process: cli("unify", "--max-samples", "10") -> click Result."""
    from typer.testing import CliRunner

    from musiccli.cli.app import app

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, ["--state-dir", str(state_dir), *args], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (random weights) with the real MiniLM tokenizer, saved with save_pretrained.

    Loaded by the code under test through the same ``from_pretrained`` path users take.
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    from musiccli.encoders.text import resolve_backbone

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny CLAP (text + HTSAT audio towers, projection dim 8) and a ``ClapProcessor``: a 1 s feature
    extractor and the bundled MiniLM tokenizer (the real checkpoint ships a RoBERTa one, which cannot be
    built offline; the code only goes through ``AutoTokenizer``, so any tokenizer works).
    """
    import torch
    from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    from musiccli.encoders.text import resolve_backbone

    out = tmp_path_factory.mktemp("tiny-clap")
    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    cfg = ClapConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                         projection_dim=8),
        audio_config=dict(depths=[1, 1], num_attention_heads=[1, 2], embed_dim=8, hidden_size=16,
                          patch_embeds_hidden_size=8, window_size=4, spec_size=64, num_mel_bins=16,
                          projection_dim=8, patch_stride=(4, 4), patch_size=4, enable_fusion=False),
        projection_dim=8)
    model = ClapModel(cfg)
    with torch.no_grad():
        # Random init leaves this tiny text tower collapsed (the pooled CLS barely moves, so the projection's
        # biases dominate: mean pairwise prompt cosine 0.998), which mtx's text-tower health check refuses.
        model.text_model.pooler.dense.weight.mul_(50)
        model.text_projection.linear1.weight.mul_(10)
    model.save_pretrained(out)
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=48_000, hop_length=480, max_length_s=1,
                                     fft_window_size=256, truncation="rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=extractor, tokenizer=tok).save_pretrained(out)
    return out


@pytest.fixture()
def make_run(state, tiny_backbone: Path):
    """Fabricate a trained run the way `mtx train` leaves it (run.json, best/, manifest, store).

    ``perfect=True`` stores, as each track's audio vector, exactly what the model predicts
    for its main caption (native space), so retrieval with that model is near perfect.
    ``model_id`` is recorded in the store attributes as `mtx embed` records the encoder's checkpoint.
    Returns a dict with the run name, manifest name, store path, model and records.
    """
    import json
    import time

    import numpy as np

    from musiccli import store as store_mod
    from musiccli.encoders.text import TextEmbedder
    from musiccli.manifest import Record, manifest_hash, write_manifest
    from musiccli.provenance import training_data

    genres = ["rock", "jazz", "ambient", "techno"]
    moods = ["dark", "happy", "calm", "angry", "dreamy"]
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

    def make(name: str = "run1", n: int = 40, dim: int = 16, perfect: bool = True, manifest: str = "lib",
             encoder: str = "fake", seed: int = 0, model_id: str | None = None) -> dict:
        import torch

        records = []
        for i in range(n):
            genre, mood = genres[(i // 2) % 4], moods[i % 5]
            tags = [genre, mood] + (["rare"] if i in (1, 2) else [])
            records.append(Record(
                id=f"t{i:03d}", audio_path=f"/music/{genre}/t{i:03d}.wav",
                caption=f"{mood} {genre} song {numbers[i % 10]} {numbers[(i // 10) % 10]}",
                alt_captions=[f"a {genre} piece"], duration=30.0 + i, dataset="synth" if i % 3 else "other",
                artist=f"Artist {i // 2}", title=f"Title {i}", tags=tags, split="test" if i % 2 == 0 else "train"))
        mpath = state.manifest_path(manifest)
        write_manifest(mpath, records)
        torch.manual_seed(seed + 1000)  # differs from eval's untrained baseline (seed 0)
        model = TextEmbedder.from_backbone(str(tiny_backbone), out_dim=dim, hidden_dim=32, audio_encoder=encoder)
        rng = np.random.default_rng(seed)
        model.set_audio_stats(rng.normal(0.3, 0.1, dim).astype(np.float32),
                              rng.uniform(1.0, 2.0, dim).astype(np.float32))
        if perfect:
            vectors = model.encode([r.caption for r in records], space="audio")
        else:
            vectors = rng.standard_normal((n, dim)).astype(np.float32)
        spath = state.embeddings_path(encoder, manifest)
        store_mod.write_part(spath, 0, [r.id for r in records], vectors)
        attrs = {"encoder": encoder, "dim": dim, "aggregation": "mean"}
        if model_id is not None:
            attrs["model_id"] = model_id   # the checkpoint `mtx embed` records (a native text tower loads it)
        store_mod.assemble(spath, dim, "float32", attrs, 1)
        rdir = state.run_dir(name)
        model.save_pretrained(rdir / "best")
        digest = manifest_hash(mpath)
        (rdir / "run.json").write_text(json.dumps({
            "run": name, "audio_encoder": encoder, "manifest": manifest, "manifest_path": str(mpath),
            "embeddings": str(spath), "manifest_hash": digest, "text_backbone": str(tiny_backbone),
            "config": {"out_dim": dim}, "created": time.time(), "status": "complete", "best": {"step": 1},
            "training_data": training_data(manifest, digest, [r for r in records if r.split == "train"])}))
        return {"run": name, "manifest": manifest, "store": spath, "model": model, "records": records,
                "dim": dim, "encoder": encoder}

    return make


@pytest.fixture(scope="session")
def pg():
    """A real PostgreSQL server (initdb + pg_ctl on a free loopback port) for the AudioMuse-AI tests."""
    from pgserver import find_bin, start

    if not find_bin("initdb"):
        pytest.skip("PostgreSQL's initdb is not installed (Debian package `postgresql`; .ci/run installs it)")
    server, stop = start()
    try:
        yield server
    finally:
        stop()


@pytest.fixture()
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """File names the embed stage decodes (it decodes each track it embeds; in-process with --workers 0)."""
    from musiccli import embed

    calls: list[str] = []
    real = embed.decode_windows

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(embed, "decode_windows", counting)
    return calls
