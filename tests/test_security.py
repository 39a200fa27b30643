"""Secrets never reach output or the state dir; mirrors with credentials work; files honour the umask;
remote code runs only when asked for; no loader unpickles user files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from httpserver import mtx_runner, serve
from musiccli.redact import redact_text, redact_url

USER, PASSWORD, TOKEN = "alice", "s3cr3t-pw", "tok-9f8e7d6c"


@pytest.mark.parametrize(("url", "expected"), [
    ("http://alice:pw@host:8/api?x=1", "http://host:8/api?x=1"),
    ("https://h/f.zip?token=abc&download=1", "https://h/f.zip?token=REDACTED&download=1"),
    ("https://h/f?Signature=a&Key-Pair-Id=k&Expires=3", "https://h/f?Signature=REDACTED&Key-Pair-Id=k&Expires=3"),
    ("https://h/f?X-Amz-Signature=a&X-Amz-Credential=b&sig=c&key=d&password=e&api_key=f",
     "https://h/f?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED&sig=REDACTED&key=REDACTED"
     "&password=REDACTED&api_key=REDACTED"),
    ("https://huggingface.co/datasets/x", "https://huggingface.co/datasets/x"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact_text(f"cannot list {url} (gaierror)") == f"cannot list {expected} (gaierror)"


def test_mirror_with_credentials_is_basic_auth_and_secrets_never_leak(tmp_path: Path, state_dir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from test_source_jamendo_maxcaps import _routes, build_www

    from musiccli.sources import jamendo_maxcaps as jm

    www = tmp_path / "www"
    www.mkdir()
    build_www(www)
    mtx = mtx_runner(state_dir)
    outputs = []
    with serve(www, routes=_routes, basic_auth=(USER, PASSWORD)) as srv:
        host = srv.url.removeprefix("http://")
        mirror = f"http://{USER}:{PASSWORD}@{host}"
        monkeypatch.setenv(jm.ENV_API, f"http://{USER}:{PASSWORD}@{host}/api/tree")
        r = mtx("--verbose", "download", "jamendo-maxcaps", "--mirror", mirror, "--max-shards", "1", "--json")
        outputs.append(r.output)  # stdout and the log lines on stderr
        assert r.exit_code == 0, r.output
        # Every request carried the credentials as a header, none in the URL.
        assert srv.requests and all(h.get("Authorization", "").startswith("Basic ") for _, h in srv.requests)
        # A wrong password, and a token in the query strings: clean failures that show neither.
        monkeypatch.setenv(jm.ENV_API, f"http://{USER}:wrong-{PASSWORD}@{host}/api/tree?token={TOKEN}")
        r = mtx("--verbose", "download", "jamendo-maxcaps", "--mirror", f"http://{USER}:wrong-{PASSWORD}@{host}",
                "--force", "--max-shards", "1", "--json")
        outputs.append(r.output)
        assert r.exit_code == 1 and "HTTP 401" in r.output
        assert "cannot list" in r.output and "token=REDACTED" in r.output
    secrets = (PASSWORD, TOKEN, f"{USER}:")
    for text in outputs:
        for secret in secrets:
            assert secret not in text, (secret, text[-2000:])
    for path in state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, (secret, path)


def test_atomic_writes_honour_the_umask(tmp_path: Path) -> None:
    from musiccli.state import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "playlist.m3u", "#EXTM3U\n")
        assert (tmp_path / "playlist.m3u").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.json", "{}")
        assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_no_loader_unpickles_user_files() -> None:
    # torch.load without weights_only=True, numpy allow_pickle=True, pickle/joblib/dill loads: none in the package.
    root = Path(__file__).resolve().parents[1] / "musiccli"
    patterns = [r"\bpickle\.loads?\(", r"\bjoblib\.load\(", r"\bdill\.", r"allow_pickle\s*=\s*True",
                r"\bcloudpickle\b"]
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        for pat in patterns:
            offenders += [f"{path.name}: {pat}" for _ in re.finditer(pat, text)]
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
    assert offenders == []


def test_mert_runs_remote_code_only_with_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from musiccli.encoders import EncoderOptions, build_encoder
    from musiccli.errors import MtxError
    from musiccli.runtime import select_runtime

    asked = []

    def from_pretrained(model_id, trust_remote_code=False, **kw):
        asked.append(trust_remote_code)
        if not trust_remote_code:  # what transformers says for a repo with an auto_map of its own code
            raise ValueError(f"The repository {model_id} contains custom code which must be executed to correctly "
                             "load the model. Please pass the argument `trust_remote_code=True` to allow it.")
        return type("Cfg", (), {"num_hidden_layers": 2, "hidden_size": 8})()

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", staticmethod(from_pretrained))
    cpu = select_runtime("cpu", "fp32")
    with pytest.raises(MtxError) as e:
        _ = build_encoder("mert", EncoderOptions(model="m-a-p/MERT-v1-95M"), cpu).window_dim
    assert "runs code from its own repository" in e.value.message and "--trust-remote-code" in e.value.hint
    enc = build_encoder("mert", EncoderOptions(model="m-a-p/MERT-v1-95M", trust_remote_code=True), cpu)
    assert enc.window_dim == 3 * 8 and asked == [False, True]


# --------------------------------------------------------------------------- issue 22: no secret at rest or in --debug
def _secrets_nowhere(state_dir: Path, texts: list[str], secrets: tuple[str, ...]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, (secret, text[-3000:])
    records = list((state_dir / "stages").glob("*.json"))
    assert records, "the commands wrote no stage record"
    for path in state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, (secret, path)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]                          # closed again: nothing listens there


def test_a_mirror_token_and_password_reach_no_record_and_no_output(tmp_path: Path, state_dir: Path,
                                                                   make_run) -> None:
    www = tmp_path / "www"
    www.mkdir()                                          # nothing there: every file is a 404
    mtx = mtx_runner(state_dir)
    texts = []
    with serve(www) as srv:
        mirror = f"http://{USER}:{PASSWORD}@{srv.url.removeprefix('http://')}/mirror?token={TOKEN}"
        r = mtx("--verbose", "download", "musicbench", "--mirror", mirror)
        texts.append(r.output)
        assert r.exit_code == 1 and "is available at" in r.output and "token=REDACTED" in r.output, r.output
    record = json.loads((state_dir / "stages" / "download_musicbench.json").read_text())
    assert record["status"] == "failed" and "token=REDACTED" in record["error"]
    # A Milvus server given with user:pass@ that cannot be reached: the error and the stage record hide them.
    make_run()
    r = mtx("search", "rock", "--backend", "milvus", "--uri", f"http://{USER}:{PASSWORD}@127.0.0.1:{_closed_port()}")
    texts.append(r.output)
    assert r.exit_code == 1 and "cannot connect to Milvus at http://127.0.0.1" in r.output, r.output
    _secrets_nowhere(state_dir, texts, (PASSWORD, TOKEN, f"{USER}:"))


@pytest.mark.slow
def test_debug_tracebacks_hide_a_mirror_token_and_a_milvus_password(tmp_path: Path, state_dir: Path,
                                                                     make_run) -> None:
    import subprocess
    import sys

    www = tmp_path / "www"
    www.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "MTX_HOME": str(state_dir),
           "COLUMNS": "200"}
    texts = []
    with serve(www) as srv:
        mirror = f"http://{USER}:{PASSWORD}@{srv.url.removeprefix('http://')}/mirror?token={TOKEN}"
        p = subprocess.run([sys.executable, "-m", "musiccli", "--debug", "download", "musicbench", "--mirror",
                            mirror], capture_output=True, text=True, env=env, timeout=300)
        texts += [p.stdout, p.stderr]
        assert p.returncode == 1 and "Traceback" in p.stderr and "token=REDACTED" in p.stderr, p.stderr[-3000:]
    make_run()
    p = subprocess.run([sys.executable, "-m", "musiccli", "--debug", "search", "rock", "--backend", "milvus",
                        "--uri", f"http://{USER}:{PASSWORD}@127.0.0.1:{_closed_port()}"],
                       capture_output=True, text=True, env=env, timeout=300)
    texts += [p.stdout, p.stderr]
    assert p.returncode == 1 and "Traceback" in p.stderr and "http://127.0.0.1" in p.stderr, p.stderr[-3000:]
    _secrets_nowhere(state_dir, texts, (PASSWORD, TOKEN, f"{USER}:"))


def test_logged_tracebacks_are_redacted() -> None:
    import logging

    from musiccli.cli.app import _RedactFilter

    try:
        raise ValueError(f"cannot open http://{USER}:{PASSWORD}@h/x?token={TOKEN}")
    except ValueError:
        record = logging.LogRecord("musiccli", logging.ERROR, __file__, 1, "failed", None, __import__("sys").exc_info())
    _RedactFilter().filter(record)
    text = record.getMessage()
    assert record.exc_info is None and "ValueError: cannot open http://h/x?token=REDACTED" in text
    assert PASSWORD not in text and TOKEN not in text


def test_an_export_is_readable_by_another_user_as_the_umask_allows(make_run, state) -> None:
    import stat

    from musiccli.families.towers.onnx import export_checkpoint_onnx
    from musiccli.runs import export_dir

    make_run()
    old = os.umask(0o022)
    try:
        onnx_dir = export_checkpoint_onnx(state.run_dir("run1") / "best", export_dir(state, "run1", "best"))[0].parent
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [onnx_dir, *onnx_dir.rglob("*")]}
    assert modes["audio_stats.safetensors"] == 0o644 and modes[onnx_dir.name] == 0o755, modes
    assert all(m in (0o644, 0o755) for m in modes.values()), modes


def test_milvus_uri_credentials_never_reach_the_index_metadata(monkeypatch) -> None:
    """`--uri http://user:pass@host` is recorded without the password; this process still connects with it."""
    import pymilvus

    from musiccli.index_backends import milvus
    from musiccli.search import backend_options

    seen = {}

    class Client:
        def __init__(self, uri, token=""):
            seen.update(uri=uri, token=token)

    monkeypatch.setattr(pymilvus, "MilvusClient", Client)
    monkeypatch.delenv("MILVUS_TOKEN", raising=False)
    options = backend_options("milvus", uri="http://alice:s3cr3t@127.0.0.1:19530")
    assert options == {"uri": "http://127.0.0.1:19530"} and "s3cr3t" not in repr(options)
    milvus.connect(options["uri"])
    assert seen == {"uri": "http://127.0.0.1:19530", "token": "alice:s3cr3t"}
