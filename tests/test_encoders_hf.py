"""Transformers-backed encoders (MERT, CLAP, MusicGen) and CLAP's native text tower.

Every model is tiny, built from a config, ``save_pretrained`` to a temp dir and loaded by
the encoder through its real ``from_pretrained`` call (``--model <dir>``); ``tiny_clap`` is
shared through tests/conftest.py (search and eval use its text tower too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musiccli.encoders import EncoderOptions, aggregate, build_encoder, encoder_names
from musiccli.errors import MtxError
from musiccli.runtime import select_runtime

CPU = select_runtime("cpu", "fp32")


# --------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def tiny_mert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer HuBERT (MERT-v1 is a HuBERT-style model) + a normalising 24 kHz feature extractor."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    out = tmp_path_factory.mktemp("tiny-mert")
    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2, feat_extract_norm="layer")
    HubertModel(cfg).save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=24_000, do_normalize=True).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_musicgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny MusicGen: 1-layer T5 text encoder, 32 kHz EnCodec with 2 codebooks of 16, 2-layer decoder."""
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, T5Config)

    out = tmp_path_factory.mktemp("tiny-musicgen")
    torch.manual_seed(0)
    cfg = MusicgenConfig(
        text_encoder=T5Config(vocab_size=50, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2).to_dict(),
        # hop 32 -> 1000 frames/s; 4 bits per code; 8 kbps -> 2 codebooks, as many as the decoder reads.
        audio_encoder=EncodecConfig(sampling_rate=32_000, audio_channels=1, num_filters=4, upsampling_ratios=[8, 4],
                                    hidden_size=8, codebook_size=16, num_lstm_layers=1, target_bandwidths=[8.0],
                                    codebook_dim=8).to_dict(),
        decoder=MusicgenDecoderConfig(vocab_size=16, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                      num_attention_heads=2, num_codebooks=2, pad_token_id=16, bos_token_id=16,
                                      max_position_embeddings=512).to_dict(),
        decoder_start_token_id=16, pad_token_id=16)
    MusicgenForConditionalGeneration(cfg).save_pretrained(out)
    return out


def _windows(sr: int, n: int = 3, seconds: float = 0.5, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(sr * seconds)) / sr
    tones = torch.stack([torch.sin(2 * torch.pi * (110 * (i + 1)) * t) for i in range(n)])
    return (0.3 * tones + 0.05 * torch.randn(n, t.numel(), generator=g)).float()


def _check_batch_invariant(enc, x: torch.Tensor) -> torch.Tensor:
    """Batch of many == batches of one, deterministic, float32 [B, window_dim]."""
    many = enc.embed_windows(x)
    ones = torch.cat([enc.embed_windows(x[i:i + 1]) for i in range(len(x))])
    assert many.dtype == torch.float32 and many.shape == (len(x), enc.window_dim)
    assert torch.isfinite(many).all()
    torch.testing.assert_close(many, ones, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.embed_windows(x), many, atol=0, rtol=0)
    return many


# --------------------------------------------------------------------------- registry
def test_registry_lists_encoders_and_refuses_unknown() -> None:
    names = encoder_names()
    for name in ("mert", "clap", "musicgen", "muq", "music2latent"):
        assert name in names
    with pytest.raises(MtxError) as e:
        build_encoder("wav2vec9", EncoderOptions(), CPU)
    assert "wav2vec9" in e.value.message and "mert" in e.value.hint and "clap" in e.value.hint


def test_building_loads_nothing_and_bad_model_is_one_clear_error(tmp_path: Path) -> None:
    enc = build_encoder("mert", EncoderOptions(model=str(tmp_path / "nowhere")), CPU)   # no I/O yet
    assert enc.model_id == str(tmp_path / "nowhere")
    with pytest.raises(MtxError) as e:
        _ = enc.window_dim
    assert "nowhere" in e.value.message and "--model" in e.value.hint


