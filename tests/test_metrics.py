"""Retrieval and tag metrics against naive reference code on seeded random data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from musiccli.metrics import (
    ranks_multi,
    ranks_of_targets,
    retrieval_metrics,
    summarize_ranks,
    tag_metrics,
)


# --------------------------------------------------------------------------- naive references
def naive_rank(scores: list[float], relevant: set[int]) -> int:
    """1-based rank of the best relevant item by sorting; ties go against the target.

    Sort by score descending and, among equal scores, put irrelevant items first.
    """
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j in relevant))
    for pos, j in enumerate(order, start=1):
        if j in relevant:
            return pos
    raise ValueError("no relevant item")


def naive_summary(ranks: list[int]) -> dict[str, float]:
    n = len(ranks)
    out = {f"R@{k}": sum(1 for r in ranks if r <= k) / n for k in (1, 5, 10)}
    out["mAP@10"] = sum(1.0 / r if r <= 10 else 0.0 for r in ranks) / n
    out["MRR"] = sum(1.0 / r for r in ranks) / n
    s = sorted(ranks)
    out["MedR"] = float(s[n // 2]) if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_same(a: dict[str, float], b: dict[str, float]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-12), k


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_text_to_music_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d = 60, 8
    audio = unit(rng.standard_normal((n, d)))
    targets = rng.permutation(n)
    text = unit(audio[targets] + 0.8 * rng.standard_normal((n, d)))  # noisy but informative pairing
    sim = text @ audio.T
    got = ranks_of_targets(sim, targets)
    want = [naive_rank(sim[i].tolist(), {int(targets[i])}) for i in range(n)]
    assert got.tolist() == want
    assert_same(summarize_ranks(got), naive_summary(want))
    assert min(want) >= 1  # 1-based


@pytest.mark.parametrize("seed", [0, 3])
def test_music_to_text_multi_relevant_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_audio, n_text, d = 25, 70, 6
    audio = unit(rng.standard_normal((n_audio, d)))
    # Every audio item gets at least one caption; the rest are spread at random.
    owner = np.concatenate([np.arange(n_audio), rng.integers(0, n_audio, n_text - n_audio)])
    text = unit(audio[owner] + rng.standard_normal((n_text, d)))
    res = retrieval_metrics(text, audio, owner)
    sim = text @ audio.T
    t2m = [naive_rank(sim[i].tolist(), {int(owner[i])}) for i in range(n_text)]
    m2t = [naive_rank(sim[:, j].tolist(), set(np.flatnonzero(owner == j).tolist())) for j in range(n_audio)]
    assert_same(res["text_to_music"], naive_summary(t2m))
    assert_same(res["music_to_text"], naive_summary(m2t))
    # ranks_multi directly, on the transposed similarity.
    rel = [np.flatnonzero(owner == j) for j in range(n_audio)]
    assert ranks_multi(sim.T, rel).tolist() == m2t


def test_perfect_and_reversed_rankings() -> None:
    n = 20
    perfect = np.eye(n) + 0.0
    r = summarize_ranks(ranks_of_targets(perfect, np.arange(n)))
    assert r == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP@10": 1.0, "MRR": 1.0, "MedR": 1.0}
    # Each target scored lowest in its row: rank n for everyone.
    reversed_ = -np.eye(n) + np.arange(n)[None, :] * 1e-3
    ranks = ranks_of_targets(reversed_, np.arange(n))
    assert ranks.tolist() == [n] * n
    s = summarize_ranks(ranks)
    assert s["R@10"] == 0.0 and s["mAP@10"] == 0.0 and s["MedR"] == float(n)
    assert s["MRR"] == pytest.approx(1.0 / n)


def test_ties_count_against_the_target() -> None:
    # A constant scorer must not be rewarded: all items tie, so the target ranks last.
    sim = np.zeros((4, 4))
    assert ranks_of_targets(sim, np.arange(4)).tolist() == [4, 4, 4, 4]
    # Two relevant and two irrelevant items all tied: both irrelevant ones go first -> rank 3.
    assert ranks_multi(sim, [np.array([0, 1])] * 4).tolist() == [3, 3, 3, 3]
    assert naive_rank([0.0] * 4, {0, 1}) == 3
    # Two relevant items tied at the top: the best relevant item is at rank 1.
    assert ranks_multi(np.array([[0.9, 0.9, 0.1]]), [np.array([0, 1])]).tolist() == [1]
    # Partial tie: target ties with one other item above the rest -> rank 2.
    sim = np.array([[0.5, 0.5, 0.1]])
    assert ranks_of_targets(sim, np.array([0])).tolist() == [2]
    assert naive_rank([0.5, 0.5, 0.1], {0}) == 2


def test_map_at_10_is_reciprocal_rank_within_10() -> None:
    s = summarize_ranks(np.array([1, 2, 10, 11, 50]))
    assert s["mAP@10"] == pytest.approx((1 + 0.5 + 0.1 + 0 + 0) / 5)
    assert s["MRR"] == pytest.approx((1 + 0.5 + 0.1 + 1 / 11 + 1 / 50) / 5)
    assert s["MedR"] == 10.0
    assert s["R@1"] == 0.2 and s["R@5"] == 0.4 and s["R@10"] == 0.6


@pytest.mark.parametrize("seed", [0, 1])
def test_tag_metrics_macro_matches_per_tag_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, t = 80, 7
    labels = (rng.random((n, t)) < 0.3).astype(int)
    labels[:, 5] = 0
    labels[:3, 5] = 1              # only 3 positives: skipped
    labels[:, 6] = 1               # all positive: AUC undefined, skipped
    scores = labels * 0.5 + rng.standard_normal((n, t))
    tags = [f"tag{i}" for i in range(t)]
    res = tag_metrics(scores, labels, tags, min_positives=5)
    keep = [i for i in range(t) if 5 <= labels[:, i].sum() < n]
    assert keep == [0, 1, 2, 3, 4]
    roc = np.mean([roc_auc_score(labels[:, i], scores[:, i]) for i in keep])
    pr = np.mean([average_precision_score(labels[:, i], scores[:, i]) for i in keep])
    assert res["roc_auc"] == pytest.approx(roc, abs=1e-12)
    assert res["pr_auc"] == pytest.approx(pr, abs=1e-12)
    assert res["n_tags"] == 5 and res["skipped"] == 2
    assert set(res["per_tag_roc_auc"]) == {tags[i] for i in keep}


def test_tag_metrics_perfect_and_no_usable_tags() -> None:
    labels = np.zeros((10, 2), dtype=int)
    labels[:5, 0] = 1
    labels[5:, 1] = 1
    res = tag_metrics(labels.astype(float), labels, ["a", "b"])
    assert res["roc_auc"] == 1.0 and res["pr_auc"] == 1.0
    res = tag_metrics(np.zeros((10, 1)), np.zeros((10, 1), dtype=int), ["x"])
    assert res["n_tags"] == 0 and res["skipped"] == 1 and np.isnan(res["roc_auc"])
