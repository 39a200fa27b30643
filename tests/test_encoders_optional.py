"""Encoders behind optional packages: MuQ-MuLan (``muq``) and Music2Latent (``music2latent``).

Where the package is installed, tiny instances are built through the package's own
config/constructor path, saved, and loaded by the encoder as users load real ones.
The missing-package errors are tested either way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from musiccli.encoders import EncoderOptions, build_encoder
from musiccli.errors import MtxError
from musiccli.runtime import select_runtime

CPU = select_runtime("cpu", "fp32")


def _windows(sr: int, n: int, seconds: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(sr * seconds)) / sr
    tones = torch.stack([torch.sin(2 * torch.pi * (110 * (i + 1)) * t) for i in range(n)])
    return (0.3 * tones + 0.05 * torch.randn(n, t.numel(), generator=g)).float()


# --------------------------------------------------------------------------- missing packages
@pytest.mark.parametrize("encoder, module", [("muq", "muq"), ("music2latent", "music2latent")])
def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          encoder: str, module: str) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)   # makes `import module` raise ImportError
    (tmp_path / "config.json").write_text('{"mulan": {"dim_latent": 512}}')
    model = str(tmp_path / "m.pt") if encoder == "music2latent" else str(tmp_path)
    if encoder == "music2latent":
        Path(model).write_bytes(b"")
    enc = build_encoder(encoder, EncoderOptions(model=model), CPU)   # building imports nothing
    with pytest.raises(MtxError) as e:
        enc.embed_windows(torch.zeros(1, 1000))
    assert e.value.hint == f"pip install 'musiccli[{encoder}]'"


# --------------------------------------------------------------------------- MuQ-MuLan
@pytest.fixture(scope="module")
def tiny_mulan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MuQ (2-layer conformer) + XLM-R-style text model (MiniLM tokenizer) + MuQMuLan, via the package.

    MuQMuLan's constructor loads its towers by name ('muq' / 'xlm-roberta' must be in the
    names), exactly as the released config does with Hub ids; here they are local dirs.
    """
    pytest.importorskip("muq")
    from muq import MuQ, MuQMuLan
    from transformers import AutoTokenizer, Wav2Vec2ConformerConfig, XLMRobertaConfig, XLMRobertaModel

    from musiccli.encoders.text import resolve_backbone

    root = tmp_path_factory.mktemp("tiny-mulan")
    torch.manual_seed(0)
    w2v2 = Wav2Vec2ConformerConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                   conv_depthwise_kernel_size=3, position_embeddings_type="rotary").to_dict()
    w2v2 = {k: v for k, v in w2v2.items() if k not in ("id2label", "label2id")}  # int keys break EasyDict
    MuQ(dict(encoder_dim=16, encoder_depth=2, conv_dim=8, codebook_size=32, w2v2_config=w2v2,
             stat={"melspec_2048_mean": 6.77, "melspec_2048_std": 19.0})).save_pretrained(root / "tiny-muq")
    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    XLMRobertaModel(XLMRobertaConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=130,
                                     pad_token_id=tok.pad_token_id)).save_pretrained(root / "tiny-xlm-roberta")
    tok.save_pretrained(root / "tiny-xlm-roberta")
    cfg = dict(
        mulan=dict(sr=24_000, clip_secs=1, dim_latent=8, decoupled_contrastive_learning=True,
                   hierarchical_contrastive_loss=False, hierarchical_contrastive_loss_layers=None,
                   sigmoid_contrastive_loss=False, rank_contrast=True),
        audio_model=dict(name=str(root / "tiny-muq"), model_dim=16, use_layer_idx=-1),
        text_model=dict(name=str(root / "tiny-xlm-roberta"), model_dim=16, use_layer_idx=-1),
        audio_transformer=dict(dim=16, tf_depth=1, heads=2, dim_head=8, attn_dropout=0.0, ff_dropout=0.0, ff_mult=2),
        text_transformer=dict(dim=16, tf_depth=1, max_seq_len=64, dim_head=8, heads=2, attn_dropout=0.0,
                              ff_dropout=0.0, ff_mult=2),
    )
    MuQMuLan(cfg).save_pretrained(root / "tiny-muq-mulan")
    return root / "tiny-muq-mulan"


