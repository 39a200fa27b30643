"""The shortcuts of the incremental sync path give what the slow code they replaced gave.

- ``manifest.RealPaths`` / ``state_relative``: equal to pathlib's ``resolve()`` / ``relative_to`` through
  symlinked files and folders (absolute and relative links, links into the state dir, missing files).
- ``ledger.read_jsonl``: equal to ``state.iter_jsonl`` on torn, blank, non-object and odd-unicode lines,
  and never stale after an append or a rewrite.
- ``manifest._line_encoder``: equal to ``json.JSONEncoder.encode`` with the manifest's settings.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from musiccli.manifest import RealPaths, _line_encoder, state_relative
from musiccli.sources.ledger import Ledger, read_jsonl
from musiccli.state import append_jsonl, iter_jsonl


def _old_state_relative(path, root) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, list]:
    t = tmp_path
    (t / "state/datasets/x").mkdir(parents=True)
    (t / "music/a").mkdir(parents=True)
    (t / "deep/x/y").mkdir(parents=True)
    (t / "music/a/f.wav").write_bytes(b"x")
    (t / "state/datasets/x/g.wav").write_bytes(b"y")
    (t / "deep/x/y/z.wav").write_bytes(b"z")
    os.symlink(t / "state/datasets/x/g.wav", t / "music/a/link.wav")
    os.symlink(t / "state", t / "statelink")
    os.symlink(t / "music/a", t / "music/alink")
    os.symlink("../deep/x", t / "music/rel")                # relative folder link
    os.symlink(t / "state/datasets", t / "deep/x/ds")       # a link into the state dir, deeper down
    os.symlink(t / "nowhere.wav", t / "music/a/dangling.wav")
    cases = [t / "music/a/f.wav", t / "music/a/link.wav", t / "statelink/datasets/x/g.wav",
             t / "state/datasets/x/g.wav", t / "music/alink/f.wav", t / "music/alink/missing.wav", t / "state",
             t / "state/datasets/../datasets/x/g.wav", str(t / "state/datasets/x/"), t / "music/rel/y/z.wav",
             t / "music/rel/ds/x/g.wav", t / "music/rel/../a/f.wav", t / "music/rel/ds/../x", t / "nope/a/b.wav",
             t / "music/rel/missing/q.wav", t / "music/a/dangling.wav", "relative/file.wav"]
    return t, cases


def test_real_paths_equal_pathlib_resolve(tree):
    _, cases = tree
    real = RealPaths()
    for c in cases + cases:   # twice: the second pass comes from the folder cache
        assert real(c) == str(Path(c).resolve()), c
        resolved, st = real.with_stat(c)
        assert resolved == str(Path(c).resolve())
        assert (st is None) == (not Path(c).exists())
        if st is not None:
            assert st.st_size == os.stat(c).st_size


def test_state_relative_equals_the_pathlib_version(tree):
    t, cases = tree
    for root in (t / "state", t / "statelink", t / "deep/x/ds", t):
        real = RealPaths()
        for c in cases:
            assert state_relative(c, root, real) == _old_state_relative(c, root), (c, root)
            assert state_relative(c, root) == _old_state_relative(c, root), (c, root)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("text", [
    "",
    "\n\n",
    '{"id": "a", "status": "ok"}\n{"id": "b", "status": "failed", "reason": "x"}\n',
    '{"id": "a", "status": "ok"}\n\n   \n{"id": "b"}\n',                       # blank lines
    '{"id": "a", "status": "ok"}\n{"id": "b", "sta\n{"id": "c", "status": "ok"}\n',  # torn line in the middle
    '{"id": "a", "status": "ok"}\n{"id": "b", "rea',                              # torn last line
    '{"id": "a", "tags": ["x"]}\n[1, 2]\n"text"\n{"id": "b"}\n',                  # values that are not objects
    '{"id": "a"}, {"id": "b"}\n{"id": "c"}\n',                                    # two objects on one line
    '{"id": "a", "title": "line\u2028sep\u0085nel"}\n{"id": "b"}\n',              # unicode line breaks in a value
    '{"id": "a", "n": 1e999}\n{"id": "b"}\n',
])
def test_read_jsonl_equals_iter_jsonl(tmp_path, text):
    path = tmp_path / "x.jsonl"
    _write(path, text)
    assert read_jsonl(path) == list(iter_jsonl(path))


def test_read_jsonl_of_a_missing_file_is_empty(tmp_path):
    assert read_jsonl(tmp_path / "none.jsonl") == []


def test_read_jsonl_is_never_stale(tmp_path):
    path = tmp_path / "ledger.jsonl"
    append_jsonl(path, [{"id": "a", "status": "ok"}])
    first = read_jsonl(path)
    first[0]["status"] = "edited by a caller"          # a caller's edit does not reach the next reader
    assert read_jsonl(path) == [{"id": "a", "status": "ok"}]
    append_jsonl(path, [{"id": "b", "status": "ok"}])  # appended: read again
    assert [d["id"] for d in read_jsonl(path)] == ["a", "b"]
    mtime = os.stat(path).st_mtime_ns
    path.unlink()                                      # replaced by other content of the same size and mtime
    _write(path, '{"id": "a", "status": "no"}\n{"id": "c", "status": "ok"}\n')
    os.utime(path, ns=(mtime, mtime))
    assert read_jsonl(path) == list(iter_jsonl(path))


def test_ledger_reads_what_it_appended(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.ok("a", path="a.wav", checksum="1")
    assert Ledger(tmp_path).is_ok("a")
    ledger.failed("a", "broken")
    again = Ledger(tmp_path)
    assert not again.is_ok("a") and again.entries["a"].reason == "broken"


@pytest.mark.parametrize("value", [
    {"id": "a", "duration": 1.5, "x": [1, 2.0, None, True, False], "y": {"z": "\u00e9\u266b\"\\\n\t\x00"}},
    {"id": "b", "nan": math.nan, "inf": math.inf, "neg": -math.inf, "big": 10**30, "small": 1e-300},
    {"id": "c", "empty": [], "nested": [[{"a": []}]], "u": "\ud83c\udfb5 \u2028"},
    {},
    [1, "two", {"three": 3}],
    "just a string",
    3.25,
    None,
])
def test_line_encoder_equals_json_encoder(value):
    want = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode(value)
    assert _line_encoder()(value) == want
