"""The table of bad inputs: each gives one clear line (and a hint), exit 1 (2 for usage
errors), never an internal error, and loses nothing that was committed."""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from musiccli.cli.app import app
from musiccli.errors import MtxError


def mtx(state: Path, *args: str):
    # Wide, so that usage-error boxes do not wrap the message.
    return CliRunner().invoke(app, ["--state-dir", str(state), *args], catch_exceptions=False,
                              env={"COLUMNS": "400"})


def one_clear_line(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output
    flat = " ".join(result.output.replace("│", " ").split())
    for n in needles:
        assert n in flat, (n, result.output)


@pytest.fixture()
def synth_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    assert mtx(state, "download", "synth", "--n", "12", "--duration", "1", "--sample-rate", "8000").exit_code == 0
    assert mtx(state, "unify", "--name", "lib").exit_code == 0
    return state


# --------------------------------------------------------------------------- disk, state dir
@pytest.mark.slow
def test_embed_with_a_full_disk_keeps_committed_parts(synth_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from musiccli import store

    real, calls = store.write_part, []

    def full_after_one(path, index, *a, **kw):
        calls.append(index)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(store.parts_dir(path) / "part.h5"))
        return real(path, index, *a, **kw)

    monkeypatch.setattr(store, "write_part", full_after_one)
    r = mtx(synth_state, "embed", "--manifest", "lib", "--chunk-tracks", "4", "--workers", "0")
    one_clear_line(r, 1, "no space left on device at", "--continue")
    out = synth_state / "embeddings" / "dsp" / "lib.h5"
    assert len(store.committed_parts(out)) == 1
    monkeypatch.setattr(store, "write_part", real)
    r = mtx(synth_state, "embed", "--manifest", "lib", "--chunk-tracks", "4", "--workers", "0", "--continue")
    assert r.exit_code == 0, r.output
    with store.EmbeddingStore(out) as s:
        assert len(s) == 12


def test_library_errors_that_mean_a_full_disk_are_named() -> None:
    from musiccli.cli._errors import system_error

    class SafetensorError(Exception):  # what safetensors raises (its Rust IoError, as text)
        pass

    e = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                        'message: "No space left on device" })')
    assert system_error(e, Path("/s"))[0].startswith("no space left on device at")
    h5 = OSError("Can't write data (file write failed: time = x, errno = 28, error message = 'No space left')")
    assert system_error(h5, Path("/s")) is not None


