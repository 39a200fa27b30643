"""MusicBench: JSON Lines files (one under its old name) + a datashare/ tar.gz over 127.0.0.1."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from httpserver import serve
from musiccli.errors import MtxError
from musiccli.progress import NullProgress
from musiccli.sources import musicbench as mb
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.verify import check_file


def _row(loc: str, caption: str, **kw) -> dict:
    return {"dataset": "MusicCaps", "location": loc, "main_caption": caption, "alt_caption": caption + " Again.",
            "prompt_aug": "", "prompt_ch": "The chord progression is Am, G.", "prompt_bt": "",
            "prompt_bpm": "The bpm is 120.", "prompt_key": "This song is in the key of A minor.",
            "beats": [[0.5, 1.0], [1, 2]], "bpm": 120.0, "chords": ["Am", "G"], "chords_time": [0.1, 1.2],
            "key": ["A", "minor"], "keyprob": [0.8], "is_audioset_eval_mcaps": False, **kw}


TRAIN = [_row("data/aaa111.wav", "A mellow piano tune."), _row("data_aug2/aaa111_pitch2.wav", "Pitched up."),
         _row("data/bbb222.wav", "Fast drums.", bpm=140.5, key="E major")]
TEST_A = [_row("data/ccc333.wav", "A sad violin.", is_audioset_eval_mcaps=True)]
TEST_B = [_row("data/ddd444.wav", "Loud guitars.", is_audioset_eval_mcaps=True),
          _row("data/missing.wav", "Not in the archive.")]


def _wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(8000 * seconds), np.float32) + 0.1, 8000, format="WAV")
    return buf.getvalue()


def build_www(www: Path, archive_name: str = "MusicBench.tar.gz") -> None:
    www.mkdir(parents=True, exist_ok=True)
    for name, rows in (("MusicBench_train.json", TRAIN), ("MusicBench_testA.json", TEST_A),
                       ("MusicBench_test_B.json", TEST_B)):
        (www / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with tarfile.open(www / archive_name, "w:gz") as tf:
        for r in TRAIN + TEST_A + TEST_B[:1] + [_row("data/extra_unlisted.wav", "x")]:
            data = _wav(2.0)
            info = tarfile.TarInfo(f"datashare/{r['location']}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("datashare/data/evil.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mb-www")
    build_www(root)
    return root


def _download(www: Path, root: Path, **kw) -> tuple[Ledger, list]:
    with serve(www, **kw.pop("server", {})) as srv:
        mb.MusicBenchSource().download(DownloadConfig(source="musicbench", mirror=srv.url, **kw), root,
                                       Ledger(root), NullProgress())
        return Ledger(root), srv.requests


def test_download_verify_records(www: Path, tmp_path: Path) -> None:
    root = tmp_path / "mb"
    ledger, reqs = _download(www, root, server={"truncate_first": {"/MusicBench.tar.gz": 500}})
    assert [h.get("Range") for p, h in reqs if p == "/MusicBench.tar.gz"] == [None, "bytes=500-"]
    assert (root / "MusicBench_testA.json").is_file()  # the old name, since the new one 404s
    assert ledger.counts() == {"ok": 5, "failed": 1, "pending": 0}
    assert "not in MusicBench.tar.gz" in ledger.entries["musicbench-missing"].reason
    assert not (root / "data/extra_unlisted.wav").exists() and not (root / "data/evil.wav").exists()
    assert (root / "MusicBench.tar.gz").exists()  # kept: a clip failed

    assert all(check_file(e)[0] is None for e in mb.MusicBenchSource().expected_files(root))
    recs = {r.id: r for r in mb.MusicBenchSource().records(root)}
    assert set(recs) == {"musicbench-aaa111", "musicbench-data_aug2-aaa111_pitch2", "musicbench-bbb222",
                         "musicbench-ccc333", "musicbench-ddd444"}
    r = recs["musicbench-aaa111"]
    assert (r.caption, r.alt_captions, r.split, r.license) == ("A mellow piano tune.", ["A mellow piano tune. Again."],
                                                               "train", "cc-by-sa-3.0")
    assert r.tags == ["A minor", "120 bpm"] and abs(r.duration - 2.0) < 0.01
    assert r.extra["chords"] == ["Am", "G"] and r.extra["prompt_key"].startswith("This song")
    assert "prompt_aug" not in r.extra and r.extra["is_audioset_eval_mcaps"] is False
    assert recs["musicbench-bbb222"].tags == ["E major", "140 bpm"]
    # The augmented copy is the same recording as its original: one group, so one split.
    assert recs["musicbench-aaa111"].group == recs["musicbench-data_aug2-aaa111_pitch2"].group == "youtube:aaa111"
    assert recs["musicbench-ccc333"].split == "test" and recs["musicbench-ccc333"].extra["is_audioset_eval_mcaps"]


def test_old_archive_name_subset_and_rerun(tmp_path: Path) -> None:
    www = tmp_path / "www"
    build_www(www, archive_name="datasetaug.tar.gz")
    root = tmp_path / "mb"
    ledger, _ = _download(www, root, subset="test", max_items=2)
    assert sorted(e.id for e in ledger.entries.values()) == ["musicbench-ccc333", "musicbench-ddd444"]
    assert not (root / "datasetaug.tar.gz").exists()  # every selected clip ok: removed
    ledger, reqs = _download(www, root, subset="test", max_items=2)
    assert not [p for p, _ in reqs if p.endswith(".tar.gz")]
    with pytest.raises(MtxError):
        _download(www, tmp_path / "x", subset="validation")


def test_traversal_member_is_refused(tmp_path: Path) -> None:
    www = tmp_path / "www"
    build_www(www)
    with tarfile.open(www / "MusicBench.tar.gz", "w:gz") as tf:
        data = _wav(1.0)
        info = tarfile.TarInfo("datashare/../../escape.wav")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(MtxError, match="unsafe"):
        _download(www, tmp_path / "mb")
    assert not list(tmp_path.rglob("escape.wav"))


def test_cli_download_unify(www: Path, state_dir: Path) -> None:
    from httpserver import mtx_runner

    from musiccli.manifest import read_manifest
    from musiccli.state import StateDir

    mtx = mtx_runner(state_dir)
    with serve(www) as srv:
        result = mtx("download", "musicbench", "--mirror", srv.url, "--max-items", "3")
    assert result.exit_code == 0, result.output
    assert mtx("verify", "musicbench").exit_code == 0
    unified = mtx("unify", "--datasets", "musicbench", "--name", "mb", "--keep-official-splits")
    assert unified.exit_code == 0, unified.output
    state = StateDir.resolve(state_dir)
    assert {r.split for r in read_manifest(state.manifest_path("mb"))} == {"train"}