# --------------------------------------------------------------------------- MERT
def test_mert_dims_layers_and_identity(tiny_mert: Path) -> None:
    enc = build_encoder("mert", EncoderOptions(model=str(tiny_mert)), CPU)
    assert enc.window_dim == (2 + 1) * 16                      # (layers + 1) x hidden
    assert enc.dim("stats") == 3 * 48 and enc.dim("mean") == 48
    ident = enc.identity()
    assert ident == {"encoder": "mert", "encoder_version": "1", "model_id": str(tiny_mert), "layers": None}

    sub = build_encoder("mert", EncoderOptions(model=str(tiny_mert), layers=[0, -1]), CPU)
    assert sub.window_dim == 2 * 16 and sub.identity()["layers"] == [0, 2]
    with pytest.raises(MtxError) as e:
        _ = build_encoder("mert", EncoderOptions(model=str(tiny_mert), layers=[3]), CPU).window_dim
    assert "0..2" in e.value.message


@pytest.mark.slow
def test_mert_embeds_layer_major_and_batch_invariant(tiny_mert: Path) -> None:
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    enc = build_encoder("mert", EncoderOptions(model=str(tiny_mert)), CPU)
    x = _windows(24_000)
    full = _check_batch_invariant(enc, x)

    # Reference: the model card's own recipe (feature extractor + AutoModel), pooled per layer.
    fe = Wav2Vec2FeatureExtractor.from_pretrained(tiny_mert, trust_remote_code=True)
    model = AutoModel.from_pretrained(tiny_mert, trust_remote_code=True).eval()
    inputs = fe(list(x.numpy()), sampling_rate=24_000, return_tensors="pt")
    with torch.no_grad():
        states = model(inputs["input_values"], output_hidden_states=True).hidden_states
    ref = torch.cat([h.mean(1) for h in states], dim=1)
    torch.testing.assert_close(full, ref, atol=1e-4, rtol=1e-4)

    sub = build_encoder("mert", EncoderOptions(model=str(tiny_mert), layers=[2, 0]), CPU)
    torch.testing.assert_close(sub.embed_windows(x), torch.cat([full[:, 32:48], full[:, 0:16]], 1))
    # stats over the windows of one track: 3 x 48
    assert aggregate(full.numpy(), "stats").shape == (enc.dim("stats"),)


@pytest.mark.parametrize("stable", [False, True])
def test_mert_state_walk_matches_transformers_hidden_states(stable: bool) -> None:
    """Our layer-by-layer walk (independent of the encoder's return conventions) == transformers' states."""
    from transformers import HubertConfig, HubertModel

    from musiccli.encoders.mert import hidden_states

    torch.manual_seed(0)
    model = HubertModel(HubertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2),
                                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                     feat_extract_norm="layer" if stable else "group",
                                     do_stable_layer_norm=stable)).eval()
    x = _windows(24_000, n=2, seconds=0.2)
    with torch.no_grad():
        ours = hidden_states(model, x)
        out = model(x, output_hidden_states=True)
    assert len(ours) == len(out.hidden_states) == 3
    for a, b in zip(ours[:-1], out.hidden_states[:-1]):
        torch.testing.assert_close(a, b)
    # The last state is the encoder output, layer-normed in the stable variant as transformers 4.x
    # reported it (5.x's recorded last state skips that final norm).
    torch.testing.assert_close(ours[-1], out.last_hidden_state)


