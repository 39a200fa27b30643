"""CLAP against transformers' own ``ClapProcessor`` + ``ClapModel``, and the text-tower health check.

Tiny CLAPs are built from configs, ``save_pretrained`` to a temp dir and loaded through mtx's
real paths (``build_encoder("clap", --model DIR)``, ``load_native_text_model``). The reference
is transformers' own pipeline on the same checkpoint:

- audio: the ``ClapProcessor``'s feature extractor -> ``ClapModel.get_audio_features`` (as the
  ``get_audio_features`` docs call it; ``ClapProcessor.__call__(audio=...)`` itself, in
  transformers 5.24, forwards the tokenizer's ``model_max_length`` as the extractor's
  ``max_length``, in samples, and so cuts the audio to 128 samples here),
  for a ``rand_trunc`` extractor (Slaney filterbank) and a ``fusion`` one (HTK filterbank,
  4-channel input, a fusion-enabled audio tower). The processor marks one random clip of a
  fusion batch ``is_longer`` when none is (a training-time trick); mtx passes ``is_longer =
  False`` for every window (they are cut to the extractor's length), so the reference is the
  processor's features with ``is_longer`` False, and equals the processor's own output for
  every clip it did not mark. Tolerance 1e-5.
- text + pooling: ``ClapModel.forward``'s ``logits_per_text / logit_scale_t``, the cosine of the
  normalised text and audio embeddings per window. mtx stores the mean of the unit window
  vectors and ranks by its cosine with the text, so its score is the mean of the reference's
  per-window cosines divided by the norm of that mean (a per-track constant; ranking over
  windows of equal count is unchanged only for the mean itself, so both are checked).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musiccli.encoders import EncoderOptions, build_encoder
from musiccli.encoders.base import aggregate
from musiccli.errors import MtxError
from musiccli.runtime import select_runtime
from musiccli.text_health import PROMPTS, THRESHOLD, check_text_tower, mean_pairwise_cosine

CPU = select_runtime("cpu", "fp32")
SR = 48_000


def _config(tok, fusion: bool):
    from transformers import ClapConfig

    return ClapConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                         projection_dim=8),
        audio_config=dict(depths=[1, 1], num_attention_heads=[1, 2], embed_dim=8, hidden_size=16,
                          patch_embeds_hidden_size=8, window_size=4, spec_size=64, num_mel_bins=16,
                          projection_dim=8, patch_stride=(4, 4), patch_size=4, enable_fusion=fusion),
        projection_dim=8)


def _save_clap(out: Path, fusion: bool, collapse: bool = False) -> Path:
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel, ClapProcessor

    from musiccli.encoders.text import resolve_backbone

    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    model = ClapModel(_config(tok, fusion))
    if collapse:
        # What both public reports measured on laion/larger_clap_music: the text representation
        # barely depends on the input (pooler output std 0.005, MTEB #5069) and the text projection
        # has zero biases and weights of std 0.006 (plyr.fm #854). Here the pooler's weights get
        # std 0.006 (its bias stays), so every text pools to ~tanh(bias), and the projection's
        # biases are zeroed and its weights scaled to std 0.006.
        with torch.no_grad():
            pooler = model.text_model.pooler.dense
            pooler.weight.normal_(0.0, 0.006)
            pooler.bias.uniform_(0.5, 1.0)
            for lin in (model.text_projection.linear1, model.text_projection.linear2):
                lin.weight.normal_(0.0, 0.006)
                lin.bias.zero_()
    model.save_pretrained(out)
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=SR, hop_length=480, max_length_s=1,
                                     fft_window_size=256, truncation="fusion" if fusion else "rand_trunc",
                                     padding="repeatpad")
    ClapProcessor(feature_extractor=extractor, tokenizer=tok).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fused_clap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_clap(tmp_path_factory.mktemp("clap-fusion"), fusion=True)


@pytest.fixture(scope="module")
def collapsed_clap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_clap(tmp_path_factory.mktemp("clap-collapsed"), fusion=False, collapse=True)


def _waves(n: int = 4, seconds: float = 1.0, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(SR * seconds)) / SR
    tones = torch.stack([torch.sin(2 * torch.pi * 220 * (i + 1) * t) for i in range(n)])
    return (0.3 * tones + 0.05 * torch.randn(n, t.numel(), generator=g)).float()


def _reference_audio(path: Path, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(transformers with is_longer False, the processor's own is_longer) for ``waves``."""
    from transformers import ClapModel, ClapProcessor

    proc = ClapProcessor.from_pretrained(path)
    model = ClapModel.from_pretrained(path).eval()
    feats = proc.feature_extractor(list(waves.numpy()), sampling_rate=SR, return_tensors="pt")
    with torch.inference_mode():
        if "is_longer" in feats:
            fixed = model.get_audio_features(input_features=feats["input_features"],
                                             is_longer=torch.zeros_like(feats["is_longer"])).pooler_output
            return fixed, feats["is_longer"][:, 0]
        return model.get_audio_features(input_features=feats["input_features"]).pooler_output, None


