"""Training depth: objectives, joint towers end to end, text representations, --init-from,
GradCache, loss combinations, pooling/recipes, trackers, and every TrainConfig field on the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_train import StopAfter, make_data, step_losses, tiny_cfg


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def no_dropout_backbone(tmp_path_factory) -> Path:
    """A tiny BERT without dropout, so a large batch and its GradCache sub-batches see the same network."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from musiccli.encoders.text import resolve_backbone

    out = tmp_path_factory.mktemp("tiny-bert-nodrop")
    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(1)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- joint end to end
@pytest.mark.slow
def test_joint_train_eval_export_search(state, tiny_backbone, tmp_path):
    import onnxruntime as ort

    from musiccli.families.towers.model import load_towers
    from musiccli.runs import AUDIO_TOWER_DIR
    from musiccli.evaluate import EvalConfig, run_eval
    from musiccli.export import ExportConfig, run_export
    from musiccli.search import SearchConfig, search
    from musiccli.training import run_train

    recs = make_data(state, n=48)
    res = run_train(state, tiny_cfg(tiny_backbone, objective="joint", joint_dim=12, epochs=4, lr=2e-3,
                                    dropout=0.0, loss="infonce+0.5*listmle"))
    run_dir = state.run_dir("fake-lib")
    info = json.loads((run_dir / "run.json").read_text())
    assert res.objective == "joint" and info["objective"] == "joint" and info["space_dim"] == 12
    for sub in ("best", "latest"):
        assert (run_dir / sub / AUDIO_TOWER_DIR / "model.safetensors").exists()
    losses = step_losses(run_dir)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "train_loss" in e]
    assert {"infonce", "listmle", "temperature", "lr", "grad_norm"} <= set(steps[0])

    # The saved towers reproduce the trainer's validation through the public loading path.
    towers = load_towers(run_dir / "best")
    assert towers.audio.has_head and towers.dim == 12 and towers.audio.in_dim == 24
    from musiccli.manifest import read_manifest
    from musiccli.retrieval import caption_relevance, text_to_music
    from musiccli.store import EmbeddingStore

    val = [r for r in read_manifest(state.manifest_path("lib")) if r.split == "val"]
    with EmbeddingStore(state.embeddings_path("fake", "lib")) as st:
        audio = towers.audio.audio_for_retrieval(st.get([r.id for r in val]))
    text = towers.text.encode([r.caption for r in val])
    rel = caption_relevance(val, "main")
    r10 = text_to_music(text[rel.main_item[rel.queries]], audio, rel)["R@10"]
    assert r10 == pytest.approx(res.best_val_r10)
    from musiccli.errors import MtxError

    with pytest.raises(MtxError, match="joint space"):   # the text tower alone cannot map audio
        towers.text.audio_for_retrieval(np.zeros((1, 24), dtype=np.float32))

    # eval scores through the audio tower (and the untrained baseline through a fresh one)
    rep = run_eval(state, EvalConfig(split="test", device="cpu", precision="fp32"))
    assert {"model", "untrained", "random"} <= set(rep.report["results"])
    assert rep.report["results"]["model"]["text_to_music"]["R@10"] > rep.report["results"]["random"][
        "text_to_music"]["R@10"] - 0.2

    # export: hf/ has both towers; ONNX of both heads matches PyTorch
    exp = run_export(state, ExportConfig(out=tmp_path / "exp"))
    assert exp.onnx_max_abs_diff is not None and exp.onnx_max_abs_diff <= 1e-4
    hf = load_towers(tmp_path / "exp" / "hf")
    test_recs = [r for r in recs if r.split == "test"]
    with EmbeddingStore(state.embeddings_path("fake", "lib")) as st:
        raw = st.get([r.id for r in test_recs]).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "exp" / "onnx" / "audio_tower.onnx"),
                                providers=["CPUExecutionProvider"])
    onnx_audio = sess.run(["embedding"], {"audio": raw})[0]
    assert np.abs(onnx_audio - hf.audio.audio_for_retrieval(raw)).max() < 1e-4
    text_sess = ort.InferenceSession(str(tmp_path / "exp" / "onnx" / "model.onnx"),
                                     providers=["CPUExecutionProvider"])
    assert [o.name for o in text_sess.get_outputs()] == ["embedding"]
    meta = json.loads((tmp_path / "exp" / "onnx" / "meta.json").read_text())
    assert meta["space"] == "joint" and meta["audio_tower"]["head"] is True

    # search indexes the library through the audio tower: the index holds the tower's vectors
    hit = search(state, SearchConfig(query=test_recs[0].caption, k=3))
    vectors = np.load(state.index_dir(hit.index) / "vectors.npy")
    ids = json.loads((state.index_dir(hit.index) / "ids.json").read_text())
    with EmbeddingStore(state.embeddings_path("fake", "lib")) as st:
        expect = towers.audio.audio_for_retrieval(st.get(ids))
    assert vectors.shape == (len(ids), 12) and np.allclose(vectors, expect, atol=1e-5)
    assert hit.query_runtime == "torch"

    # With the run's own ONNX export (text tower + audio_tower.onnx) search runs torch-free and agrees;
    # an export without audio_tower.onnx cannot map a joint run's audio, so search says so and uses torch.
    run_export(state, ExportConfig(formats=("onnx",)))
    fast = search(state, SearchConfig(query=test_recs[0].caption, k=3, query_runtime="onnx", rebuild=True))
    assert fast.query_runtime == "onnx"
    assert [h["id"] for h in fast.hits] == [h["id"] for h in hit.hits]
    assert np.allclose([h["score"] for h in fast.hits], [h["score"] for h in hit.hits], atol=1e-4)
    assert np.allclose(np.load(state.index_dir(fast.index) / "vectors.npy"), expect, atol=1e-4)
    from musiccli.runs import export_dir

    (export_dir(state, "fake-lib", "best") / "onnx" / "audio_tower.onnx").unlink()
    slow = search(state, SearchConfig(query=test_recs[0].caption, k=3))
    assert slow.query_runtime == "torch" and any("audio_tower.onnx" in n for n in slow.notes)
    with pytest.raises(MtxError, match="audio_tower.onnx"):
        search(state, SearchConfig(query=test_recs[0].caption, k=3, query_runtime="onnx"))


