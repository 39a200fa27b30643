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


@pytest.mark.parametrize("auc,r10,metal,passed", [
    (0.90, 0.6, 4, [True, True, True]),
    (0.84, 0.6, 4, [False, True, True]),
    (0.90, 0.25, 4, [True, False, True]),
    (0.90, 0.6, 2, [True, True, False]),
])
def test_quality_checks(auc, r10, metal, passed):
    hits = [{"tags": ["metal", "dark"]}] * metal + [{"tags": ["jazz"]}] * (5 - metal)
    checks = demo.quality_checks(_report(auc, r10, 0.1), hits)
    assert [c.passed for c in checks] == passed
