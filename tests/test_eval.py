"""`mtx eval`: report contents, baselines, stage contract and CLI output on a fabricated run."""

from __future__ import annotations

import json

import pytest

from musiccli.errors import MtxError
from musiccli.evaluate import EvalConfig, run_eval
from musiccli.state import Resume, read_json

METRICS = {"R@1", "R@5", "R@10", "mAP@10", "MRR", "MedR", "MedR0", "queries"}


@pytest.mark.slow
def test_report_fields_baselines_and_perfect_model(make_run, state) -> None:
    run = make_run()
    res = run_eval(state, EvalConfig())
    rep = res.report
    assert res.path == state.run_dir("run1") / "eval-test-best.json"
    assert read_json(res.path) == json.loads(json.dumps(rep))  # the file is the report
    assert rep["run"] == "run1" and rep["split"] == "test" and rep["checkpoint"] == "best"
    assert "MedR is 1-based" in rep["protocol"]["median_rank"] and "MedR0 is 0-based" in rep["protocol"]["median_rank"]
    assert rep["protocol"]["query_protocol"] == "main" and "main caption" in rep["protocol"]["text_to_music"]
    assert rep["tag_queries"]["rock"] == "rock"
    assert rep["leak_check"]["dropped_training_records"] == 0
    from musiccli.text_health import PROMPTS, mean_pairwise_cosine
    want = mean_pairwise_cosine(run["model"].encode(list(PROMPTS)))   # naive: the figure by hand
    assert rep["text_health"]["mean_pairwise_cosine"] == pytest.approx(want, abs=1e-5)
    assert rep["text_health"]["threshold"] == 0.99
    test_tracks = [r for r in run["records"] if r.split == "test"]
    c = rep["counts"]
    assert c["tracks"] == c["text_queries"] == len(test_tracks) == 20
    assert c["captions"] == 40 and c["distinct_captions"] == 24  # 20 main + 4 shared "a <genre> piece"
    # genres have 5 test positives each; moods 4 and "rare" 1 are below the threshold
    assert c["tags_used"] == 4 and c["tags_skipped"] == 6 and c["tags_total"] == 10
    assert set(rep["results"]) == {"model", "untrained", "random"}
    for system in rep["results"].values():
        for direction in ("text_to_music", "music_to_text"):
            assert set(system[direction]) == METRICS
            assert system[direction]["MedR"] >= 1.0 and system[direction]["MedR0"] >= 0.0
        assert 0.0 <= system["tags"]["roc_auc"] <= 1.0
    # The store holds exactly what the model predicts for each main caption.
    model = rep["results"]["model"]
    assert model["text_to_music"]["R@1"] >= 0.9 and model["text_to_music"]["MedR"] == 1.0
    assert model["text_to_music"]["MedR0"] == 0.0
    assert model["music_to_text"]["R@1"] >= 0.9
    assert rep["results"]["random"]["text_to_music"]["R@1"] < model["text_to_music"]["R@1"]
    assert rep["results"]["untrained"]["text_to_music"]["R@1"] < model["text_to_music"]["R@1"]
    ratio = rep["ratio_r10_model_vs_random"]["text_to_music"]
    assert ratio == pytest.approx(model["text_to_music"]["R@10"] / rep["results"]["random"]["text_to_music"]["R@10"])

    again = run_eval(state, EvalConfig())
    assert again.skipped and again.report["results"] == rep["results"]