# --------------------------------------------------------------------------- CLAP
def test_clap_unit_vectors_batch_invariant_and_deterministic_crop(tiny_clap: Path) -> None:
    enc = build_encoder("clap", EncoderOptions(model=str(tiny_clap)), CPU)
    assert enc.spec.default_aggregation == "mean"
    assert enc.window_dim == 8 and enc.dim("mean") == 8 and enc.dim("stats") == 24
    x = _windows(48_000, seconds=1.0)
    z = _check_batch_invariant(enc, x)
    np.testing.assert_allclose(z.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    # A window longer than the extractor's 1 s is cut to its first second, never randomly cropped.
    longer = torch.cat([x, _windows(48_000, seconds=0.5, seed=7)], dim=1)
    torch.testing.assert_close(enc.embed_windows(longer), z, atol=1e-6, rtol=1e-6)


def test_clap_native_text_tower(tiny_clap: Path) -> None:
    from musiccli.encoders.native_text import load_native_text_model

    text = load_native_text_model("clap", model=str(tiny_clap))
    assert text.dim == 8
    texts = ["calm piano", "loud rock with drums", "a jazz trio"]
    q = text.encode(texts, batch_size=2)
    assert q.shape == (3, 8) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(text.encode(texts, batch_size=3), q, atol=1e-5)
    raw = text.encode(texts, space="audio")
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), q, atol=1e-5)
    assert text.encode([]).shape == (0, 8)
    with pytest.raises(MtxError):
        text.encode(texts, space="nowhere")

    # Stored vectors: mean (8) or stats (24, mean first) -> unit vectors of the mean part.
    rng = np.random.default_rng(0)
    stats = rng.normal(size=(4, 24)).astype(np.float32)
    a = text.audio_for_retrieval(stats)
    np.testing.assert_allclose(a, stats[:, :8] / np.linalg.norm(stats[:, :8], axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(text.audio_for_retrieval(stats[:, :8]), a, atol=1e-6)
    with pytest.raises(MtxError):
        text.audio_for_retrieval(stats[:, :10])


def test_native_text_refuses_encoders_without_a_tower() -> None:
    from musiccli.encoders.native_text import load_native_text_model

    with pytest.raises(MtxError) as e:
        load_native_text_model("mert")
    assert "no native text tower" in e.value.message and "clap" in e.value.hint and "muq" in e.value.hint
    with pytest.raises(MtxError) as e:
        load_native_text_model("nope")
    assert "not a known audio encoder" in e.value.message


# --------------------------------------------------------------------------- MusicGen
@pytest.mark.slow
def test_musicgen_decoder_states(tiny_musicgen: Path) -> None:
    from musiccli.encoders.musicgen import delay_pattern

    enc = build_encoder("musicgen", EncoderOptions(model=str(tiny_musicgen)), CPU)
    assert enc.spec.default_aggregation == "mean"
    assert enc.window_dim == 16 and enc.identity()["layers"] == [2]
    x = _windows(32_000, seconds=0.25)
    last = _check_batch_invariant(enc, x)

    every = build_encoder("musicgen", EncoderOptions(model=str(tiny_musicgen), layers=[0, 1, 2]), CPU)
    assert every.window_dim == 3 * 16
    torch.testing.assert_close(every.embed_windows(x)[:, 32:], last)

    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])
    assert delay_pattern(codes, pad_id=9, start_id=8).tolist() == [[[8, 1, 2, 3, 9], [8, 9, 4, 5, 6]]]


# --------------------------------------------------------------------------- reduced precision
@pytest.mark.parametrize("name, sr", [("mert", 24_000), ("musicgen", 32_000), ("clap", 48_000)])
@pytest.mark.slow
def test_autocast_bf16_returns_float32_close_to_fp32(name: str, sr: int, request: pytest.FixtureRequest) -> None:
    """As the embed stage calls encoders on a GPU: inference_mode + the runtime's autocast (bf16 here, on CPU)."""
    model = request.getfixturevalue(f"tiny_{name}")
    x = _windows(sr, n=2, seconds=1.0 if name == "clap" else 0.25)
    ref = build_encoder(name, EncoderOptions(model=str(model)), CPU).embed_windows(x)
    bf16 = select_runtime("cpu", "bf16")
    enc = build_encoder(name, EncoderOptions(model=str(model)), bf16)
    with torch.inference_mode(), bf16.autocast():
        z = enc.embed_windows(x)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    cos = torch.nn.functional.cosine_similarity(z, ref, dim=-1)
    assert (cos > 0.98).all(), cos


# --------------------------------------------------------------------------- the embed stage
def _manifest(state, tmp_path: Path, n: int = 3) -> str:
    from musiccli.audio import write_audio
    from musiccli.manifest import Record, write_manifest

    recs = []
    for i in range(n):
        sr, secs = 16_000, 1.5 + 0.5 * i
        t = np.arange(int(sr * secs)) / sr
        wave = (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32)
        path = tmp_path / f"clip{i}.wav"
        write_audio(path, wave, sr)
        recs.append(Record(id=f"c{i}", audio_path=str(path), caption=f"tone {i}", duration=secs))
    path = state.manifest_path("tiny")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(path, recs)
    return "tiny"