def test_read_only_state_dir(synth_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, for whom chmod changes nothing: the OS's answer on a read-only mount is simulated.
    import tempfile

    def read_only(*a, dir=None, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    r = mtx(synth_state, "unify", "--name", "other")
    one_clear_line(r, 1, f"state dir {synth_state} is read-only", "hint:")


def test_state_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    one_clear_line(mtx(f, "unify"), 2, "is a file, not a folder", "--state-dir")


# --------------------------------------------------------------------------- issue 22 (reliability) rows
# Each row: what to prepare ("none", "synth": a downloaded and unified synth library, "index": a trained
# run with its search index), how to damage it, the command, its exit code and what its one line says.
def _not_utf8(path: Path) -> None:
    path.write_bytes(b'{"name": "caf\xe9 \xff"}')      # Latin-1 bytes where UTF-8 is expected


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


BAD_INPUTS_22 = [
    pytest.param("none", None, ["unify", "--name", "a" * 260], 1,
                 ["manifest name is 260 characters long", "at most 100 characters"], id="manifest-name-260"),
    pytest.param("synth", None, ["train", "--audio-encoder", "dsp", "--manifest", "lib", "--run", "r" * 300], 1,
                 ["run name is 300 characters long", "at most 128 characters"], id="run-name-300"),
    pytest.param("index", None, ["search", "jazz", "--index", "i" * 280], 1,
                 ["index name is 280 characters long"], id="index-name-280"),
    pytest.param("synth", None, ["embed", "--manifest", "lib", "--hop", "0"], 1,
                 ["--hop must be positive", "hint: give seconds above 0"], id="hop-0"),
    pytest.param("synth", None, ["unify", "--name", "x", "--min-duration", "30", "--max-duration", "10"], 1,
                 ["--min-duration 30.0 is above --max-duration 10.0", "hint: swap them"], id="min-above-max"),
    pytest.param("none", ("config.toml", "[embed]\nworkers = true\n"), ["embed"], 1,
                 ["config.toml: [embed] workers = true: a boolean where a value is expected",
                  "workers takes an int, as --workers does"], id="config-bool-for-int"),
    pytest.param("none", ("config.toml", "[embed]\ntags = 1\n"), ["embed"], 1,
                 ["config.toml: [embed] tags = 1 is not true or false"], id="config-int-for-bool"),
    pytest.param("none", ("config.toml", '[search]\ntop-k = "ten"\n'), ["search", "jazz"], 1,
                 ['config.toml: [search] top-k = "ten": Input should be a valid integer', "fix top-k in"],
                 id="config-text-for-int"),
    pytest.param("synth", ("stages/unify_lib.json", _not_utf8), ["unify", "--name", "lib"], 1,
                 ["unify_lib.json is damaged: not UTF-8 text", "rerun the same command with --force"],
                 id="stage-record-not-utf8"),
    pytest.param("index", ("runs/run1/run.json", _not_utf8), ["search", "jazz"], 1,
                 ["run.json is damaged: not UTF-8 text", "--force"], id="run-json-not-utf8"),
    pytest.param("index", ("index/run1--lib/meta.json", _not_utf8), ["search", "jazz"], 1,
                 ["meta.json is damaged: not UTF-8 text"], id="index-meta-not-utf8"),
    pytest.param("index", ("index/run1--lib/vectors.npy", _truncate), ["search", "jazz"], 1,
                 ["vectors.npy is damaged: truncated", "rebuild the index with `mtx search --force`"],
                 id="vectors-npy-truncated"),
    pytest.param("index", ("runs/run1/best/model.safetensors", _truncate), ["search", "jazz", "--force"], 1,
                 ["model.safetensors is damaged: not a complete safetensors file"], id="model-safetensors-truncated"),
]


@pytest.mark.parametrize(("needs", "damage", "args", "code", "needles"), BAD_INPUTS_22)
def test_issue_22_bad_inputs(request: pytest.FixtureRequest, tmp_path: Path, needs: str, damage, args: list[str],
                             code: int, needles: list[str]) -> None:
    if needs == "synth":
        state = request.getfixturevalue("synth_state")
    elif needs == "index":
        state = request.getfixturevalue("state_dir")
        request.getfixturevalue("make_run")()
        assert mtx(state, "search", "rock").exit_code == 0          # builds index/run1--lib
    else:
        state = tmp_path / "state"
    if damage is not None:
        target, how = state / damage[0], damage[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(how) if isinstance(how, str) else how(target)
    one_clear_line(mtx(state, *args), code, *needles)


def test_a_damaged_onnx_export_falls_back_to_pytorch_and_says_why(make_run, state_dir: Path) -> None:
    from musiccli.families.towers.onnx import export_checkpoint_onnx
    from musiccli.runs import export_dir
    from musiccli.state import StateDir

    run = make_run()
    onnx_dir = export_checkpoint_onnx(state_dir / "runs" / "run1" / "best",
                                      export_dir(StateDir.resolve(state_dir), "run1", "best"))[0].parent
    query = run["records"][3].caption
    for name, damage in (("model.onnx", _truncate), ("tokenizer.json", lambda p: p.write_bytes(b"\x00garbage"))):
        good = (onnx_dir / name).read_bytes()
        damage(onnx_dir / name)
        r = mtx(state_dir, "search", query, "--json")
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["query_runtime"] == "torch" and out["hits"][0]["id"] == run["records"][3].id
        assert f"{name} is damaged" in " ".join(out["notes"]) and "using PyTorch" in " ".join(out["notes"])
        one_clear_line(mtx(state_dir, "search", query, "--query-runtime", "onnx"), 1, f"{name} is damaged")
        (onnx_dir / name).write_bytes(good)
    r = mtx(state_dir, "search", query, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["query_runtime"] == "onnx", r.output


def test_damaged_caches_name_the_file_or_are_rebuilt(tmp_path: Path) -> None:
    from musiccli.safe_read import DamagedFileError, onnx_file_loads, open_h5
    from musiccli.families.student.melcache import MelCache

    cache = tmp_path / "lib-abc.h5"
    with h5py.File(cache, "w") as f:
        f.create_dataset("db", data=np.zeros((5000, 16), np.float32))
    _truncate(cache)
    with pytest.raises(DamagedFileError) as e:
        MelCache(cache)
    assert str(cache) in e.value.message and "builds it again" in e.value.hint
    with pytest.raises(MtxError, match="file not found"):
        open_h5(tmp_path / "missing.h5")
    # A cached student ONNX that is damaged reads as absent, so the encoder exports it again.
    (tmp_path / "student_music_encoder.onnx").write_bytes(b"\x08\x07truncated")
    assert onnx_file_loads(tmp_path / "student_music_encoder.onnx") is False


def test_help_into_a_closed_pipe_is_a_quiet_exit(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = ("import musiccli.cli.app as a, musiccli.unify as u\n"
            "def broken(*args, **kw): raise BrokenPipeError(32, 'Broken pipe')\n"
            "u.run_unify = broken\n"
            "a.main()\n")
    for argv in (["-m", "musiccli", "search", "--help"], ["-m", "musiccli", "--help"],
                 ["-c", code, "--state-dir", str(tmp_path), "unify", "--name", "x"]):
        read, write = os.pipe()
        os.close(read)                                   # `| head` that has already gone away
        try:
            p = subprocess.run([sys.executable, *argv], stdout=write, stderr=subprocess.PIPE, text=True,
                               timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        finally:
            os.close(write)
        assert p.returncode == 0 and "internal error" not in p.stderr and "Traceback" not in p.stderr, p.stderr


# --------------------------------------------------------------------------- stores
def _store(path: Path, ids: list[str], emb: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=emb)
    return path


@pytest.mark.parametrize(("ids", "emb", "message"), [
    ([f"t{i}" for i in range(50)], np.zeros(50, np.float32), "embeddings have shape (50,), expected [N, D]"),
    ([f"t{i}" for i in range(60)], np.zeros((50, 4), np.float32), "60 ids for 50 embedding rows"),
    (["a", "a"], np.zeros((2, 4), np.float32), "1 duplicate id(s)"),
    ([f"t{i}" for i in range(5)], np.array([[0, 1]] * 2 + [[np.nan, 1]] * 2 + [[np.inf, 0]], np.float32),
     "3 row(s) with non-finite values"),
])
def test_bad_stores_are_refused_at_load(tmp_path: Path, ids, emb, message: str) -> None:
    from musiccli.store import EmbeddingStore

    path = _store(tmp_path / "x.h5", ids, emb)
    with pytest.raises(MtxError) as e:
        EmbeddingStore(path)
    assert message in e.value.message and e.value.hint
    path.unlink()  # the file was closed behind the error


# --------------------------------------------------------------------------- manifests
GOOD = {"id": "a", "audio_path": "/x.wav", "caption": "calm piano", "duration": 3.0}


@pytest.mark.parametrize(("records", "message"), [
    ([{**GOOD, "duration": math.nan}], "record 'a' has duration nan"),
    ([{**GOOD, "duration": -2}], "record 'a' has duration -2"),
    ([{**GOOD, "duration": 0}], "record 'a' has duration 0"),
    ([{**GOOD, "caption": 5}], "record 'a' has a non-string caption (int)"),
    ([{**GOOD, "caption": ["a", "b"]}], "record 'a' has a non-string caption (list)"),
    ([{**GOOD, "caption": {"text": "x"}}], "record 'a' has a non-string caption (dict)"),
    ([{**GOOD, "alt_captions": [1, 2]}], "record 'a' has alt_captions that is not a list of strings"),
    ([{**GOOD, "tags": "rock"}], "record 'a' has tags that is not a list of strings"),
    ([], "is empty"),
])
def test_bad_manifests_are_refused_with_the_record_id(tmp_path: Path, records, message: str) -> None:
    path = tmp_path / "m.json"
    # json.dumps writes NaN as NaN, which Python's reader accepts: exactly what a user's script produces.
    path.write_text(json.dumps(records))
    r = mtx(tmp_path / "state", "embed", "--manifest", str(path))
    one_clear_line(r, 1, message)


def test_relative_audio_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "audio").mkdir(parents=True)
    sf.write(lib / "audio" / "a.wav", np.sin(np.arange(8000) / 10).astype(np.float32) * 0.2, 8000)
    (lib / "m.json").write_text(json.dumps([{**GOOD, "audio_path": "audio/a.wav"}]))
    from musiccli.manifest import read_manifest

    assert read_manifest(lib / "m.json")[0].audio_path == str(lib / "audio" / "a.wav")
    r = mtx(tmp_path / "state", "embed", "--manifest", str(lib / "m.json"), "--workers", "0", "--json")
    assert r.exit_code == 0, r.output
    assert '"n_failed": 0' in r.output


def test_a_moved_state_dir_keeps_working(synth_state: Path, tmp_path: Path) -> None:
    manifest = json.loads((synth_state / "manifests" / "lib.json").read_text())
    assert all(not Path(r["audio_path"]).is_absolute() for r in manifest)  # stored relative to manifests/
    moved = tmp_path / "restored"
    shutil.move(str(synth_state), moved)
    r = mtx(moved, "embed", "--manifest", "lib", "--workers", "0", "--force", "--json")
    assert r.exit_code == 0, r.output
    assert '"n_ok": 12' in r.output and '"n_failed": 0' in r.output


def test_manifest_name_is_looked_up_before_a_folder_of_that_name(synth_state: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lib").mkdir()  # a folder ./lib must not shadow the manifest named lib
    r = mtx(synth_state, "embed", "--manifest", "lib", "--workers", "0")
    assert r.exit_code == 0, r.output
    r = mtx(synth_state, "embed", "--manifest", "./lib", "--workers", "0")
    one_clear_line(r, 1, "manifest ./lib is a directory, not a manifest file")


# --------------------------------------------------------------------------- search output, flags
def test_m3u_into_a_missing_folder_is_created_and_titles_are_sanitised(tmp_path: Path) -> None:
    from musiccli.playlists import write_m3u

    hits = [{"id": "a", "audio_path": "/m/a.flac", "duration": 61.4, "artist": "X",
             "title": "evil\n/etc/passwd\r\n#EXTINF:1,x"}]
    out = write_m3u(tmp_path / "new" / "deeper" / "p.m3u", hits)
    lines = out.read_text().splitlines()
    assert lines[0] == "#EXTM3U" and len(lines) == 3 and lines[2] == "/m/a.flac"
    assert lines[1].startswith("#EXTINF:61,X - evil /etc/passwd")


def test_user_data_with_markup_is_printed_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from musiccli import search as core

    def fake(state, cfg, progress):
        return core.SearchResult(query=cfg.query, run="r[1]", index="i", hits=[
            {"rank": 1, "score": 0.5, "id": "x", "artist": "[/]", "title": "[bold]t", "dataset": "d",
             "tags": ["[red]"], "audio_path": "/a/[x].wav"}])

    monkeypatch.setattr(core, "search", fake)
    r = mtx(tmp_path / "state", "search", "[/]")
    assert r.exit_code == 0, r.output
    for text in ('"[/]"', "[/] - [bold]t", "[red]", "run r[1]"):
        assert text in r.output, (text, r.output)


@pytest.mark.parametrize(("args", "flag"), [
    (["train", "--audio-encoder", "dsp", "--lr", "-1"], "--lr"),
    (["train", "--audio-encoder", "dsp", "--lr", "nan"], "--lr"),
    (["search", "jazz", "--m3u", "{tmp}"], "--m3u"),
])
def test_usage_errors_name_the_flag(tmp_path: Path, args: list[str], flag: str) -> None:
    r = mtx(tmp_path / "state", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    one_clear_line(r, 2, flag)


def test_temp_files_of_dead_processes_are_cleaned_on_resume(synth_state: Path, monkeypatch) -> None:
    import os
    import subprocess
    import sys
    import time

    from musiccli import store
    from musiccli.state import STALE_TMP_SECONDS, atomic_path, clean_stale_temps

    out = synth_state / "embeddings" / "dsp" / "lib.h5"
    parts = store.parts_dir(out)
    parts.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftovers = [out.parent / f".tmp-lib.h5.{dead}.abcd1234", parts / f".tmp-part-000000.h5.{dead}.zz__9988",
                 out.parent / ".tmp-lib.h5.k2j3h4g5"]          # old form, no pid: cleaned once old
    for p in leftovers:
        p.write_bytes(b"x" * 1000)
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(leftovers[2], (old, old))
    live = out.parent / f".tmp-lib.h5.{os.getpid()}.live0000"  # a writer that is still running: kept
    live.write_bytes(b"y")
    partial = out.parent / ".tmp-audio.zip.part"                 # a resumable download: kept
    partial.write_bytes(b"z")
    r = mtx(synth_state, "embed", "--manifest", "lib", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert not any(p.exists() for p in leftovers)
    assert live.exists() and partial.exists()
    # atomic_path names its temp files with the writer's pid, which is what makes this possible.
    with atomic_path(synth_state / "x.json") as tmp:
        assert f".{os.getpid()}." in tmp.name
        tmp.write_text("{}")
    assert clean_stale_temps(synth_state) == 0


def test_unify_again_after_moving_the_state_dir(synth_state: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.move(str(synth_state), moved)
    r = mtx(moved, "unify", "--name", "again")
    assert r.exit_code == 0, r.output
    from musiccli.manifest import read_manifest

    records = read_manifest(moved / "manifests" / "again.json")
    assert len(records) == 12 and all(Path(x.audio_path).is_file() for x in records)


def test_train_with_a_full_disk_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    from musiccli.cli._errors import system_error
    from musiccli.training.checkpoint import write_checkpoint_dir

    run = tmp_path / "run"
    write_checkpoint_dir(run, "latest", lambda d: (d / "model.safetensors").write_bytes(b"good"))

    class SafetensorError(Exception):
        pass

    def full(d: Path) -> None:
        (d / "model.safetensors").write_bytes(b"ha")  # half written, then the disk is full
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    with pytest.raises(SafetensorError) as e:
        write_checkpoint_dir(run, "latest", full)
    assert (run / "latest" / "model.safetensors").read_bytes() == b"good"
    assert [p.name for p in run.iterdir()] == ["latest"]
    message, hint = system_error(e.value, tmp_path)
    assert message.startswith("no space left on device") and "--continue" in hint


# --------------------------------------------------------------------------- train and export options
# Each refused before any work, in one line: weights, names and sizes that used to train, or end in an
# internal error or the wrong hint ("diverged ... lower --lr").
@pytest.mark.parametrize(("args", "code", "needles"), [
    (["--objective", "student", "--teachers", "dsp:nan"], 1, ["invalid teacher 'dsp:nan'", "finite number above 0"]),
    (["--objective", "student", "--teachers", "dsp:inf"], 1, ["invalid teacher 'dsp:inf'"]),
    (["--objective", "student", "--teachers", "dsp:0.4,tiny:0"], 1, ["invalid teacher 'tiny:0'"]),
    (["--objective", "student", "--teachers", "dsp:-1"], 1, ["invalid teacher 'dsp:-1'"]),
    (["--objective", "student", "--teachers", "../embeddings/dsp"], 1, ["invalid teacher name '../embeddings/dsp'"]),
    (["--audio-encoder", "dsp", "--loss", "infonce+nan*listmle"], 1, ["bad loss weight 'nan'", "above 0"]),
    (["--audio-encoder", "dsp", "--loss", "infonce+-1*listmle"], 1, ["bad loss weight '-1'"]),
    (["--audio-encoder", "dsp", "--loss", "0*infonce"], 1, ["bad loss weight '0'"]),
    (["--objective", "student", "--student-blocks", "6", "--crop", "0.2"], 1,
     ["--crop 0.2 gives 19 mel frames, fewer than the 64 that 6 blocks pool down", "--crop 0.7 or more"]),
    (["--objective", "student", "--crop", "1000"], 1, ["--crop must be above 0 and at most 120 seconds"]),
    (["--audio-encoder", "dsp", "--val-split", "bogus"], 1, ["unknown validation split 'bogus'"]),
    (["--objective", "student", "--val-split", "bogus"], 1, ["unknown validation split 'bogus'"]),
    (["--audio-encoder", "dsp", "--init-from", ""], 1, ["--init-from is empty"]),
    (["--audio-encoder", "dsp", "--temperature", "0"], 2, ["must be a positive number", "--learn-temperature"]),
])
def test_bad_train_options_are_refused_in_one_line(synth_state: Path, args: list[str], code: int,
                                                   needles: list[str]) -> None:
    r = mtx(synth_state, "train", "--epochs", "1", "--device", "cpu", *args)
    one_clear_line(r, code, *needles)
    assert not list((synth_state / "runs").glob("*")) if (synth_state / "runs").exists() else True


def test_export_out_naming_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"keep me")
    r = mtx(tmp_path / "state", "export", "--out", str(target))
    one_clear_line(r, 1, "is a file, not a folder")
    assert target.read_bytes() == b"keep me"