@pytest.mark.parametrize("loss,needle", [("mse", "mse loss"), ("combined", "combined loss"),
                                         ("infonce+mse", "mse loss")])
def test_joint_refuses_collapsing_losses(state, tiny_backbone, loss, needle):
    from musiccli.errors import MtxError
    from musiccli.training import run_train

    make_data(state)
    with pytest.raises(MtxError, match=needle) as err:
        run_train(state, tiny_cfg(tiny_backbone, objective="joint", loss=loss))
    assert "infonce" in err.value.hint
    assert not list(state.stages_dir.glob("train*"))


@pytest.mark.parametrize("kw,needle", [
    ({"objective": "contrastive"}, "unknown objective 'contrastive'"),
    ({"joint_dim": 8}, "--joint-dim only applies"),
    ({"text_rep": "lyrics"}, "unknown text representation 'lyrics'"),
    ({"loss": "infonce+x*listmle"}, "bad loss weight"),
    ({"loss": "infonce+hinge"}, "unknown loss 'hinge'"),
    ({"accum_steps": 0}, "--accum-steps must be at least 1"),
    ({"report_to": "mlflow"}, "unknown tracker 'mlflow'"),
    ({"recipe": "navidrome"}, "no settings for audio encoder 'fake'"),
    ({"recipe": "fast"}, "unknown recipe 'fast'"),
    ({"text_pooling": "max"}, "unknown text pooling 'max'"),
])
def test_bad_training_options(state, tiny_backbone, kw, needle):
    from musiccli.errors import MtxError
    from musiccli.training import run_train

    make_data(state)
    with pytest.raises(MtxError, match=needle.replace("+", r"\+").replace("*", r"\*")):
        run_train(state, tiny_cfg(tiny_backbone, **kw))
    assert not state.run_dir("fake-lib").exists()


