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
