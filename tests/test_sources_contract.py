"""One contract every registered source keeps (mirdata's loop over all datasets)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from musiccli.errors import MtxError
from musiccli.sources import SOURCES, get_source, source_names
from musiccli.sources.base import DownloadConfig, ExpectedFile, Source

CONFIG_FIELDS = {f.name for f in dataclasses.fields(DownloadConfig)}
EXPECTED = {"synth", "song-describer", "musiccaps", "fma", "mtg-jamendo", "jamendo-maxcaps", "musicbench", "suno",
            "folder"}


def test_every_planned_source_is_registered() -> None:
    assert EXPECTED <= set(source_names())


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_contract(name: str, tmp_path: Path) -> None:
    source = get_source(name)
    assert isinstance(source, Source)
    info = source.info
    assert info.name == name
    assert info.description.strip() and info.license.strip()
    assert info.phase in (1, 2, None) and isinstance(info.downloadable, bool)
    unknown = set(info.options) - CONFIG_FIELDS
    assert not unknown, f"{name} declares options that DownloadConfig lacks: {unknown}"
    assert all(isinstance(u, str) and u for u in info.urls.values())

    ident = source.identity(DownloadConfig(source=name))
    assert isinstance(ident, dict)
    json.dumps(ident)  # the stage stores it in its JSON record

    empty = tmp_path / name
    empty.mkdir()
    try:
        records = source.records(empty)
    except MtxError as e:  # a clean refusal, with a hint for the user, is fine
        assert e.hint, f"{name}: records() on an empty dir raised without a hint: {e}"
    else:
        assert records == []
    try:
        files = source.expected_files(empty)
    except MtxError as e:  # verify shows it as one line plus the hint
        assert e.hint, f"{name}: expected_files() on an empty dir raised without a hint: {e}"
    else:
        assert isinstance(files, list) and all(isinstance(f, ExpectedFile) for f in files)