# --------------------------------------------------------------------------- text representations
def _record(**kw):
    from musiccli.manifest import Record

    base = dict(id="x", audio_path="/x.wav", caption="a calm piano piece", duration=10.0,
                alt_captions=["soft piano", "quiet keys"], tags=["genre---classical", "mood/theme---calm", "piano"],
                title="Nocturne", artist="Chopin")
    base.update(kw)
    return Record(**base)


def test_text_rep_draws_are_seeded_and_cover_their_sources():
    from musiccli.training.textrep import draw_text, tag_text

    r = _record()
    assert tag_text("mood/theme---calm") == "calm" and tag_text("hip_hop") == "hip hop"
    for mode in ("caption", "tag", "stochastic", "mixed"):
        assert [draw_text(r, mode, k) for k in range(50)] == [draw_text(r, mode, k) for k in range(50)]
    tags = {"classical", "calm", "piano"}
    assert {draw_text(r, "tag", k) for k in range(100)} == tags
    stoch = [draw_text(r, "stochastic", k).split(", ") for k in range(300)]
    assert all(set(s) <= tags and len(set(s)) == len(s) for s in stoch)
    # k ~ U{1..L}: every subset size occurs, roughly equally often
    sizes = np.bincount([len(s) for s in stoch], minlength=4)[1:]
    assert sizes.min() > 60
    mixed = {draw_text(r, "mixed", k) for k in range(300)}
    assert {"a calm piano piece", "soft piano", "quiet keys", "Nocturne by Chopin"} <= mixed
    assert any(t.split(", ")[0] in tags for t in mixed)
    # no tags / no metadata: fall back to captions
    bare = _record(tags=[], title=None)
    assert {draw_text(bare, "stochastic", k) for k in range(30)} <= {"a calm piano piece", "soft piano", "quiet keys"}
    assert "Nocturne by Chopin" not in {draw_text(bare, "mixed", k) for k in range(100)}


@pytest.mark.slow
def test_text_rep_mixed_resumes_exactly(state, tiny_backbone):
    from musiccli.errors import Interrupted
    from musiccli.state import Resume
    from musiccli.training import run_train

    make_data(state)
    kw = dict(epochs=2, text_rep="mixed", dropout=0.1)
    full = run_train(state, tiny_cfg(tiny_backbone, run="full", **kw))
    ref = step_losses(state.run_dir("full"))
    with pytest.raises(Interrupted):
        run_train(state, tiny_cfg(tiny_backbone, run="part", **kw), StopAfter(4))
    from musiccli.errors import MtxError

    with pytest.raises(MtxError, match="text_rep: 'mixed' -> 'stochastic'"):
        run_train(state, tiny_cfg(tiny_backbone, run="part", resume=Resume.CONTINUE,
                                  **{**kw, "text_rep": "stochastic"}))
    res = run_train(state, tiny_cfg(tiny_backbone, run="part", resume=Resume.CONTINUE, **kw))
    assert res.steps == full.steps and np.allclose(step_losses(state.run_dir("part")), ref, atol=1e-6, rtol=0)
    # a different representation trains on different texts
    other = run_train(state, tiny_cfg(tiny_backbone, run="stoch", **{**kw, "text_rep": "stochastic"}))
    assert not np.allclose(step_losses(state.run_dir("stoch")), ref) and other.steps == full.steps


