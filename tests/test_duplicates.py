"""`mtx duplicates`: pair finding against a naive loop, grouping that never chains two songs together,
and the whole user path on real re-encodes (FLAC -> MP3 / Opus / AAC) of synthesised songs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from musiccli.duplicates import (complete_linkage, durations_agree, identical_groups, similar_pairs)
from musiccli.manifest import Record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def naive_pairs(x: np.ndarray, durations: np.ndarray, threshold: float, tol: float) -> dict:
    out = {}
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            c = float(x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))
            if c >= threshold and abs(durations[i] - durations[j]) <= max(tol, 0.02 * max(durations[i], durations[j])):
                out[(i, j)] = c
    return out


@pytest.mark.parametrize("block", [1, 3, 1000])
def test_similar_pairs_equal_a_naive_loop(block: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(12, 8))
    x = np.concatenate([base, base[:5] + 0.01 * rng.normal(size=(5, 8))])  # 5 near copies
    durations = np.concatenate([rng.uniform(100, 300, 12), np.zeros(5)])
    durations[12:] = durations[:5] + np.array([0.5, 1.0, 30.0, 0.0, 1.5])   # one copy 30 s longer
    got = similar_pairs(x, durations, 0.99, 2.0, block=block)
    want = naive_pairs(x, durations, 0.99, 2.0)
    assert set(got) == set(want) and len(want) == 4
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-5)


def test_complete_linkage_never_chains_two_songs() -> None:
    # 0~1 and 1~2 are alike, 0 and 2 are not: 1 sits between two songs and must not join them.
    edges = {(0, 1): 0.999, (1, 2): 0.998, (3, 4): 0.9995}
    groups = complete_linkage([0, 1, 2], edges)
    assert len(groups) == 1 and groups[0] in ([0, 1], [1, 2])
    assert complete_linkage([3, 4], edges) == [[3, 4]]


def test_durations_agree_absolute_and_relative() -> None:
    assert durations_agree(200.0, 201.5)
    assert not durations_agree(100.0, 103.0)     # max(2 s, 2 % of 103 s) = 2.06 s
    assert durations_agree(600.0, 611.0)        # 2 % of 611 s is 12 s
    assert not durations_agree(30.0, 60.0)


def test_identical_groups_hash_only_equal_sizes(tmp_path: Path) -> None:
    files = {"a.flac": b"x" * 100, "b.flac": b"x" * 100, "c.flac": b"y" * 100, "d.mp3": b"x" * 99}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    records = [Record(id=n, audio_path=str(tmp_path / n), caption="c", duration=1.0) for n in files]
    assert identical_groups(records) == [[0, 1]]


@pytest.fixture(scope="module")
def reencoded_library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Twelve synthesised songs, each as FLAC plus MP3 128k, Opus 96k and AAC, plus a byte copy."""
    from duplicate_thresholds import CODECS, reencode
    from typer.testing import CliRunner

    from musiccli.cli.app import app

    work = tmp_path_factory.mktemp("dups")
    res = CliRunner().invoke(app, ["--state-dir", str(work / "gen"), "-q", "download", "synth", "--n", "12",
                                   "--duration", "6", "--sample-rate", "22050", "--seed", "3"])
    assert res.exit_code == 0, res.output
    root = work / "gen" / "datasets" / "synth"
    lib = work / "library"
    lib.mkdir()
    truth: dict[str, str] = {}
    for k, src in enumerate(sorted(root.rglob("*.flac"))):
        song = f"song{k}"
        reencode(src, lib / f"{song}.flac", "flac", None, None)
        truth[f"{song}.flac"] = song
        for name in ("mp3-128k", "opus-96k", "aac-128k"):
            suffix, codec, bitrate, rate = CODECS[name]
            reencode(lib / f"{song}.flac", lib / f"{song}.{name}{suffix}", codec, bitrate, rate)
            truth[f"{song}.{name}{suffix}"] = song
    (lib / "copies").mkdir()
    shutil.copy(lib / "song0.mp3-128k.mp3", lib / "copies" / "song0-again.mp3")
    truth["song0-again.mp3"] = "song0"
    return lib, truth


def test_reencodes_are_found_and_no_group_joins_two_songs(reencoded_library, cli, tmp_path: Path) -> None:
    lib, truth = reencoded_library
    assert cli("download", "folder", "--path", str(lib)).exit_code == 0
    assert cli("unify", "--datasets", "folder").exit_code == 0
    assert cli("embed", "--audio-encoder", "dsp").exit_code == 0
    m3u = tmp_path / "dups.m3u"
    res = cli("duplicates", "--json", "--m3u", str(m3u))
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["encoder"] == "dsp" and out["threshold"] is not None
    groups = out["groups"]
    songs = [{truth[Path(it["path"]).name] for it in g["items"]} for g in groups]
    assert all(len(s) == 1 for s in songs), songs              # never two songs in one group
    found = {next(iter(s)): len(g["items"]) for s, g in zip(songs, groups)}
    # Every song is found with at least one other copy. The dsp threshold is set for precision (the gap
    # to other songs is 0.002 wide), so not every lossy copy of a 6 s clip joins: 30 of 49 files did here.
    assert set(found) == {f"song{k}" for k in range(12)}
    assert sum(found.values()) >= 0.5 * len(truth), found
    item = groups[0]["items"][0]
    assert {"id", "path", "artist", "title", "format", "bitrate"} <= set(item)
    formats = {it["format"] for g in groups for it in g["items"]}
    assert {"flac", "mp3"} <= formats
    assert all(it["bitrate"] for g in groups for it in g["items"] if it["format"] == "mp3")
    lines = m3u.read_text().splitlines()
    assert lines[0] == "#EXTM3U" and sum(not ln.startswith("#") for ln in lines) == sum(found.values())

    ident = json.loads(cli("duplicates", "--identical-only", "--json").stdout)
    assert [len(g["items"]) for g in ident["groups"]] == [2] and ident["groups"][0]["kind"] == "identical"


@pytest.mark.parametrize("args, message", [
    (["--threshold", "1.5", "-e", "dsp"], "--threshold must be a cosine similarity"),
    (["-e", "musicgen"], "no musicgen embeddings"),
])
def test_bad_input_is_one_line(reencoded_library, cli, args: list[str], message: str) -> None:
    lib, _ = reencoded_library
    cli("download", "folder", "--path", str(lib))
    cli("unify", "--datasets", "folder")
    cli("embed", "--audio-encoder", "dsp")
    res = cli("duplicates", *args)
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output


def test_unmeasured_encoder_needs_a_threshold(monkeypatch, reencoded_library, cli) -> None:
    import musiccli.duplicates as d

    monkeypatch.setattr(d, "THRESHOLDS", {})
    lib, _ = reencoded_library
    cli("download", "folder", "--path", str(lib))
    cli("unify", "--datasets", "folder")
    cli("embed", "--audio-encoder", "dsp")
    res = cli("duplicates", "-e", "dsp")
    assert res.exit_code == 1 and "no measured duplicate threshold for encoder 'dsp'" in res.output
    assert "--threshold" in res.output
