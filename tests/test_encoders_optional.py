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
def _build_tiny_mulan(root: Path, clip_secs: int) -> Path:
    """MuQ (2-layer conformer) + XLM-R-style text model (MiniLM tokenizer) + MuQMuLan, via the package.

    MuQMuLan's constructor loads its towers by name ('muq' / 'xlm-roberta' must be in the
    names), exactly as the released config does with Hub ids; here they are local dirs.
    """
    pytest.importorskip("muq")
    from muq import MuQ, MuQMuLan
    from transformers import AutoTokenizer, Wav2Vec2ConformerConfig, XLMRobertaConfig, XLMRobertaModel

    from musiccli.encoders.text import resolve_backbone

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
        mulan=dict(sr=24_000, clip_secs=clip_secs, dim_latent=8, decoupled_contrastive_learning=True,
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


@pytest.fixture(scope="module")
def tiny_mulan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MuQ-MuLan with 1 s clips."""
    return _build_tiny_mulan(tmp_path_factory.mktemp("tiny-mulan"), clip_secs=1)


@pytest.fixture(scope="module")
def tiny_mulan_10s(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MuQ-MuLan with the released model's 10 s clips."""
    return _build_tiny_mulan(tmp_path_factory.mktemp("tiny-mulan-10s"), clip_secs=10)


@pytest.mark.slow
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


def _signal(seconds: float, sr: int = 24_000, seed: int = 3) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t / 40)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("seconds", [25.0, 20.0, 7.0, 10.0, 13.37])
def test_muq_windows_equal_the_package_clips(tiny_mulan_10s: Path, seconds: float) -> None:
    """The stage's windows (the spec's tail="wrap") are MuQMuLan._get_all_clips' clips, the last one
    wrapped around to the track's start, not padded."""
    from musiccli.audio import frame_with_context
    from musiccli.encoders import get_spec

    enc = build_encoder("muq", EncoderOptions(model=str(tiny_mulan_10s)), CPU)
    window, hop = enc.default_window()
    assert (window, hop) == (10.0, 10.0) and enc.spec.tail == "wrap" and get_spec("muq").tail == "wrap"
    wave = _signal(seconds)
    ours = frame_with_context(wave, int(window * 24_000), int(hop * 24_000), None, tail=enc.spec.tail)
    clips = enc._model._get_all_clips(torch.from_numpy(wave)).numpy()
    assert ours.shape == clips.shape
    np.testing.assert_array_equal(ours, clips)
    if seconds == 25.0:   # two whole clips, then 5 s of tail + the first 5 s
        np.testing.assert_array_equal(ours[2], np.concatenate([wave[480_000:], wave[:120_000]]))


def test_muq_short_track_rule(tiny_mulan_10s: Path) -> None:
    """Under half a clip the package repeats the track once (a shorter clip); the stage fills the clip."""
    from musiccli.audio import frame_with_context

    enc = build_encoder("muq", EncoderOptions(model=str(tiny_mulan_10s)), CPU)
    wave = _signal(3.0)
    ours = frame_with_context(wave, 240_000, 240_000, None, tail="wrap")
    clips = enc._model._get_all_clips(torch.from_numpy(wave)).numpy()
    assert clips.shape == (1, 144_000) and ours.shape == (1, 240_000)
    np.testing.assert_array_equal(ours[0, :144_000], clips[0])
    np.testing.assert_array_equal(ours[0], np.tile(wave, 4)[:240_000])


@pytest.mark.parametrize("sr", [24_000, 16_000])
def test_wrap_windows_from_spans_equal_the_whole_decode(tmp_path: Path, sr: int) -> None:
    """--max-windows reads spans; the wrapped last window joins the end of the track and its start."""
    import soundfile as sf

    from musiccli.audio import decode, decode_windows, frame_with_context, window_starts

    path = tmp_path / "long.wav"
    sf.write(path, _signal(95.0, sr=sr), sr, subtype="FLOAT")
    n = len(decode(path, 24_000)[0])
    assert window_starts(n, 240_000, 240_000, 2, tail="wrap") == [0, 2_160_000]   # the last one wraps
    spans = decode_windows(path, 24_000, 240_000, 240_000, 2, tail="wrap")
    whole = frame_with_context(decode(path, 24_000)[0], 240_000, 240_000, 2, tail="wrap")
    np.testing.assert_allclose(spans, whole, atol=1e-5)


@pytest.mark.slow
def test_muq_run_embed_equals_the_package(tiny_mulan_10s: Path, tmp_path: Path) -> None:
    """run_embed with the muq encoder stores what MuQMuLan(wavs=...) returns for the whole track."""
    import soundfile as sf

    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.manifest import Record, write_manifest
    from musiccli.state import StateDir
    from musiccli.store import EmbeddingStore

    waves = {"long": _signal(25.0, seed=4), "short": _signal(7.0, seed=5), "exact": _signal(20.0, seed=6)}
    records = []
    for name, wave in waves.items():
        sf.write(tmp_path / f"{name}.wav", wave, 24_000, subtype="FLOAT")
        records.append(Record(id=name, audio_path=str(tmp_path / f"{name}.wav"), caption=name,
                              duration=len(wave) / 24_000))
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), records)
    result = run_embed(state, EmbedConfig(audio_encoder="muq", model=str(tiny_mulan_10s), manifest="lib",
                                          aggregation="mean", num_workers=0, device="cpu", precision="fp32"))
    assert result.n_ok == 3 and result.n_failed == 0
    enc = build_encoder("muq", EncoderOptions(model=str(tiny_mulan_10s)), CPU)
    with EmbeddingStore(result.path) as st, torch.inference_mode():
        assert st.attrs["window"] == 10.0 and st.attrs["encoder_version"] == "2"
        for name, wave in waves.items():
            reference = enc._model(wavs=torch.from_numpy(wave)[None])[0].numpy()
            np.testing.assert_allclose(st.get([name])[0], reference, atol=1e-5, rtol=0)
        # `search --like FILE` embeds a file as the stage did (the same clips, the last one wrapped).
        from musiccli.encoders.single import embed_file

        like = embed_file(tmp_path / "long.wav", st.attrs)
        np.testing.assert_allclose(like, st.get(["long"])[0], atol=1e-5, rtol=0)


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


@pytest.mark.slow
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