# --------------------------------------------------------------------------- two-stage training
@pytest.mark.slow
def test_init_from_lineage_and_refusals(state, tiny_backbone):
    from safetensors.torch import load_file

    from musiccli.errors import MtxError
    from musiccli.training import run_train

    make_data(state)
    make_data(state, manifest="phase2", seed=0)   # same audio space, another manifest
    run_train(state, tiny_cfg(tiny_backbone, run="stage1", objective="joint", joint_dim=8, epochs=1, dropout=0.0))
    stage2 = tiny_cfg(tiny_backbone, run="stage2", manifest="phase2", objective="joint", joint_dim=8, epochs=1,
                      lr=0.0, head_lr_mult=0.0, dropout=0.0, init_from="stage1:latest")
    res = run_train(state, stage2)
    assert res.steps > 0
    info = json.loads((state.run_dir("stage2") / "run.json").read_text())
    assert info["init_from"]["run"] == "stage1" and info["init_from"]["checkpoint"] == "latest"
    assert info["init_from"]["lineage"] == ["stage1"] and info["init_from"]["audio_stats"] == "kept from the parent run"
    # lr 0: the stage-2 weights are exactly the parent's (both heads, backbone, audio stats)
    for f in ("model.safetensors", "backbone/model.safetensors", "audio_tower/model.safetensors"):
        a = load_file(str(state.run_dir("stage1") / "latest" / f))
        b = load_file(str(state.run_dir("stage2") / "latest" / f))
        assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a), f
    # its own schedule: stage 2 counts its steps from 0
    meta = json.loads((state.run_dir("stage2") / "latest" / "meta.json").read_text())
    assert meta["step"] == res.steps
    # a third stage records the whole lineage
    run_train(state, tiny_cfg(tiny_backbone, run="stage3", objective="joint", joint_dim=8, epochs=1,
                              init_from="stage2"))
    assert json.loads((state.run_dir("stage3") / "run.json").read_text())["init_from"]["lineage"] == ["stage2", "stage1"]

    refusals = [
        (dict(objective="joint", joint_dim=16), "8-d joint space but --joint-dim is 16"),
        (dict(objective="align"), "joint-space run; it cannot initialise an align run"),
        (dict(objective="joint", joint_dim=8, init_from="nope"), "unknown run to init from"),
        (dict(objective="joint", joint_dim=8, init_from="stage1:final"), "unknown checkpoint 'final'"),
    ]
    for kw, needle in refusals:
        with pytest.raises(MtxError, match=needle):
            run_train(state, tiny_cfg(tiny_backbone, run="bad", epochs=1, **{"init_from": "stage1", **kw}))
        assert not state.run_dir("bad").exists()
    # another audio space (dim 10) is refused
    make_data(state, manifest="other", dim=10, encoder="fake")
    with pytest.raises(MtxError, match="reads 24-d vectors but this store has 10"):
        run_train(state, tiny_cfg(tiny_backbone, run="bad", manifest="other", objective="joint", joint_dim=8,
                                  init_from="stage1"))
    run_train(state, tiny_cfg(tiny_backbone, run="align1", manifest="lib", epochs=1))
    with pytest.raises(MtxError, match="predicts 24 dims but this store has 10"):
        run_train(state, tiny_cfg(tiny_backbone, run="bad", manifest="other", init_from="align1"))
    with pytest.raises(MtxError, match="align run; it has no audio tower"):
        run_train(state, tiny_cfg(tiny_backbone, run="bad", manifest="lib", objective="joint", init_from="align1"))



def test_init_from_a_joint_run_inherits_its_objective_and_dims(state, tiny_backbone, caplog):
    import logging

    from musiccli.training import run_train

    make_data(state)
    run_train(state, tiny_cfg(tiny_backbone, run="parent", objective="joint", joint_dim=8, epochs=1))
    with caplog.at_level(logging.INFO, logger="musiccli.training.loop"):
        res = run_train(state, tiny_cfg(tiny_backbone, run="child", init_from="parent", epochs=1))
    assert res.objective == "joint"
    info = json.loads((state.run_dir("child") / "run.json").read_text())
    assert info["objective"] == "joint" and info["space_dim"] == 8 and info["config"]["joint_dim"] == 8
    assert "--init-from parent: a joint run, so this run trains --objective joint --joint-dim 8 too" in caplog.text

# --------------------------------------------------------------------------- GradCache
def _grads(params) -> list:
    import torch

    # parameters outside the graph (the backbone's unused pooler) have no gradient: count them as zero
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]


