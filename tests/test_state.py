"""Atomic writes and the stage (resume) contract."""

from __future__ import annotations

import json

import pytest

from musiccli.errors import MtxError
from musiccli.state import (Resume, StageStatus, StateDir, atomic_path, atomic_write_json, begin_stage,
                            check_name, diff_configs, load_stage)


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


# --------------------------------------------------------------------------- issue 22
@pytest.mark.parametrize(("data", "what"), [
    (b'{"run": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 12)"),
    (b'{"run": ', "not valid JSON"),
])
def test_a_damaged_json_file_is_one_line_naming_it(tmp_path, data: bytes, what: str) -> None:
    from musiccli.state import DamagedFileError, read_json

    path = tmp_path / "run.json"
    path.write_bytes(data)
    with pytest.raises(DamagedFileError) as e:
        read_json(path)
    assert e.value.message.startswith(f"{path} is damaged: {what}")
    assert "--force" in e.value.hint
    with pytest.raises(MtxError, match="is a folder"):
        read_json(tmp_path)


def test_a_damaged_stage_record_says_to_delete_it(tmp_path) -> None:
    state = StateDir.resolve(tmp_path)
    begin_stage(state, "unify", "unify:x", {}, Resume.FRESH).complete()
    record = state.stages_dir / "unify_x.json"
    for damage in (b"\xff\xfe{", b"[1, 2]"):
        record.write_bytes(damage)
        with pytest.raises(MtxError) as e:
            load_stage(state, "unify:x")
        assert str(record) in e.value.message and "--force" in e.value.hint
    with pytest.raises(MtxError):
        begin_stage(state, "unify", "unify:x", {}, Resume.CONTINUE)
    run = begin_stage(state, "unify", "unify:x", {}, Resume.FORCE)          # --force starts over
    assert not run.already_complete and load_stage(state, "unify:x").status == "running"
    run.close()
    pickled = __import__("pickle").loads(__import__("pickle").dumps(e.value))   # raised in a worker process
    assert type(pickled) is type(e.value) and pickled.message == e.value.message


def test_name_limits_leave_room_for_names_built_from_names(tmp_path) -> None:
    from musiccli.state import MAX_NAME_LENGTH, stage_record_path

    state = StateDir.resolve(tmp_path)
    manifest, run = "m" * MAX_NAME_LENGTH, "dsp-" + "m" * MAX_NAME_LENGTH          # a default run name
    assert check_name("manifest", manifest) and check_name("run", run)
    assert check_name("index", f"{run}--{manifest}--milvus")
    for kind, n in (("manifest", 260), ("run", 300), ("index", 300)):
        with pytest.raises(MtxError, match=f"{kind} name is {n} characters long"):
            check_name(kind, "a" * n)
    # Every file named after them fits in 255 bytes, the atomic writer's temp name included.
    key = f"index:{run}--{manifest}--milvus"
    path = stage_record_path(state, key)
    assert len(f".tmp-{path.name}.4194304.abcdefgh") <= 255 and path != stage_record_path(state, key + "x")
    begin_stage(state, "search", key, {}, Resume.FRESH).complete()
    assert load_stage(state, key).status == "complete"
    assert state.manifest_path(manifest).parent == tmp_path / "manifests"


def test_stage_records_never_hold_credentials(tmp_path) -> None:
    state = StateDir.resolve(tmp_path)
    url = "https://bob:hunter2@mirror.example/x?token=t0ps3cret&page=1"
    run = begin_stage(state, "download", "download:x", {"mirror": url}, Resume.FRESH)
    run.mark(StageStatus.FAILED, f"cannot list {url}")
    text = (state.stages_dir / "download_x.json").read_text()
    assert "hunter2" not in text and "t0ps3cret" not in text and "bob:" not in text
    assert "https://mirror.example/x?token=REDACTED&page=1" in text
    # The same mirror with other credentials is the same config: --continue is not refused.
    again = begin_stage(state, "download", "download:x", {"mirror": url.replace("hunter2", "new")}, Resume.CONTINUE)
    assert again.resumed
    error = MtxError(f"failed: {url}", hint=f"check {url}")
    assert str(error) == "failed: {0} (hint: check {0})".format("https://mirror.example/x?token=REDACTED&page=1")


def test_exports_are_readable_as_the_umask_allows(tmp_path) -> None:
    import os

    from musiccli.state import honour_umask, make_temp_dir

    old = os.umask(0o022)
    try:
        d = make_temp_dir(tmp_path, ".tmp-onnx.")
        assert d.stat().st_mode & 0o777 == 0o755
        (d / "sub").mkdir(mode=0o700)
        (d / "sub" / "audio_stats.safetensors").write_bytes(b"x")
        os.chmod(d / "sub" / "audio_stats.safetensors", 0o600)   # what safetensors leaves
        honour_umask(d)
        assert (d / "sub").stat().st_mode & 0o777 == 0o755
        assert (d / "sub" / "audio_stats.safetensors").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        honour_umask(d)
        assert (d / "sub" / "audio_stats.safetensors").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
