"""Losses: finite, low when aligned and high when shuffled, symmetric, and checked against naive code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from musiccli.training.losses import LOSSES, LossConfig, build_loss, listmle


def _aligned(b: int = 12, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(b, d, generator=g) * 2
    return audio.clone(), audio


def _call(name: str, text: torch.Tensor, audio: torch.Tensor, cfg: LossConfig | None = None):
    loss_fn = build_loss(name, cfg)
    # distillation compares a student with a teacher; here the "teacher" is the aligned target
    kw = {"teacher_z": audio} if name == "distillation" else {}
    return loss_fn(text, audio, **kw)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_is_finite_and_prefers_alignment(name):
    text, audio = _aligned()
    aligned, parts = _call(name, text, audio)
    shuffled, _ = _call(name, text[torch.roll(torch.arange(len(text)), 1)], audio)
    assert torch.isfinite(aligned) and torch.isfinite(shuffled)
    assert parts and all(math.isfinite(v) for v in parts.values())
    assert float(aligned) < 0.5 * float(shuffled)
    if name in ("mse", "distillation", "triplet"):
        assert float(aligned) == pytest.approx(0.0, abs=1e-6)


def test_gradients_flow_to_text():
    for name in LOSSES:
        text = torch.randn(8, 6, requires_grad=True)
        audio = torch.randn(8, 6)
        loss, _ = _call(name, text, audio)
        loss.backward()
        assert text.grad is not None and text.grad.abs().sum() > 0, name


def test_infonce_is_symmetric_and_matches_naive_clip():
    text, audio = torch.randn(10, 8), torch.randn(10, 8)
    loss_fn = build_loss("infonce", LossConfig(temperature=0.1))
    ab, _ = loss_fn(text, audio)
    ba, _ = loss_fn(audio, text)
    assert float(ab) == pytest.approx(float(ba), rel=1e-6)
    t = text / text.norm(dim=1, keepdim=True)
    a = audio / audio.norm(dim=1, keepdim=True)
    sim = (t @ a.T).numpy() / 0.1
    naive = 0.0
    for i in range(10):
        naive += -(sim[i, i] - np.log(np.exp(sim[i]).sum())) / 20
        naive += -(sim[i, i] - np.log(np.exp(sim[:, i]).sum())) / 20
    assert float(ab) == pytest.approx(naive, rel=1e-5)


def test_learnable_temperature_is_clamped_after_the_step_not_in_forward():
    from musiccli.training.losses import MAX_LOGIT_SCALE, clamp_temperatures

    loss_fn = build_loss("infonce", LossConfig(learn_temperature=True))
    params = list(loss_fn.parameters())
    assert len(params) == 1
    loss, parts = loss_fn(torch.randn(8, 4), torch.randn(8, 4))
    loss.backward()
    assert params[0].grad is not None and params[0].grad.abs() > 0
    assert parts["temperature"] == pytest.approx(0.07, rel=1e-5)
    with torch.no_grad():
        params[0].fill_(10.0)  # exp(10) ~ 22000: far beyond the 1/100 bound
    params[0].grad = None
    loss, _ = loss_fn(torch.randn(8, 4), torch.randn(8, 4))
    loss.backward()
    # Beyond the bound the forward pass still gives a gradient (a clamp inside forward would zero it) ...
    assert params[0].grad.abs() > 0
    # ... and the clamp after the optimizer step brings the value back into [0, log 100].
    clamp_temperatures(loss_fn)
    assert params[0].item() == pytest.approx(MAX_LOGIT_SCALE)
    with torch.no_grad():
        params[0].fill_(-3.0)
    clamp_temperatures(loss_fn)
    assert params[0].item() == 0.0
    fixed = build_loss("infonce", LossConfig(learn_temperature=False))
    assert not list(fixed.parameters())
    # Out-of-range configured temperatures are clamped once, at construction.
    _, parts = build_loss("infonce", LossConfig(temperature=0.001))(torch.randn(4, 3), torch.randn(4, 3))
    assert parts["temperature"] == pytest.approx(0.01, rel=1e-5)


def test_distillation_kl_temperature_stays_fixed():
    loss_fn = build_loss("distillation", LossConfig(learn_temperature=True))
    assert not list(loss_fn.parameters())


def _naive_masked_infonce(t: np.ndarray, a: np.ndarray, keys: np.ndarray, scale: float) -> float:
    """Loop-based InfoNCE where items sharing a caption or a recording key are not negatives."""
    b = len(t)
    sim = (t @ a.T) * scale
    total = 0.0
    for i in range(b):
        for direction in (sim[i, :], sim[:, i]):
            denom = 0.0
            for j in range(b):
                shared = j != i and (keys[i, 0] == keys[j, 0] or keys[i, 1] == keys[j, 1])
                if not shared:
                    denom += math.exp(direction[j])
            total += -(direction[i] - math.log(denom)) / (2 * b)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_infonce_matches_loop_reference(seed: int):
    rng = np.random.default_rng(seed)
    b = 12
    text, audio = torch.from_numpy(rng.standard_normal((b, 6))), torch.from_numpy(rng.standard_normal((b, 6)))
    keys = np.stack([rng.integers(0, 5, b), rng.integers(0, 8, b) + 100], axis=1).astype(np.int64)
    loss_fn = build_loss("infonce", LossConfig(temperature=0.2))
    got, _ = loss_fn(text, audio, keys=torch.from_numpy(keys))
    t = (text / text.norm(dim=1, keepdim=True)).float().numpy()
    a = (audio / audio.norm(dim=1, keepdim=True)).float().numpy()
    assert float(got) == pytest.approx(_naive_masked_infonce(t, a, keys, 5.0), rel=1e-5)
    # Unique keys mask nothing: the plain CLIP loss.
    unique = torch.from_numpy(np.stack([np.arange(b), np.arange(b) + 100], axis=1))
    plain, _ = loss_fn(text, audio)
    assert float(loss_fn(text, audio, keys=unique)[0]) == pytest.approx(float(plain), rel=1e-6)
    # The combined loss passes the keys on.
    comb = build_loss("combined", LossConfig(temperature=0.2, mse_weight=0.0))
    assert float(comb(text, audio, keys=torch.from_numpy(keys))[0]) == pytest.approx(float(got), rel=1e-6)


def test_pair_keys_mark_same_caption_and_same_recording(tmp_path):
    from musiccli import store as store_mod
    from musiccli.manifest import Record
    from musiccli.store import EmbeddingStore
    from musiccli.training.data import PairDataset, Split

    recs = [Record(id=f"r{i}", audio_path="/x", caption=c, duration=1.0, group=g)
            for i, (c, g) in enumerate([("A Rock track", None), ("A Rock track", None), ("calm", "yt:1"),
                                        ("quiet", "yt:1")])]
    path = tmp_path / "s.h5"
    store_mod.write_part(path, 0, [r.id for r in recs], np.eye(4, dtype=np.float32))
    store_mod.assemble(path, 4, "float32", {"encoder": "fake", "dim": 4}, 1)
    with EmbeddingStore(path) as st:
        ds = PairDataset(Split("train", recs, st.positions([r.id for r in recs])), st, np.zeros(4), np.ones(4), 0)
        texts, _ = ds.batch([0, 1, 2, 3])
        keys = ds.pair_keys([0, 1, 2, 3], texts)
    assert keys.shape == (4, 2) and keys.dtype == np.int64
    assert keys[0, 0] == keys[1, 0] and keys[0, 1] != keys[1, 1]      # same caption, two recordings
    assert keys[2, 1] == keys[3, 1] and keys[2, 0] != keys[3, 0]      # same recording, two captions


def _naive_listmle(scores: np.ndarray, order: np.ndarray) -> float:
    total = 0.0
    for row, perm in zip(scores, order):
        s = row[perm]
        for k in range(len(s)):
            total += -(s[k] - np.log(np.exp(s[k:]).sum()))
    return total / len(scores)


def test_listmle_matches_naive_reference():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((4, 5))
    order = np.stack([rng.permutation(5) for _ in range(4)])
    got = listmle(torch.tensor(scores), torch.tensor(order))
    assert float(got) == pytest.approx(_naive_listmle(scores, order), rel=1e-9)


def test_listmle_loss_uses_audio_similarity_order():
    text, audio = torch.randn(6, 8, dtype=torch.float64).float(), torch.randn(6, 8)
    loss_fn = build_loss("listmle", LossConfig(temperature=0.5))
    got, _ = loss_fn(text, audio)
    t = (text / text.norm(dim=1, keepdim=True)).numpy()
    a = (audio / audio.norm(dim=1, keepdim=True)).numpy()
    aa = a @ a.T
    np.fill_diagonal(aa, np.inf)
    order = np.argsort(-aa, axis=1, kind="stable")
    assert (order[:, 0] == np.arange(6)).all()  # the paired audio ranks first
    expected = _naive_listmle((t @ a.T) / 0.5, order) / 6
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_triplet_uses_hardest_negative():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    audio = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # text 0's negative has cosine 0.6, text 1's 0.0
    loss, _ = build_loss("triplet", LossConfig(margin=0.5))(text, audio)
    # t2a: [relu(.5 - 1 + .6), relu(.5 - .8 + 0)] = [.1, 0]; a2t: [relu(.5 - 1 + 0), relu(.5 - .8 + .6)] = [0, .3]
    assert float(loss) == pytest.approx((0.05 + 0.15) / 2, abs=1e-6)


def test_combined_is_infonce_plus_weighted_mse():
    text, audio = torch.randn(8, 5), torch.randn(8, 5)
    cfg = LossConfig(mse_weight=0.3)
    comb, parts = build_loss("combined", cfg)(text, audio)
    nce, _ = build_loss("infonce", cfg)(text, audio)
    mse, _ = build_loss("mse", cfg)(text, audio)
    assert float(comb) == pytest.approx(float(nce) + 0.3 * float(mse), rel=1e-6)
    assert set(parts) >= {"infonce", "mse"}


def test_distillation_kl_is_optional_and_requires_teacher():
    from musiccli.errors import MtxError

    student, teacher, audio = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
    no_kl, parts = build_loss("distillation", LossConfig(distill_kl_weight=0.0))(student, audio, teacher_z=teacher)
    assert "distill_kl" not in parts
    assert float(no_kl) == pytest.approx(float(((student - teacher) ** 2).mean()), rel=1e-6)
    with_kl, parts = build_loss("distillation")(student, audio, teacher_z=teacher)
    assert parts["distill_kl"] > 0 and float(with_kl) > float(no_kl)
    cos, parts = build_loss("distillation", LossConfig(distill_metric="cosine", distill_kl_weight=0))(
        student, audio, teacher_z=2 * student)
    assert float(cos) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(MtxError):
        build_loss("distillation")(student, audio)


def test_registry_unknown_name_lists_choices():
    from musiccli.cli.train import LOSS_NAMES
    from musiccli.errors import MtxError

    with pytest.raises(MtxError) as err:
        build_loss("hinge")
    assert "unknown loss 'hinge'" in err.value.message
    for name in LOSSES:
        assert name in err.value.hint
    assert set(LOSS_NAMES) == set(LOSSES)  # the CLI's help text lists exactly the registry