@pytest.mark.parametrize("loss_name", ["infonce", "infonce+0.5*listmle", "triplet"])
def test_gradcache_equals_the_large_batch(no_dropout_backbone, loss_name):
    """GradCache over 3 sub-batches gives the large batch's gradients, on both towers and the temperature."""
    import torch

    from musiccli.families.towers.model import AudioTower, AudioTowerConfig, Towers
    from musiccli.encoders.text import TextEmbedder
    from musiccli.training.gradcache import cached_backward, split_chunks
    from musiccli.training.losses import LossConfig, build_loss

    torch.manual_seed(0)
    text = TextEmbedder.from_backbone(str(no_dropout_backbone), out_dim=6, hidden_dim=16, dropout=0.0, space="joint")
    audio = AudioTower(AudioTowerConfig(in_dim=10, out_dim=6, hidden_dim=16, dropout=0.0))
    Towers(text, audio).train()
    loss_fn = build_loss(loss_name, LossConfig(learn_temperature=True))
    words = ["rock", "calm", "piano", "dark", "jazz", "slow", "a", "track", "with", "guitar"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, int(rng.integers(2, 9)))) for _ in range(12)]   # varied lengths: padding
    target = torch.from_numpy(rng.standard_normal((12, 10)).astype(np.float32))
    params = [p for p in [*text.parameters(), *audio.parameters(), *loss_fn.parameters()] if p.requires_grad]

    def encode(batch):
        tok = text.tokenize(batch)
        return text(tok["input_ids"], tok["attention_mask"]).float()

    full_loss, _ = loss_fn(encode(texts), audio(target))
    full_loss.backward()
    ref = _grads(params)
    for p in params:
        p.grad = None
    chunks = split_chunks(texts, 3)
    assert [len(c) for c in chunks] == [4, 4, 4]
    loss, _ = cached_backward(encode, chunks, lambda reps: loss_fn(reps, audio(target)), lambda l: l.backward(),
                              torch.device("cpu"))
    assert float(loss) == pytest.approx(float(full_loss.detach()), abs=1e-6)
    got = _grads(params)
    assert len(got) == len(ref) and any(float(g.abs().max()) > 0 for g in ref)
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, atol=1e-5, rtol=0), float((g - r).abs().max())


def test_split_chunks():
    from musiccli.training.gradcache import split_chunks

    assert [len(c) for c in split_chunks(list(range(10)), 3)] == [4, 3, 3]
    assert [len(c) for c in split_chunks(list(range(2)), 4)] == [1, 1]
    assert sum(split_chunks(list(range(7)), 2), []) == list(range(7))


