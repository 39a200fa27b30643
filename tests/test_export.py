"""`mtx export`: hf/ round trip, plain-transformers backbone, ONNX parity via onnxruntime, model card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musiccli.export import ExportConfig, run_export

QUERIES = ["dark metal", "a calm piano piece for a rainy afternoon with soft strings and rain", "jazz"]


@pytest.mark.slow
def test_export_hf_and_onnx(make_run, state) -> None:
    import onnxruntime as ort
    from transformers import AutoModel, AutoTokenizer

    from musiccli import TextEmbedder

    run = make_run()
    res = run_export(state, ExportConfig())
    out = state.export_dir("run1") / "best"
    assert res.out == out and set(res.paths) == {"hf", "onnx"}
    assert res.onnx_max_abs_diff is not None and res.onnx_max_abs_diff <= 1e-4

    # hf/: our loader gives the trained model's vectors, in both spaces.
    src = run["model"]
    loaded = TextEmbedder.from_pretrained(out / "hf")
    np.testing.assert_allclose(loaded.encode(QUERIES), src.encode(QUERIES), atol=1e-6)
    np.testing.assert_allclose(loaded.encode(QUERIES, space="audio"), src.encode(QUERIES, space="audio"), atol=1e-5)
    assert (out / "hf" / "model.safetensors").exists() and (out / "hf" / "config.json").exists()
    backbone = AutoModel.from_pretrained(out / "hf" / "backbone")
    assert backbone.config.hidden_size == 32

    card = (out / "hf" / "README.md").read_text()
    for needle in ("fake", "output dim: 16", "manifest: `lib`", "the `train` split, 20 tracks",
                   "sources: other (7 tracks), synth (13 synthetic clips)",
                   "onnxruntime", "from_pretrained", "Licence", "mtx eval --run run1"):
        assert needle in card, needle
    from musiccli.text_health import PROMPTS, mean_pairwise_cosine
    health = mean_pairwise_cosine(src.encode(list(PROMPTS)))
    assert f"mean pairwise cosine of 12 unrelated prompts = {health:.4f}" in card

    # onnx/: standalone (tokenizer next to the model), dynamic batch and length.
    onnx_dir = out / "onnx"
    tok = AutoTokenizer.from_pretrained(onnx_dir)
    sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    for batch in (QUERIES, QUERIES[:1], QUERIES[1:2]):
        enc = tok(batch, padding=True, truncation=True, max_length=64, return_tensors="np")
        emb, audio = sess.run(["embedding", "audio_space"], {"input_ids": enc["input_ids"].astype(np.int64),
                                                             "attention_mask": enc["attention_mask"].astype(np.int64)})
        np.testing.assert_allclose(emb, src.encode(batch), atol=1e-4)
        np.testing.assert_allclose(audio, src.encode(batch, space="audio"), atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    meta = json.loads((onnx_dir / "meta.json").read_text())
    assert meta["dim"] == 16 and meta["max_length"] == 64 and meta["max_abs_diff_vs_pytorch"] <= 1e-4

    again = run_export(state, ExportConfig())
    assert again.skipped and again.paths == res.paths


@pytest.mark.slow
def test_cli_export_hf_only_and_errors(make_run, cli, state, tmp_path) -> None:
    run = make_run()
    # A model card quotes the latest eval report of the exported weights when there is one.
    from musiccli.runs import weights_identity

    (state.run_dir("run1") / "eval-test-best.json").write_text(json.dumps({
        "split": "test", "manifest": "lib", "counts": {"tracks": 20},
        "inputs": {"weights": weights_identity(state.run_dir("run1") / "best")},
        "results": {"model": {d: {m: 0.5 for m in ("R@1", "R@5", "R@10", "mAP@10", "MRR", "MedR")}
                              for d in ("text_to_music", "music_to_text")} | {"tags": {"roc_auc": 0.7}}}}))
    r = cli("export", "--format", "hf", "--out", str(tmp_path / "exp"))
    assert r.exit_code == 0, r.output
    assert str(tmp_path / "exp" / "hf") in r.output and "ONNX" not in r.output
    assert not (tmp_path / "exp" / "onnx").exists()
    card = (tmp_path / "exp" / "hf" / "README.md").read_text()
    assert "| text to music R@1 | 0.5 |" in card
    # More training, then export again: redone without --force, with the new weights.
    import torch

    from musiccli import TextEmbedder

    model = run["model"]
    with torch.no_grad():
        model.head.net[-1].bias.add_(1.0)
    model.save_pretrained(state.run_dir("run1") / "best")
    r = cli("export", "--format", "hf", "--out", str(tmp_path / "exp"))
    assert r.exit_code == 0, r.output
    again = TextEmbedder.from_pretrained(tmp_path / "exp" / "hf")
    np.testing.assert_allclose(again.encode(QUERIES), model.encode(QUERIES), atol=1e-6)
    bad = cli("export", "--format", "tflite")
    assert bad.exit_code == 1 and "hf, onnx" in bad.output
    bad = cli("export", "--run", "nope")
    assert bad.exit_code == 1 and "run1" in bad.output
