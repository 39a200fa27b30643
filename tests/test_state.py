"""Atomic writes and the stage (resume) contract."""

from __future__ import annotations

import json

import pytest

from musiccli.errors import MtxError
from musiccli.state import (Resume, StateDir, atomic_path, atomic_write_json, begin_stage, check_name,
                            diff_configs, load_stage)


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_fresh_stage_then_complete_is_a_noop(tmp_path):
    state = StateDir.resolve(tmp_path)
    run = begin_stage(state, "unify", "unify:x", {"seed": 0}, Resume.FRESH)
    assert not run.already_complete and not run.resumed
    run.update(parsed=3)
    run.complete({"records": 3})
    again = begin_stage(state, "unify", "unify:x", {"seed": 0}, Resume.FRESH)
    assert again.already_complete
    assert again.record.result == {"records": 3}


def test_partial_stage_refuses_fresh_start_and_resumes_with_continue(tmp_path):
    state = StateDir.resolve(tmp_path)
    begin_stage(state, "embed", "embed:dsp:m", {"agg": "stats"}, Resume.FRESH).update(chunks=1)
    with pytest.raises(MtxError, match="interrupted embed found: rerun with --continue to resume, or --force"):
        begin_stage(state, "embed", "embed:dsp:m", {"agg": "stats"}, Resume.FRESH)
    run = begin_stage(state, "embed", "embed:dsp:m", {"agg": "stats"}, Resume.CONTINUE)
    assert run.resumed and run.record.counters == {"chunks": 1} and run.record.attempts == 2


def test_continue_with_changed_config_lists_differences(tmp_path):
    state = StateDir.resolve(tmp_path)
    begin_stage(state, "train", "train:r", {"lr": 1e-4, "epochs": 3}, Resume.FRESH)
    with pytest.raises(MtxError) as e:
        begin_stage(state, "train", "train:r", {"lr": 5e-4, "epochs": 3}, Resume.CONTINUE)
    assert "lr: 0.0001 -> 0.0005" in e.value.message and "epochs" not in e.value.message


def test_force_discards_outputs_and_starts_over(tmp_path):
    state = StateDir.resolve(tmp_path)
    out = tmp_path / "out.txt"
    out.write_text("old")
    begin_stage(state, "s", "s:1", {}, Resume.FRESH).update(n=1)
    run = begin_stage(state, "s", "s:1", {}, Resume.FORCE, discard=lambda: out.unlink())
    assert not out.exists() and not run.resumed and run.record.counters == {}
    assert load_stage(state, "s:1").status == "running"


def test_complete_output_with_different_config_is_refused(tmp_path):
    state = StateDir.resolve(tmp_path)
    begin_stage(state, "unify", "unify:d", {"max_samples": 10}, Resume.FRESH).complete({})
    with pytest.raises(MtxError, match="already exists with a different config"):
        begin_stage(state, "unify", "unify:d", {"max_samples": 20}, Resume.FRESH)


def test_redo_changed_restarts_on_new_inputs_but_continue_still_refuses(tmp_path):
    state = StateDir.resolve(tmp_path)
    out = tmp_path / "report.json"
    out.write_text("old")
    begin_stage(state, "eval", "eval:r", {"weights": "a"}, Resume.FRESH).complete({})
    run = begin_stage(state, "eval", "eval:r", {"weights": "b"}, Resume.FRESH, discard=out.unlink, redo_changed=True)
    assert not out.exists() and not run.already_complete and run.record.config == {"weights": "b"}
    with pytest.raises(MtxError, match="weights: 'b' -> 'c'"):
        begin_stage(state, "eval", "eval:r", {"weights": "c"}, Resume.CONTINUE, redo_changed=True)
    # Unchanged inputs keep the contract: a partial record is still refused on a fresh start.
    with pytest.raises(MtxError, match="interrupted eval found"):
        begin_stage(state, "eval", "eval:r", {"weights": "b"}, Resume.FRESH, redo_changed=True)


def test_continue_and_force_are_exclusive():
    with pytest.raises(MtxError):
        Resume.from_flags(True, True)
    assert Resume.from_flags(False, False) is Resume.FRESH


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "-flag"])
def test_names_cannot_escape_the_state_dir(bad):
    with pytest.raises(MtxError):
        check_name("run", bad)


def test_diff_configs_reports_added_and_removed_keys():
    assert diff_configs({"a": 1}, {"b": 2}) == ["a: 1 -> '<unset>'", "b: '<unset>' -> 2"]


def test_state_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MTX_HOME", str(tmp_path / "h"))
    assert StateDir.resolve().root == (tmp_path / "h").resolve()
    assert StateDir.resolve(tmp_path / "x").root == (tmp_path / "x").resolve()
    with pytest.raises(MtxError, match="no manifest"):
        StateDir.resolve(tmp_path / "empty").newest_manifest()
