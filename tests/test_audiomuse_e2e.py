"""End to end, offline: AudioMuse-AI's PostgreSQL -> download -> unify -> embed (copy) -> train -> export -> ORT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from pgserver import build_db
from musiccli.errors import MtxError


@pytest.mark.slow
def test_audiomuse_pipeline_to_an_audiomuse_text_model(pg, cli, state, state_dir, tiny_backbone, tmp_path,
                                                       monkeypatch) -> None:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MEDIASERVER_TYPE", raising=False)
    wav = tmp_path / "song.wav"
    sf.write(wav, np.zeros(8000, np.float32), 8000)
    build_db(pg, "am_e2e", "current", 80, seed=11, file_paths={i: str(wav) for i in range(80)})

    r = cli("download", "audiomuse", "--dsn", pg.dsn("am_e2e"), "--server", "local")
    assert r.exit_code == 0, r.output
    r = cli("unify", "--name", "lib")
    assert r.exit_code == 0, r.output and "captions: tags (80 synthesised" in r.output
    # Imported spaces cannot embed audio: `mtx embed` copies the stored vectors instead.
    r = cli("embed", "--audio-encoder", "audiomuse-clap", "--json")
    assert r.exit_code == 0, r.output
    emb = json.loads(r.stdout)
    assert emb["dim"] == 512 and emb["n_ok"] == 80 and emb["n_failed"] == 0

    r = cli("train", "--audio-encoder", "audiomuse-clap", "--text-backbone", str(tiny_backbone), "--epochs", "1",
            "--batch-size", "16", "--head-hidden", "32", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = cli("export", "--target", "audiomuse", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    onnx_path = res["paths"]["audiomuse"]
    assert onnx_path.endswith("audiomuse/clap_text_model.onnx") and res["onnx_max_abs_diff"] <= 1e-4

    folder = state.export_dir("audiomuse-clap-lib") / "best" / "audiomuse"
    readme = (folder / "README.md").read_text()
    assert "CLAP_TEXT_MODEL_PATH=/app/model/mtx-text/clap_text_model.onnx" in readme
    assert "The tokenizer differs" in readme and "roberta-base" in readme   # a MiniLM tokenizer here
    tok = AutoTokenizer.from_pretrained(folder)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in sess.get_outputs()] == ["text_embedding"]
    enc = tok(["calm piano", "an energetic rock track at 128 BPM", "jazz"], padding="max_length", max_length=77,
              truncation=True, return_tensors="np")
    (out,) = sess.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                             "attention_mask": enc["attention_mask"].astype(np.int64)})
    assert out.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)

    again = cli("export", "--target", "audiomuse", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"]


def test_export_refuses_runs_in_another_space(make_run, state) -> None:
    from musiccli.export import ExportConfig, run_export

    make_run()
    with pytest.raises(MtxError, match="not AudioMuse-AI's 512-d CLAP space"):
        run_export(state, ExportConfig(target="audiomuse"))
    with pytest.raises(MtxError, match="unknown export target 'onnx'"):
        run_export(state, ExportConfig(target="onnx"))


def test_roberta_tokenizer_detection(tiny_backbone) -> None:
    from transformers import AutoTokenizer

    from musiccli.families.towers.audiomuse import tokenizer_matches_roberta

    assert not tokenizer_matches_roberta(AutoTokenizer.from_pretrained(tiny_backbone))
