"""The fast unify path writes the same manifest bytes as the per-row code it replaced.

``fixtures/unify_bytes/expected.json`` was written by the code before the columnar synth parser and
the reused JSON encoder (commit b598460, see ``make_fixture.py``), from the two committed
``metadata.csv`` files with their edge cases (empty fields, unicode, escapes, empty tag items).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from musiccli.errors import MtxError
from musiccli.sources.synth import SynthSource

FIXTURE = Path(__file__).parent / "fixtures" / "unify_bytes"
sys.path.insert(0, str(FIXTURE))

import make_fixture


def _roots(tmp_path: Path) -> dict[str, Path]:
    roots = {}
    for ds in ("alpha", "beta"):
        root = tmp_path / "datasets" / ds
        root.mkdir(parents=True)
        shutil.copyfile(FIXTURE / f"{ds}.csv", root / "metadata.csv")
        roots[ds] = root
    (tmp_path / "manifests").mkdir()
    return roots


def test_manifest_bytes_equal_the_committed_output_of_the_old_code(tmp_path):
    out = tmp_path / "manifests" / "m.json"
    make_fixture.unify(_roots(tmp_path), out)
    assert out.read_bytes() == (FIXTURE / "expected.json").read_bytes()


def test_fixture_csvs_are_what_the_script_writes(tmp_path):
    # The committed inputs are the script's: regenerating the fixture starts from the same rows.
    roots = make_fixture.make(tmp_path)
    for ds, root in roots.items():
        assert (root / "metadata.csv").read_bytes() == (FIXTURE / f"{ds}.csv").read_bytes()


def _rewrite_row(path: Path, row: int, column: str, value: str) -> None:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[row + 1][rows[0].index(column)] = value
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


@pytest.mark.parametrize("column,value", [("alt_captions", '["a", "b"'), ("alt_captions", '["a"] x'),
                                          ("duration", "five"), ("bpm", "fast")])
def test_a_bad_row_is_one_clear_error_naming_it(tmp_path, column, value):
    root = _roots(tmp_path)["beta"]
    _rewrite_row(root / "metadata.csv", 7, column, value)
    with pytest.raises(MtxError, match="bad row for 'beta-0007'"):
        SynthSource().records(root)


def test_json_alt_captions_that_are_not_strings_are_kept_as_before(tmp_path):
    root = _roots(tmp_path)["beta"]
    _rewrite_row(root / "metadata.csv", 2, "alt_captions", ' [1, "x", 2.5] ')
    _rewrite_row(root / "metadata.csv", 3, "alt_captions", '"abc"')
    records = SynthSource().records(root)
    assert records[2].alt_captions == ["1", "x", "2.5"]
    assert records[3].alt_captions == ["a", "b", "c"]   # what json.loads + str() per item always gave