def test_embed_stage_with_a_local_mert(state, tmp_path: Path, tiny_mert: Path) -> None:
    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.store import EmbeddingStore

    name = _manifest(state, tmp_path)
    cfg = EmbedConfig(audio_encoder="mert", manifest=name, model=str(tiny_mert), window=1.0, hop=1.0,
                      num_workers=0, device="cpu", precision="fp32")
    res = run_embed(state, cfg)
    assert res.n_ok == 3 and res.n_failed == 0 and res.dim == 3 * 48
    with EmbeddingStore(res.path) as st:
        assert st.dim == 144 and sorted(st.ids) == ["c0", "c1", "c2"]
        vecs = st.get(["c0", "c1", "c2"])
    assert vecs.shape == (3, 144) and np.isfinite(vecs).all()

    # Another layer choice is refused: first by the stage record (config differs) ...
    fewer = EmbedConfig(audio_encoder="mert", manifest=name, model=str(tiny_mert), layers=[0], window=1.0,
                        hop=1.0, num_workers=0, device="cpu", precision="fp32")
    with pytest.raises(MtxError) as e:
        run_embed(state, fewer)
    assert "layers" in str(e.value)
    # ... and, with the record gone, by the store itself: its dim (144) is not this run's (3 x 16).
    for record in Path(state.stages_dir).glob("*.json"):
        record.unlink()
    with pytest.raises(MtxError) as e:
        run_embed(state, fewer)
    assert "dim 144" in e.value.message and "dim 48" in e.value.message


def test_encoder_options_are_validated_and_part_of_the_identity():
    from musiccli.encoders import EncoderOptions, build_encoder
    from musiccli.errors import MtxError
    from musiccli.runtime import select_runtime

    rt = select_runtime("cpu")
    with pytest.raises(MtxError, match="encoder dsp has no option 'representation'"):
        build_encoder("dsp", EncoderOptions(extra={"representation": "latent"}), rt)
    enc = build_encoder("music2latent", EncoderOptions(extra={"representation": "latent"}), rt)
    assert enc.identity()["options"] == {"representation": "latent"}
    assert "options" not in build_encoder("dsp", EncoderOptions(), rt).identity()


def test_cli_encoder_option_needs_key_value(cli):
    r = cli("embed", "--encoder-option", "novalue")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_musicgen_equals_transformers_delay_pattern_and_decoder(tiny_musicgen: Path) -> None:
    """Reference: transformers' own MusicGen path on the same checkpoint: EnCodec codes, the decoder's
    ``build_delay_pattern_mask`` (what ``generate`` feeds the decoder), decoder states mean-pooled."""
    from transformers import MusicgenForConditionalGeneration

    enc = build_encoder("musicgen", EncoderOptions(model=str(tiny_musicgen), layers=[0, 2]), CPU)
    x = _windows(32_000, seconds=0.25)
    ours = enc.embed_windows(x)
    model = MusicgenForConditionalGeneration.from_pretrained(tiny_musicgen).eval()
    start, pad = model.config.decoder_start_token_id, model.config.decoder.pad_token_id
    assert start == pad   # as in facebook/musicgen-*: the delay pattern's leading pads are the start token
    with torch.no_grad():
        codes = model.audio_encoder.encode(x.unsqueeze(1)).audio_codes[0]          # [B, K, T]
        b, k, t = codes.shape
        prompt = torch.cat([torch.full((b, k, 1), start), codes], dim=-1).reshape(b * k, t + 1)
        _, ids = model.decoder.build_delay_pattern_mask(prompt, pad_token_id=pad, max_length=t + k)
        assert (ids >= 0).all()   # every position is given (no -1 left to generate)
        states = model.decoder(input_ids=ids, output_hidden_states=True).hidden_states
    ref = torch.cat([states[0].mean(1), states[2].mean(1)], dim=1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
