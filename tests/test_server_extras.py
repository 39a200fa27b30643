"""Every optional extra, hidden: the feature that needs it says, in one line, which extra to install."""

from __future__ import annotations

import sys

import pytest

from musiccli.errors import MtxError
from musiccli.extras import EXTRAS, MissingExtra, require_extra


def hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make ``import module`` (and its submodules) raise ImportError, as when it is not installed."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)


def _audiomuse(tmp_path):
    from musiccli import audiomuse_db

    audiomuse_db.connect("host=127.0.0.1 port=1 dbname=x user=u")


def _milvus(tmp_path):
    from musiccli.index_backends import milvus

    milvus.connect(str(tmp_path / "lib.db"))


def _ann(tmp_path):
    from musiccli.index_backends import faiss_ann

    faiss_ann._faiss()


def _tracker(name):
    def run(tmp_path):
        from musiccli.training.tracking import build_tracker, check_tracker

        check_tracker(name)
        build_tracker(name, tmp_path, "r", {}, 0)
    return run


def _encoder(name):
    def run(tmp_path):
        from musiccli.hub import require

        require(name, name)
    return run


def _onnx(tmp_path):
    from musiccli.export import ExportConfig, run_export
    from musiccli.state import StateDir

    run_export(StateDir.resolve(tmp_path / "state"), ExportConfig(run="r", target="audiomuse"))


CASES = [
    ("psycopg", "audiomuse", _audiomuse),
    ("pymilvus", "milvus", _milvus),
    ("milvus_lite", "milvus", _milvus),
    ("faiss", "ann", _ann),
    ("tensorboard", "tensorboard", _tracker("tensorboard")),
    ("wandb", "wandb", _tracker("wandb")),
    ("muq", "muq", _encoder("muq")),
    ("music2latent", "music2latent", _encoder("music2latent")),
    ("onnx", "onnx", _onnx),
    ("onnxruntime", "onnx", _onnx),
]


@pytest.mark.parametrize("module, extra, trigger", CASES, ids=[c[0] for c in CASES])
def test_a_missing_extra_names_it(monkeypatch, tmp_path, module, extra, trigger) -> None:
    hide(monkeypatch, module)
    with pytest.raises(MtxError) as e:
        trigger(tmp_path)
    assert isinstance(e.value, MissingExtra), e.value
    assert e.value.hint.startswith(f"pip install 'musiccli[{extra}]'")
    assert repr(module) in e.value.message and "\n" not in str(e.value)
    assert EXTRAS[module] == extra


def test_every_extra_of_pyproject_is_mapped() -> None:
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(EXTRAS.values()) == set(extras) - {"test"}


def test_download_audiomuse_without_psycopg_names_the_extra(monkeypatch, cli) -> None:
    """The reported case: it used to say 'a library cannot load or the device ran out of memory'."""
    hide(monkeypatch, "psycopg")
    monkeypatch.setenv("MEDIASERVER_TYPE", "local")
    r = cli("download", "audiomuse", "--dsn", "postgresql://u@127.0.0.1:1/db")
    assert r.exit_code == 1, r.output
    assert "pip install 'musiccli[audiomuse]'" in r.output
    assert "out of memory" not in r.output and "batch-size" not in r.output


def test_a_broken_dependency_of_the_package_is_named(monkeypatch) -> None:
    """Installed, but one of its own imports fails: the message says which."""
    def explode(name):   # noqa: ANN001
        raise ImportError("libgomp.so.1: cannot open shared object file", name="libgomp")

    monkeypatch.setattr("importlib.import_module", explode)
    with pytest.raises(MissingExtra, match="cannot be imported .libgomp is missing") as e:
        require_extra("faiss", "ann", "the ANN backend")
    assert e.value.hint == "pip install 'musiccli[ann]'"