@pytest.mark.slow
def test_new_weights_are_evaluated_afresh_and_interrupt_resumes(make_run, state) -> None:
    run = make_run(perfect=False)
    first = run_eval(state, EvalConfig(baselines=False))
    assert set(first.report["results"]) == {"model"}

    # "More training": new head weights make the stored report stale, no --force needed.
    import torch

    with torch.no_grad():
        for p in run["model"].head.parameters():
            p.add_(0.5)
    run["model"].save_pretrained(state.run_dir("run1") / "best")

    class StopAfterFirst:
        """Progress that interrupts after the first committed system (like Ctrl-C)."""

        def __init__(self) -> None:
            from contextlib import contextmanager

            self.n = 0
            outer = self

            class Task:
                def advance(self, k: int = 1) -> None:
                    outer.n += k
                    if outer.n >= 1:
                        raise KeyboardInterrupt

                def update(self, **kw) -> None:
                    pass

            @contextmanager
            def task(*a, **kw):
                yield Task()

            self.task = task

        def check_interrupt(self) -> None:
            pass

    with pytest.raises(KeyboardInterrupt):
        run_eval(state, EvalConfig(baselines=False), StopAfterFirst())
    # Same inputs, fresh start over the partial record: refused with the resume hint.
    with pytest.raises(MtxError, match="interrupted eval found"):
        run_eval(state, EvalConfig(baselines=False))
    resumed = run_eval(state, EvalConfig(baselines=False, resume=Resume.CONTINUE))
    assert not resumed.skipped
    clean = run_eval(state, EvalConfig(baselines=False, resume=Resume.FORCE))
    assert resumed.report["results"] == clean.report["results"]
    assert resumed.report["inputs"]["weights"] != first.report["inputs"]["weights"]


@pytest.mark.slow
def test_cli_table_json_and_unknown_run(make_run, cli) -> None:
    make_run()
    human = cli("eval", "--no-baselines")
    assert human.exit_code == 0, human.output
    assert "text->music R@1" in human.stdout and "model" in human.stdout
    assert "eval-test-best.json" in human.output and "1-based" in human.output
    as_json = cli("eval", "--no-baselines", "--json")
    assert as_json.exit_code == 0, as_json.output
    rep = json.loads(as_json.stdout)
    assert rep["results"]["model"]["text_to_music"]["R@1"] >= 0.9
    bad = cli("eval", "--run", "nope")
    assert bad.exit_code == 1
    assert "unknown run 'nope'" in bad.output and "run1" in bad.output
    bad_split = cli("eval", "--split", "dev")
    assert bad_split.exit_code == 1 and "test, train, val" in bad_split.output


@pytest.mark.slow
def test_training_records_are_dropped_from_another_manifests_test_split(make_run, state, caplog) -> None:
    from musiccli.manifest import Record, read_manifest, write_manifest

    run = make_run()
    records = read_manifest(state.manifest_path("lib"))
    # Another manifest of the same tracks, split differently: 6 of the run's train tracks are now test,
    # one of them only through its recording (a copy under another id with the same group).
    other = [Record.from_dict(r.to_dict()) for r in records]
    train_ids = [r.id for r in records if r.split == "train"]
    for r in other:
        r.split = "test" if r.split == "test" or r.id in train_ids[:5] else "train"
    for r in records:
        if r.id == train_ids[5]:
            r.group = "rec:5"
    write_manifest(state.manifest_path("lib"), records)
    copy = next(r for r in other if r.id == train_ids[5])
    copy.split, copy.group = "test", "rec:5"
    write_manifest(state.manifest_path("other"), other)
    import shutil

    shutil.copy(run["store"], state.embeddings_path(run["encoder"], "other"))
    rep = run_eval(state, EvalConfig(manifest="other", baselines=False)).report
    assert rep["leak_check"]["dropped_training_records"] == 6
    assert rep["counts"]["tracks"] == 20
    assert "were training records of run run1" in caplog.text
    # Only training records in the split: refused, not scored.
    for r in other:
        r.split = "test" if r.id in train_ids else "train"
    write_manifest(state.manifest_path("other"), other)
    with pytest.raises(MtxError, match="every test record of other was a training record"):
        run_eval(state, EvalConfig(manifest="other", baselines=False, resume=Resume.FORCE))


@pytest.mark.slow
def test_every_caption_query_protocol(make_run, state) -> None:
    make_run()
    rep = run_eval(state, EvalConfig(query_protocol="all", baselines=False)).report
    assert rep["protocol"]["query_protocol"] == "all" and "Song Describer" in rep["protocol"]["text_to_music"]
    # 20 distinct main captions + 4 shared "a <genre> piece" alternatives are all queries.
    assert rep["counts"]["text_queries"] == rep["results"]["model"]["text_to_music"]["queries"] == 24
    with pytest.raises(MtxError, match="query protocol"):
        run_eval(state, EvalConfig(query_protocol="every"))