@pytest.mark.parametrize("kind", ["rand_trunc", "fusion"])
def test_audio_equals_clap_processor_and_model(kind: str, tiny_clap: Path, fused_clap: Path) -> None:
    from transformers import ClapFeatureExtractor, ClapModel

    path = tiny_clap if kind == "rand_trunc" else fused_clap
    ext = ClapFeatureExtractor.from_pretrained(path)
    assert ext.truncation == kind
    # fusion computes its mel with the HTK filterbank, rand_trunc with Slaney's: not the same features.
    assert not np.allclose(ext.mel_filters, ext.mel_filters_slaney)
    waves = _waves()
    ours = build_encoder("clap", EncoderOptions(model=str(path)), CPU).embed_windows(waves)
    ref, marked = _reference_audio(path, waves)
    torch.testing.assert_close(ours, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)
    if kind == "fusion":
        # The processor itself marked one random clip "longer"; every other clip equals its own output.
        assert int(marked.sum()) == 1
        from transformers import ClapProcessor

        feats = ClapProcessor.from_pretrained(path).feature_extractor(list(waves.numpy()), sampling_rate=SR,
                                                                      return_tensors="pt")
        with torch.inference_mode():
            own = ClapModel.from_pretrained(path).eval().get_audio_features(**feats).pooler_output
        keep = ~feats["is_longer"][:, 0]
        torch.testing.assert_close(ours[keep], own[keep], atol=1e-5, rtol=1e-5)


def test_text_and_window_pooling_against_clap_model_forward(tiny_clap: Path) -> None:
    """Native text tower + stored mean of unit window vectors vs ClapModel.forward's cosines."""
    from transformers import ClapModel, ClapProcessor

    from musiccli.encoders.native_text import load_native_text_model

    texts = ["calm piano", "loud rock with drums", "a jazz trio", "ambient drone"]
    waves = _waves(n=3)
    enc = build_encoder("clap", EncoderOptions(model=str(tiny_clap)), CPU)
    windows = enc.embed_windows(waves).numpy()
    track = aggregate(windows, "mean")            # what `mtx embed` stores for a 3-window track
    text = load_native_text_model("clap", model=str(tiny_clap), allow_degenerate=True)
    q = text.encode(texts)
    scores = q @ text.audio_for_retrieval(track[None])[0]   # what search ranks by

    proc = ClapProcessor.from_pretrained(tiny_clap)
    model = ClapModel.from_pretrained(tiny_clap).eval()
    inputs = {**proc.tokenizer(texts, padding=True, return_tensors="pt"),
              **proc.feature_extractor(list(waves.numpy()), sampling_rate=SR, return_tensors="pt")}
    inputs.pop("token_type_ids", None)
    inputs.pop("is_longer", None)
    with torch.inference_mode():
        out = model(**inputs)
    per_window = (out.logits_per_text / model.logit_scale_t.detach().exp()).numpy()   # [texts, windows] cosines
    np.testing.assert_allclose(q, out.text_embeds.numpy() / np.linalg.norm(out.text_embeds.numpy(), axis=1,
                                                                            keepdims=True), atol=1e-5)
    # Reference pooling named here: the mean of the unit window vectors, then L2. Its score is the mean
    # of the reference's per-window cosines over the norm of the mean vector.
    np.testing.assert_allclose(scores, per_window.mean(1) / np.linalg.norm(track), atol=1e-5)
    # The other pooling (mean of the raw projections, then L2) is a different vector in general.
    with torch.inference_mode():
        raw = model.audio_projection(model.audio_model(input_features=inputs["input_features"]).pooler_output)
    raw_mean = torch.nn.functional.normalize(raw.mean(0), dim=-1).numpy()
    assert np.abs(raw_mean - track / np.linalg.norm(track)).max() > 1e-4


# --------------------------------------------------------------------------- text-tower health
def test_mean_pairwise_cosine_against_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 5))
    naive = [v[i] @ v[j] / np.linalg.norm(v[i]) / np.linalg.norm(v[j]) for i in range(6) for j in range(6) if i != j]
    assert mean_pairwise_cosine(v) == pytest.approx(np.mean(naive), abs=1e-12)
    assert mean_pairwise_cosine(np.ones((4, 3))) == pytest.approx(1.0)


def test_collapsed_tower_is_refused_with_one_line_and_a_hint(collapsed_clap: Path, tiny_clap: Path) -> None:
    from musiccli.encoders.native_text import load_native_text_model

    with pytest.raises(MtxError) as err:
        load_native_text_model("clap", model=str(collapsed_clap))
    assert str(collapsed_clap) in err.value.message and "\n" not in err.value.message
    assert "--allow-degenerate-text" in err.value.hint
    forced = load_native_text_model("clap", model=str(collapsed_clap), allow_degenerate=True)
    assert forced.text_health > THRESHOLD
    healthy = load_native_text_model("clap", model=str(tiny_clap))
    assert healthy.text_health < 0.9
    # The figure is a property of the embeddings: the same as measuring the tower's output directly.
    assert check_text_tower(healthy.encode, "tiny") == pytest.approx(mean_pairwise_cosine(healthy.encode(PROMPTS)))


def test_search_refuses_a_collapsed_native_tower_unless_allowed(state, tmp_path: Path, collapsed_clap: Path,
                                                                 cli) -> None:
    from test_native_text_search import _embed_library

    _embed_library(state, tmp_path, collapsed_clap, n=2)
    bad = cli("search", "calm piano", "--text-model", "native", "--audio-encoder", "clap")
    assert bad.exit_code == 1 and "degenerate" in bad.output and str(collapsed_clap.name) in bad.output
    assert "--allow-degenerate-text" in bad.output
    ok = cli("search", "calm piano", "--text-model", "native", "--audio-encoder", "clap", "--allow-degenerate-text")
    assert ok.exit_code == 0, ok.output