def test_accum_steps_trains_like_the_large_batch(state, no_dropout_backbone):
    """--batch-size 4 --accum-steps 2 takes the same steps as --batch-size 8 (no dropout anywhere)."""
    from musiccli.training import run_train

    make_data(state)
    kw = dict(epochs=1, dropout=0.0, loss="infonce", learn_temperature=True)
    big = run_train(state, tiny_cfg(no_dropout_backbone, run="big", batch_size=8, **kw))
    cached = run_train(state, tiny_cfg(no_dropout_backbone, run="cached", batch_size=4, accum_steps=2, **kw))
    assert cached.steps == big.steps
    assert np.allclose(step_losses(state.run_dir("cached")), step_losses(state.run_dir("big")), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- losses, pooling, recipes
def test_loss_combination_is_the_weighted_sum():
    import torch

    from musiccli.training.losses import LossConfig, build_loss, parse_loss_spec

    assert parse_loss_spec("infonce + 0.5*listmle") == [(1.0, "infonce"), (0.5, "listmle")]
    rng = torch.Generator().manual_seed(0)
    t, a = torch.randn(6, 5, generator=rng), torch.randn(6, 5, generator=rng)
    combo, parts = build_loss("infonce+0.5*listmle+2*triplet", LossConfig())(t, a)
    expect = (build_loss("infonce")(t, a)[0] + 0.5 * build_loss("listmle")(t, a)[0]
              + 2 * build_loss("triplet", LossConfig())(t, a)[0])
    assert float(combo) == pytest.approx(float(expect), rel=1e-6)
    assert {"infonce", "listmle", "triplet"} <= set(parts)


def test_layers_pooling_and_recipes(tiny_backbone):
    import torch

    from musiccli.encoders.text import TextEmbedder
    from musiccli.training import TrainConfig

    m = TextEmbedder.from_backbone(str(tiny_backbone), out_dim=4, hidden_dim=8, pooling="layers")
    assert m.head.net[0].in_features == 2 * 32   # 2 layers x hidden 32, concatenated
    tok = m.tokenize(["calm piano", "a long dark rock track"])
    with torch.no_grad():
        pooled = m.pool(tok["input_ids"], tok["attention_mask"])
        states = m.backbone(**tok, output_hidden_states=True).hidden_states
    mask = tok["attention_mask"].unsqueeze(-1).float()
    naive = torch.cat([(h * mask).sum(1) / mask.sum(1) for h in states[1:]], dim=-1)
    assert torch.allclose(pooled, naive, atol=1e-6)

    mert = TrainConfig(audio_encoder="mert", recipe="navidrome").resolved()
    assert (mert.text_backbone, mert.text_pooling, mert.batch_size) == ("roberta", "layers", 64)
    muq = TrainConfig(audio_encoder="muq", recipe="navidrome", batch_size=32).resolved()
    assert (muq.text_backbone, muq.batch_size, muq.text_pooling) == ("minilm", 32, "mean")   # flags win
    m2l = TrainConfig(audio_encoder="music2latent", recipe="navidrome").resolved()
    assert (m2l.text_backbone, m2l.batch_size) == ("distilbert", 256)
    plain = TrainConfig(audio_encoder="mert").resolved()
    assert (plain.text_backbone, plain.batch_size, plain.text_pooling) == ("minilm", 64, "mean")


def test_grad_checkpointing_gives_the_same_steps(state, tiny_backbone):
    from musiccli.training import run_train

    make_data(state)
    kw = dict(epochs=1, dropout=0.1)
    run_train(state, tiny_cfg(tiny_backbone, run="plain", **kw))
    run_train(state, tiny_cfg(tiny_backbone, run="ckpt", grad_checkpointing=True, **kw))
    assert np.allclose(step_losses(state.run_dir("ckpt")), step_losses(state.run_dir("plain")), atol=1e-6)


# --------------------------------------------------------------------------- tracking
def test_report_to_tensorboard_writes_events_and_eval_every(state, tiny_backbone):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from musiccli.training import run_train

    make_data(state)
    res = run_train(state, tiny_cfg(tiny_backbone, epochs=2, report_to="tensorboard", eval_every=2,
                                    learn_temperature=True))
    tb = state.run_dir("fake-lib") / "tensorboard"
    assert res.logs == str(tb) and list(tb.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/train_loss", "train/lr", "train/grad_norm", "train/temperature", "train/mse", "train/infonce",
            "val/val_R@10", "val/val_loss", "eval/eval_R@10"} <= tags
    assert len(acc.Scalars("train/train_loss")) == res.steps
    events = [json.loads(x) for x in (state.run_dir("fake-lib") / "metrics.jsonl").read_text().splitlines()]
    periodic = [e for e in events if "eval_R@10" in e]
    assert [e["step"] for e in periodic] == [2, 4, 6, 8]   # every 2nd step, except where an epoch ends (5, 10)


def test_report_to_wandb_refused_with_hint(state, tiny_backbone, monkeypatch):
    from musiccli.errors import MtxError
    from musiccli.training import run_train

    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)   # as when it is not installed
    make_data(state)
    with pytest.raises(MtxError, match="needs the 'wandb' package") as err:
        run_train(state, tiny_cfg(tiny_backbone, report_to="wandb"))
    assert "pip install 'musiccli[wandb]'" in err.value.hint
    assert not list(state.stages_dir.glob("train*"))


# --------------------------------------------------------------------------- CLI
def test_every_train_config_field_is_a_flag():
    import inspect
    from dataclasses import fields

    from musiccli.cli import train as cli_train
    from musiccli.training import TrainConfig

    params = set(inspect.signature(cli_train.command).parameters)
    missing = {f.name for f in fields(TrainConfig)} - params - {"resume"}   # resume = --continue / --force
    assert not missing, missing
    assert {"cont", "force"} <= params


