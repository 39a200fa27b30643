"""Zero-shot classification: labels from fields / tag families / folders, metrics against naive code,
the eval stage with baselines and the probe on learnable synth-like data, and the pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musiccli import zeroshot
from musiccli.errors import MtxError
from musiccli.manifest import Record

STYLES = ["rock", "jazz", "techno", "folk"]
MOODS = ["dark", "happy", "calm", "angry"]
INSTRUMENTS = ["piano", "guitar", "drums"]


def rec(i: int, path: str = "/m/x.wav", tags=(), **extra) -> Record:
    return Record(id=f"t{i}", audio_path=path, caption="c", duration=1.0, tags=list(tags), extra=extra)


@pytest.mark.parametrize("records,field,classes,multi,rows", [
    ([rec(0, style="rock"), rec(1, style="jazz"), rec(2), rec(3, style="rock")], "style", ["jazz", "rock"], False,
     [0, 1, 3]),
    ([rec(0, instruments=["piano", "drums"]), rec(1, instruments=["piano"]), rec(2, instruments=[])], "instruments",
     ["drums", "piano"], True, [0, 1]),
    ([rec(0, tags=["genre---rock", "mood/theme---sad"]), rec(1, tags=["genre---pop", "genre---rock"]),
      rec(2, tags=["instrument---piano"])], "genre---", ["pop", "rock"], True, [0, 1]),
    ([rec(0, tags=["mood/theme---sad"]), rec(1, tags=["mood/theme---happy"])], "mood/theme---", ["happy", "sad"],
     False, [0, 1]),
    # GTZAN's layout: the labels are the directory names.
    ([rec(0, "/data/gtzan/blues/blues.00000.wav"), rec(1, "/data/gtzan/metal/metal.00003.au"),
      rec(2, "/data/gtzan/blues/blues.00001.wav")], "folder", ["blues", "metal"], False, [0, 1, 2]),
])
def test_label_sets(records, field, classes, multi, rows) -> None:
    ls = zeroshot.label_set(records, field)
    assert ls.classes == classes and ls.multi is multi and ls.rows.tolist() == rows
    assert ls.targets.shape == (len(rows), len(classes)) and (ls.targets.sum(1) >= 1).all()


def test_label_set_refuses_a_field_nobody_has() -> None:
    with pytest.raises(MtxError, match="no record has a 'genre_top' label"):
        zeroshot.label_set([rec(0, style="rock")], "genre_top")


def test_prompts_and_class_vectors() -> None:
    assert zeroshot.prompt_templates("clap") == ("This audio is a {} song.",)
    with pytest.raises(MtxError, match="unknown prompt"):
        zeroshot.prompt_templates("fancy")
    seen = []

    def encode(texts):
        seen.extend(texts)
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    v = zeroshot.class_vectors(encode, ["hip_hop", "rock"], "ensemble")
    assert v.shape == (2, 2) and np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert "This audio is a hip hop song." in seen and "rock" in seen
    assert len(seen) == 2 * len(zeroshot.PROMPTS["ensemble"])


def test_single_label_metrics_against_naive() -> None:
    rng = np.random.default_rng(0)
    scores, y = rng.standard_normal((200, 6)), rng.integers(0, 5, 200)   # class 5 never occurs
    got = zeroshot.single_label_metrics(scores, y, 6)
    pred = [int(np.argmax(s)) for s in scores]
    assert got["top1"] == pytest.approx(np.mean([p == t for p, t in zip(pred, y)]))
    assert got["top3"] == pytest.approx(np.mean([t in np.argsort(-s)[:3] for s, t in zip(scores, y)]))
    recalls = [np.mean([p == c for p, t in zip(pred, y) if t == c]) for c in range(5)]
    assert got["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert np.array(got["confusion"]).sum() == 200 and np.array(got["confusion"])[5].sum() == 0


def test_multi_label_metrics_against_naive() -> None:
    rng = np.random.default_rng(1)
    targets = (rng.random((80, 4)) < 0.3).astype(np.int8)
    targets[:, 3] = 0   # a class without positives is not scored
    scores = targets + rng.standard_normal((80, 4))
    got = zeroshot.multi_label_metrics(scores, targets)

    def naive_auc(t, s):   # P(score of a positive > score of a negative)
        pos, neg = s[t == 1], s[t == 0]
        return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])

    assert got["n_classes_scored"] == 3
    assert got["roc_auc"] == pytest.approx(np.mean([naive_auc(targets[:, j], scores[:, j]) for j in range(3)]))
    assert 0 < got["pr_auc"] <= 1


# --------------------------------------------------------------------------- the eval stage
def make_synth(state, n: int = 128, dim: int = 24, seed: int = 0) -> list[Record]:
    """Audio vectors are a function of style and mood (plus noise); captions name them."""
    from musiccli import store as store_mod
    from musiccli.manifest import write_manifest

    rng = np.random.default_rng(seed)
    code = {w: rng.standard_normal(dim).astype(np.float32) for w in STYLES + MOODS + INSTRUMENTS}
    offset = rng.normal(2.0, 0.5, dim).astype(np.float32)
    records, vectors = [], []
    for i in range(n):
        # each block of 16 holds every (style, mood) pair once; blocks go train, val, train, test, ...
        s, m, ins = STYLES[i % 4], MOODS[(i // 4) % 4], INSTRUMENTS[(i // 2) % 3]
        split = ("train", "val", "train", "test")[(i // 16) % 4]
        records.append(Record(id=f"t{i:03d}", audio_path=f"/music/{s}/t{i:03d}.wav", caption=f"{m} {s} with {ins}",
                              duration=30.0, dataset="synth", artist=f"artist {i}", tags=[s, m, ins], split=split,
                              extra={"style": s, "mood": m, "instruments": [ins]}))
        vec = code[s] + code[m] + 0.5 * code[ins] + 0.8 * rng.standard_normal(dim).astype(np.float32)
        vectors.append(offset + 3.0 * vec)
    write_manifest(state.manifest_path("lib"), records)
    spath = state.embeddings_path("fake", "lib")
    store_mod.write_part(spath, 0, [r.id for r in records], np.stack(vectors))
    store_mod.assemble(spath, dim, "float32", {"encoder": "fake", "dim": dim, "aggregation": "mean"}, 1)
    return records


@pytest.mark.slow
def test_eval_zero_shot_with_baselines_probe_and_pictures(state, tiny_backbone, cli) -> None:
    import torch

    from musiccli.evaluate import EvalConfig, run_eval
    from musiccli.training import TrainConfig, run_train

    torch.set_num_threads(1)
    make_synth(state)
    run_train(state, TrainConfig(audio_encoder="fake", text_backbone=str(tiny_backbone), epochs=6, batch_size=8,
                                 lr=2e-3, head_hidden=32, max_length=16, device="cpu", precision="fp32",
                                 dropout=0.0, export=False))
    res = run_eval(state, EvalConfig(zero_shot=("style", "instruments", "folder"), prompt="raw", device="cpu",
                                     precision="fp32"))
    zs = res.report["zero_shot"]
    assert zs["prompt"] == "raw" and zs["templates"] == ["{}"]
    style = zs["fields"]["style"]
    assert style["kind"] == "single-label" and style["classes"] == sorted(STYLES) and style["n_test"] == 32
    systems = style["systems"]
    assert set(systems) == {"model", "untrained", "random", "probe"}
    chance = 1 / len(STYLES)
    print({s: round(v["top1"], 3) for s, v in systems.items()})
    assert systems["model"]["top1"] > chance + 0.15
    assert systems["probe"]["top1"] > systems["model"]["top1"] or systems["probe"]["top1"] == 1.0
    assert systems["probe"]["n_train"] == 64
    assert zs["fields"]["folder"]["classes"] == sorted(STYLES)   # /music/<style>/... : the folder names
    inst = zs["fields"]["instruments"]
    assert inst["kind"] == "single-label"   # one instrument per track here
    assert 0 <= systems["random"]["top1"] <= 1

    # The pictures: non-empty PNGs, all referenced by report.html.
    html = res.html
    assert html is not None and html.name == "report.html" and html.parent == res.path.with_suffix("")
    pngs = sorted(p.name for p in html.parent.glob("*.png"))
    assert {"cosine.png", "map.png", "tag_roc.png", "recall_at_k.png", "confusion-style.png"} <= set(pngs)
    page = html.read_text()
    for p in pngs:
        data = (html.parent / p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        assert f"src='{p}'" in page
    assert "Zero-shot classification" in page and "style top1" in page and "probe" in page

    # The CLI prints the zero-shot table and the page's path; --no-plots draws nothing.
    r = cli("eval", "--zero-shot", "style", "--prompt", "clap", "--no-plots", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "zero-shot classification, prompt clap" in r.output and "report with pictures" not in r.output
    rep = json.loads(res.path.read_text())
    assert rep["zero_shot"]["templates"] == ["This audio is a {} song."]
    r = cli("eval", "--zero-shot", "style", "--prompt", "fancy")
    assert r.exit_code == 1 and "unknown prompt" in r.output
