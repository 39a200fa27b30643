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