def test_cli_names_match_registries():
    from musiccli.cli import train as cli_train
    from musiccli.encoders.text import POOLINGS
    from musiccli.families import OBJECTIVES
    from musiccli.training.recipes import RECIPES
    from musiccli.training.textrep import TEXT_REPS
    from musiccli.training.tracking import TRACKERS

    assert set(cli_train.OBJECTIVE_NAMES) == set(OBJECTIVES)
    assert set(cli_train.TEXT_REP_NAMES) == set(TEXT_REPS)
    assert set(cli_train.TRACKER_NAMES) == set(TRACKERS)
    assert set(cli_train.RECIPE_NAMES) == set(RECIPES)
    assert set(cli_train.POOLING_NAMES) == set(POOLINGS)


@pytest.mark.slow
def test_cli_joint_with_new_flags_and_config_file(state, cli, tiny_backbone, monkeypatch):
    make_data(state)
    monkeypatch.setenv("COLUMNS", "200")
    (state.root / "config.toml").write_text('[train]\nmargin = 0.3\nweight-decay = 0.05\n')
    r = cli("train", "--audio-encoder", "fake", "--text-backbone", str(tiny_backbone), "--epochs", "1",
            "--batch-size", "4", "--accum-steps", "2", "--device", "cpu", "--objective", "joint", "--joint-dim", "8",
            "--loss", "infonce+triplet", "--text-rep", "stochastic", "--head-hidden", "16", "--max-length", "16",
            "--dropout", "0.0", "--warmup-ratio", "0.2", "--grad-clip", "0", "--report-to", "tensorboard")
    assert r.exit_code == 0, r.output
    assert "joint" in r.output and "tensorboard logs:" in r.output
    cfg = json.loads((state.run_dir("fake-lib") / "run.json").read_text())["config"]
    assert (cfg["objective"], cfg["joint_dim"], cfg["accum_steps"], cfg["text_rep"]) == ("joint", 8, 2, "stochastic")
    assert (cfg["margin"], cfg["weight_decay"], cfg["dropout"], cfg["warmup_ratio"], cfg["grad_clip"]) == \
        (0.3, 0.05, 0.0, 0.2, None)
    r = cli("train", "--audio-encoder", "fake", "--run", "x", "--objective", "joint", "--loss", "mse")
    assert r.exit_code == 1 and "cannot train with the mse loss" in r.output


_RANK_SCRIPT = """
import json, sys
from musiccli.state import StateDir
from musiccli.training.loop import TrainConfig, run_train

root, kw = sys.argv[1], json.loads(sys.argv[2])
r = run_train(StateDir.resolve(root), TrainConfig(**kw))
print("steps", r.steps)
"""


@pytest.mark.slow
def test_gradcache_composes_with_gathered_negatives_under_ddp(state, no_dropout_backbone):
    """2 CPU ranks x batch 2 x --accum-steps 2 (negatives gathered across ranks, sub-batches cached) end with
    the weights of one process training on batch 8: text tower, audio tower and temperature."""
    import os
    import socket
    import subprocess
    import sys

    from musiccli.training import run_train
    from test_train import safetensors_equal

    make_data(state, n=44)   # 32 training pairs: 4 full global batches of 8, no remainder on either side
    kw = dict(audio_encoder="fake", manifest="lib", text_backbone=str(no_dropout_backbone), epochs=1, head_hidden=32,
              max_length=16, dropout=0.0, lr=1e-3, device="cpu", precision="fp32", objective="joint", joint_dim=8,
              loss="infonce", learn_temperature=True)
    ref = run_train(state, tiny_cfg(no_dropout_backbone, **{**kw, "run": "single", "batch_size": 8}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = json.dumps({**kw, "run": "ddp", "batch_size": 2, "accum_steps": 2})
    procs = [subprocess.Popen(
        [sys.executable, "-c", _RANK_SCRIPT, str(state.root), args],
        env={**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(f"steps {ref.steps}" in o for o in outs), outs
    single, ddp = state.run_dir("single") / "latest", state.run_dir("ddp") / "latest"
    for f in ("model.safetensors", "audio_tower/model.safetensors", "backbone/model.safetensors"):
        assert safetensors_equal(single / f, ddp / f), f