def test_muq_dims_batches_and_other_window_lengths(tiny_mulan: Path) -> None:
    enc = build_encoder("muq", EncoderOptions(model=str(tiny_mulan)), CPU)
    assert enc.window_dim == 8 and enc.dim("stats") == 24 and enc.spec.default_aggregation == "stats"
    assert enc.identity()["model_id"] == str(tiny_mulan)
    x = _windows(24_000, 3, 1.0)                       # exactly one 1 s clip per window: batched path
    many = enc.embed_windows(x)
    ones = torch.cat([enc.embed_windows(x[i:i + 1]) for i in range(3)])
    assert many.shape == (3, 8) and many.dtype == torch.float32
    torch.testing.assert_close(many, ones, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.embed_windows(x), many, atol=0, rtol=0)
    np.testing.assert_allclose(many.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    # Equal to the package's own entry point, model(wavs=...).
    with torch.inference_mode():
        reference = enc._model(wavs=x)
    torch.testing.assert_close(reference, many, atol=1e-5, rtol=1e-5)
    # A 1.5 s window goes through the package's clip-and-average path.
    assert enc.embed_windows(_windows(24_000, 2, 1.5)).shape == (2, 8)


def test_mulan_native_text_tower(tiny_mulan: Path) -> None:
    from musiccli.encoders.native_text import load_native_text_model

    text = load_native_text_model("muq", model=str(tiny_mulan))
    assert text.dim == 8
    q = text.encode(["calm piano", "heavy metal", "jazz"], batch_size=2)
    assert q.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(text.encode(["calm piano", "heavy metal", "jazz"], batch_size=3), q, atol=1e-5)
    stats = np.random.default_rng(0).normal(size=(2, 24)).astype(np.float32)   # the stored 3 x 8 vector
    np.testing.assert_allclose(text.audio_for_retrieval(stats),
                               stats[:, :8] / np.linalg.norm(stats[:, :8], axis=1, keepdims=True), atol=1e-6)


# --------------------------------------------------------------------------- Music2Latent
@pytest.fixture(scope="module")
def m2l_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised music2latent UNet saved in the package's checkpoint format.

    The released architecture is fixed by the package's hyper-parameters (it cannot be
    shrunk), so this is the full 58M-parameter network with random weights.
    """
    pytest.importorskip("music2latent")
    from music2latent.models import UNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m2l") / "music2latent.pt"
    torch.save({"gen_state_dict": UNet().state_dict()}, path)
    return path


def test_music2latent_dims_and_batches(m2l_checkpoint: Path) -> None:
    from musiccli.encoders.music2latent import feature_dims

    assert feature_dims() == {"features": 8192, "latent": 64}
    enc = build_encoder("music2latent", EncoderOptions(model=str(m2l_checkpoint.parent)), CPU)  # dir works too
    assert enc.window_dim == 8192 and enc.dim("stats") == 3 * 8192
    assert enc.identity()["representation"] == "features"
    x = _windows(44_100, 2, 0.3)
    many = enc.embed_windows(x)
    assert many.shape == (2, 8192) and many.dtype == torch.float32 and torch.isfinite(many).all()
    # Batch of one through the package's own call == that window's row of the batch.
    with torch.inference_mode():
        ref = enc._model.encode(x[0].numpy(), extract_features=True).float().mean(-1)
    torch.testing.assert_close(many[:1], ref, atol=1e-5, rtol=1e-5)

    latent = build_encoder("music2latent", EncoderOptions(model=str(m2l_checkpoint),
                                                          extra={"representation": "latent"}), CPU)
    latent._model = enc._model       # same weights; skip reloading the 230 MB checkpoint
    assert latent.window_dim == 64 and latent.embed_windows(x[:1]).shape == (1, 64)


def test_music2latent_option_errors(tmp_path: Path) -> None:
    pytest.importorskip("music2latent")
    with pytest.raises(MtxError) as e:
        _ = build_encoder("music2latent", EncoderOptions(extra={"representation": "mfcc"}), CPU).window_dim
    assert "features" in e.value.hint and "latent" in e.value.hint
    with pytest.raises(MtxError) as e:
        build_encoder("music2latent", EncoderOptions(model=str(tmp_path / "missing.pt")), CPU).embed_windows(
            torch.zeros(1, 44_100))
    assert "missing.pt" in e.value.message
