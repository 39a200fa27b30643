"""The demo's pure logic: encoder default and quality checks."""

from __future__ import annotations

import pytest

from musiccli import demo
from musiccli.errors import MtxError


def test_default_encoder_prefers_musicnn_and_falls_back_to_dsp(monkeypatch):
    import musiccli.encoders.musicnn_torch as mt

    monkeypatch.setattr(mt, "musicnn_checkpoint_prefix", lambda name: "/somewhere")
    assert demo.default_encoder() == "musicnn"

    def missing(name):
        raise MtxError("the musicnn package is not installed", hint=mt.INSTALL_HINT)

    monkeypatch.setattr(mt, "musicnn_checkpoint_prefix", missing)
    assert demo.default_encoder() == "dsp"


def _report(auc: float, r10: float, r10_random: float) -> dict:
    return {"results": {"model": {"tags": {"roc_auc": auc}, "text_to_music": {"R@10": r10}},
                        "random": {"text_to_music": {"R@10": r10_random}}}}


def _sentences(p10: list[float]) -> demo.StylePrecision:
    return demo.StylePrecision([f"q{i}" for i in range(len(p10))], p10, 0.1, 100)


@pytest.mark.parametrize("auc,r10,metal,p10,passed", [
    (0.90, 0.6, 4, [0.9, 0.5], [True, True, True, True]),
    (0.84, 0.6, 4, [0.9, 0.5], [False, True, True, True]),
    (0.90, 0.25, 4, [0.9, 0.5], [True, False, True, True]),
    (0.90, 0.6, 2, [0.9, 0.5], [True, True, False, True]),
    (0.95, 0.9, 5, [0.6, 0.2], [True, True, True, False]),   # tags alone cannot pass the demo
    (0.95, 0.9, 5, None, [True, True, True, False]),         # nor can an unmeasured sentence check
])
def test_quality_checks(auc, r10, metal, p10, passed):
    hits = [{"tags": ["metal", "dark"]}] * metal + [{"tags": ["jazz"]}] * (5 - metal)
    checks = demo.quality_checks(_report(auc, r10, 0.1), hits, None if p10 is None else _sentences(p10))
    assert [c.passed for c in checks] == passed


def test_precision_at_k_matches_naive_ranking():
    import numpy as np

    rng = np.random.default_rng(0)
    text, audio = rng.standard_normal((7, 16)), rng.standard_normal((40, 16))
    styles = [["a", "b", "c", "d"][i % 4] for i in range(40)]
    wanted = [("a",), ("b", "c"), ("d",), ("A",), ("z",), ("a", "d"), ("c",)]
    per_query, chance = demo.precision_at_k(text, audio, styles, wanted, k=10)
    for q, p in enumerate(per_query):
        order = sorted(range(40), key=lambda j: -float(text[q] @ audio[j]))[:10]
        assert p == sum(styles[j] in {w.lower() for w in wanted[q]} for j in order) / 10
    assert chance == pytest.approx(np.mean([sum(s in {w.lower() for w in ws} for s in styles) / 40 for ws in wanted]))


def test_sentence_queries_are_not_in_the_held_out_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paraphrase_queries.py"
    spec = importlib.util.spec_from_file_location("paraphrase_queries", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    held_out = {q.lower() for q, _ in bench.QUERIES["synth"]}
    assert len(held_out) >= 40
    assert not held_out & {q.lower() for q, _ in demo.SENTENCE_QUERIES}
