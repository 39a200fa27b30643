"""Fresh-install guard: every native extension the project uses loads and does real work.

A torchaudio built against another torch release (torchaudio 2.11.1 with torch 2.11.0) fails
to load libtorchaudio; transformers imports torchaudio, so even a plain ``BertModel`` import
breaks. This test makes that failure loud and first, instead of a thousand "failed" items.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import io

import numpy as np
import pytest

CORE_NATIVE = ["torch", "torchaudio", "soundfile", "h5py", "safetensors", "tokenizers", "pyarrow", "pyarrow.compute",
               "pyarrow.csv", "pyarrow.json", "pyarrow.ipc",
               "zstandard", "sklearn", "av", "onnxruntime", "numpy", "pandas"]
EXTRA_NATIVE = ["onnx", "psycopg", "faiss"]


@pytest.mark.parametrize("name", CORE_NATIVE)
def test_core_native_extension_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("name", EXTRA_NATIVE)
def test_test_extra_native_extension_imports(name):
    importlib.import_module(name)


def test_torch_and_torchaudio_are_a_matching_pair():
    import torch
    import torchaudio
    import torchaudio.functional as F

    # The release part (before "+cu130" / "+cpu") of both must agree.
    assert torch.__version__.split("+")[0] == torchaudio.__version__.split("+")[0]
    x = torch.sin(torch.arange(16000, dtype=torch.float32) * 2 * np.pi * 440 / 16000)[None]
    y = F.resample(x, 16000, 24000)
    assert y.shape == (1, 24000) and torch.isfinite(y).all()


def test_transformers_model_classes_import():
    # transformers imports torchaudio lazily for audio models; a broken torchaudio breaks these.
    from transformers import BertConfig, BertModel, ClapModel  # noqa: F401

    m = BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=8, vocab_size=20))
    assert m(input_ids=__import__("torch").tensor([[1, 2, 3]])).last_hidden_state.shape == (1, 3, 8)


def test_soundfile_and_pyav_decode():
    import av
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, dtype="float32"), 16000, format="WAV")
    buf.seek(0)
    with av.open(buf) as c:
        frames = sum(f.samples for f in c.decode(audio=0))
    assert frames == 1600


def test_installed_versions_match_the_lock_file():
    """What is installed is what constraints.txt says CI tested (for the packages it pins)."""
    from pathlib import Path

    lock = Path(__file__).resolve().parents[1] / "constraints.txt"
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, ver = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = ver
    for name in ("torch", "torchaudio", "transformers", "numpy", "onnxruntime", "av"):
        assert md.version(name) == pins[name], f"{name} {md.version(name)} is not the locked {pins[name]}"
