"""The retrieval protocol (musiccli.retrieval) against naive loop-based reference code on seeded random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from musiccli.manifest import Record
from musiccli.retrieval import (block_rows, caption_relevance, merge_tag_labels, music_to_text, rank_queries,
                                summarize, tag_metrics, tag_queries, tag_query_text, text_to_music)


# --------------------------------------------------------------------------- naive references
def naive_order(scores: list[float], relevant: set[int]) -> list[int]:
    """Items best first; among equal scores irrelevant items come first (ties count against the target)."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j in relevant))


def naive_query(scores: list[float], relevant: set[int]) -> tuple[int, float]:
    """(1-based rank of the first relevant item, AP@10) by walking the sorted list."""
    order = naive_order(scores, relevant)
    first, hits, precision_sum = None, 0, 0.0
    for pos, j in enumerate(order, start=1):
        if j in relevant:
            hits += 1
            first = first or pos
            if pos <= 10:
                precision_sum += hits / pos
    return first, precision_sum / min(len(relevant), 10)


def naive_metrics(queries: np.ndarray, items: np.ndarray, relevant: list[set[int]]) -> dict[str, float]:
    firsts, aps = [], []
    for q, rel in zip(queries, relevant):
        scores = [float(np.dot(q, x)) for x in items]
        f, a = naive_query(scores, rel)
        firsts.append(f)
        aps.append(a)
    n = len(firsts)
    out = {f"R@{k}": sum(1 for r in firsts if r <= k) / n for k in (1, 5, 10)}
    out["mAP@10"] = sum(aps) / n
    out["MRR"] = sum(1.0 / r for r in firsts) / n
    zero = sorted(r - 1 for r in firsts)
    med0 = float(zero[n // 2]) if n % 2 else (zero[n // 2 - 1] + zero[n // 2]) / 2
    out["MedR0"] = med0
    out["MedR"] = float(math.floor(med0) + 1)
    out["queries"] = n
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def assert_same(a: dict[str, float], b: dict[str, float]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9), k


def _random_case(seed: int, q: int = 40, n: int = 70, d: int = 8, max_rel: int = 14):
    rng = np.random.default_rng(seed)
    items = unit(rng.standard_normal((n, d)))
    relevant = [set(rng.choice(n, size=int(rng.integers(1, max_rel + 1)), replace=False).tolist())
                for _ in range(q)]
    # Informative queries: near the mean of their relevant items, plus noise.
    queries = unit(np.stack([items[sorted(r)].mean(0) for r in relevant]) + 0.7 * rng.standard_normal((q, d)))
    return queries, items, relevant


# --------------------------------------------------------------------------- ranking and metrics
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_multi_relevant_metrics_match_naive(seed: int) -> None:
    queries, items, relevant = _random_case(seed)
    got = summarize(rank_queries(queries, items, [np.array(sorted(r)) for r in relevant]))
    assert_same(got, naive_metrics(queries, items, relevant))


@pytest.mark.parametrize("block_bytes", [1, 3000, 40_000, 1 << 30])
def test_block_wise_ranking_equals_full_ranking(block_bytes: int) -> None:
    queries, items, relevant = _random_case(7, q=33, n=50)
    rel = [np.array(sorted(r)) for r in relevant]
    full = rank_queries(queries, items, rel, block_bytes=1 << 30)
    part = rank_queries(queries, items, rel, block_bytes=block_bytes)
    assert np.array_equal(full.first, part.first) and np.allclose(full.ap, part.ap, atol=1e-12)
    assert block_rows(50, 1) == 1 and block_rows(50, 1 << 30) > 33


def test_fewer_items_than_the_ap_depth() -> None:
    queries, items, relevant = _random_case(3, q=12, n=6, max_rel=4)
    got = summarize(rank_queries(queries, items, [np.array(sorted(r)) for r in relevant]))
    assert_same(got, naive_metrics(queries, items, relevant))


def test_ap_at_10_is_not_mrr_with_several_relevant_items() -> None:
    # Relevant items at ranks 1 and 10: AP@10 = (1/1 + 2/10) / 2 = 0.6, while MRR@10 would say 1.0.
    items = np.eye(12, dtype=np.float32)
    query = np.linspace(1.0, 0.0, 12, dtype=np.float32)[None, :]      # ranks item j at j + 1
    stats = rank_queries(query, items, [np.array([0, 9])])
    assert stats.first[0] == 1 and stats.ap[0] == pytest.approx(0.6)


def test_both_median_rank_conventions() -> None:
    items = np.eye(6, dtype=np.float32)
    order = np.linspace(1.0, 0.0, 6, dtype=np.float32)
    queries = np.stack([order] * 4)
    rel = [np.array([0]), np.array([1]), np.array([2]), np.array([5])]   # ranks 1, 2, 3, 6
    s = summarize(rank_queries(queries, items, rel))
    assert s["MedR0"] == 1.5             # median of 0-based ranks 0, 1, 2, 5 (TTMR)
    assert s["MedR"] == 2.0              # floor(1.5) + 1 (LAION-CLAP / open_clip)
    assert s["R@1"] == 0.25 and s["R@5"] == 0.75 and s["R@10"] == 1.0


def test_ties_count_against_the_target() -> None:
    items = np.array([[1.0, 0.0]] * 4, dtype=np.float32)   # four identical items
    stats = rank_queries(np.array([[1.0, 0.0]], dtype=np.float32), items, [np.array([2])])
    assert stats.first[0] == 4                             # the three tied irrelevant items rank above it
    stats = rank_queries(np.array([[1.0, 0.0]], dtype=np.float32), items, [np.array([1, 2])])
    assert stats.first[0] == 3 and stats.ap[0] == pytest.approx((1 / 3 + 2 / 4) / 2)


# --------------------------------------------------------------------------- relevance
def _rec(i: str, caption: str, alts=(), group=None) -> Record:
    return Record(id=i, audio_path="/x", caption=caption, duration=1.0, alt_captions=list(alts), group=group)


def test_relevance_by_caption_text_and_group() -> None:
    recs = [_rec("a", "A Rock track"), _rec("b", "A Rock track"), _rec("c", "calm piano", ["soft keys"], "yt:1"),
            _rec("d", "a piano piece", group="yt:1"), _rec("e", "soft keys")]
    rel = caption_relevance(recs, "main")
    t = {s: i for i, s in enumerate(rel.texts)}
    assert rel.texts == ["A Rock track", "calm piano", "soft keys", "a piano piece"]
    assert [rel.texts[q] for q in rel.queries] == ["A Rock track", "calm piano", "soft keys", "a piano piece"]
    assert rel.text_items[t["A Rock track"]].tolist() == [0, 1]             # repeated caption: both tracks
    assert rel.text_items[t["calm piano"]].tolist() == [2, 3]               # same recording (group)
    assert rel.text_items[t["soft keys"]].tolist() == [2, 3, 4]             # alt caption of c + e's main
    assert rel.item_texts[3].tolist() == [t["calm piano"], t["soft keys"], t["a piano piece"]]
    assert rel.main_item.tolist() == [0, 2, 4, 3] and rel.n_captions == 6
    every = caption_relevance([_rec("a", "x", ["y"]), _rec("b", "z")], "all")
    assert [every.texts[q] for q in every.queries] == ["x", "y", "z"]
    main = caption_relevance([_rec("a", "x", ["y"]), _rec("b", "z")], "main")
    assert [main.texts[q] for q in main.queries] == ["x", "z"]


def test_text_and_music_directions_match_naive() -> None:
    rng = np.random.default_rng(5)
    recs = [_rec(f"r{i}", f"caption {i % 9}", [f"alt {i}"] if i % 3 == 0 else [], group=f"g{i // 2}")
            for i in range(30)]
    rel = caption_relevance(recs, "all")
    audio = unit(rng.standard_normal((30, 6)))
    texts = unit(rng.standard_normal((len(rel.texts), 6)))
    t2m = text_to_music(texts[rel.queries], audio, rel)
    naive_rel = [{j for j, r in enumerate(recs) for k, s in enumerate(recs)
                  if rel.texts[q] in s.captions and (s.group == r.group)} for q in rel.queries]
    assert_same(t2m, naive_metrics(texts[rel.queries], audio, naive_rel))
    m2t = music_to_text(texts, audio, rel)
    naive_m2t = [{t for t in range(len(rel.texts)) if j in naive_rel[t]} for j in range(30)]
    assert_same(m2t, naive_metrics(audio, texts, naive_m2t))


# --------------------------------------------------------------------------- tags
@pytest.mark.parametrize("tag,text", [("mood/theme---calm", "calm"), ("genre---rock", "rock"),
                                      ("instrument---piano", "piano"), ("120 bpm", "120 bpm"), ("jazz", "jazz")])
def test_tag_query_text_is_the_cleaned_value(tag: str, text: str) -> None:
    assert tag_query_text(tag) == text


def test_tags_cleaning_to_one_text_are_one_query() -> None:
    texts, mapping, cols = tag_queries(["genre---rock", "mood/theme---calm", "rock"])
    assert texts == ["rock", "calm"] and mapping["rock"] == "rock" and cols == [[0, 2], [1]]
    labels = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    assert merge_tag_labels(labels, cols).tolist() == [[1, 0], [1, 1], [0, 0]]


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
