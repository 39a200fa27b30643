"""fetch(): resume, range quirks, retries, checksums and token handling, against a real local server."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from musiccli.sources._http import DownloadError, base_url, fetch, hf_headers
from httpserver import serve

PAYLOAD = os.urandom(300_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    return root


def _part(dest: Path) -> Path:
    return dest.parent / f".tmp-{dest.name}.part"


class _Recorder:
    def __init__(self) -> None:
        self.total = None
        self.completed = 0

    def update(self, *, total=None, completed=None) -> None:
        self.total = total if total is not None else self.total
        self.completed = completed if completed is not None else self.completed

    def advance(self, n: int = 1) -> None:
        self.completed += n


def test_resume_after_interrupted_transfer_across_runs(files: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "data.bin"
    with serve(files, truncate_first={"/data.bin": 100_000}) as srv:
        # retries=0: the first run dies with the partial file kept, like a killed process.
        with pytest.raises(DownloadError):
            fetch(f"{srv.url}/data.bin", dest, retries=0)
        assert not dest.exists()
        assert _part(dest).stat().st_size == 100_000
        task = _Recorder()
        res = fetch(f"{srv.url}/data.bin", dest, checksum=("sha256", SHA256), retries=0, task=task)
        reqs = srv.requests_for("/data.bin")
    assert dest.read_bytes() == PAYLOAD
    assert res.resumed and res.bytes == len(PAYLOAD) and res.checksum == SHA256
    assert "Range" not in reqs[0] and reqs[1]["Range"] == "bytes=100000-"
    assert task.total == len(PAYLOAD) and task.completed == len(PAYLOAD)
    assert not _part(dest).exists()


def test_retry_resumes_within_one_call(files: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    with serve(files, truncate_first={"/data.bin": 50_000}) as srv:
        res = fetch(f"{srv.url}/data.bin", dest, backoff=0.01)
        reqs = srv.requests_for("/data.bin")
    assert dest.read_bytes() == PAYLOAD and res.resumed
    assert [r.get("Range") for r in reqs] == [None, "bytes=50000-"]


def test_server_ignoring_range_restarts_cleanly(files: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    _part(dest).write_bytes(PAYLOAD[:1234])
    with serve(files, ignore_range=True) as srv:
        res = fetch(f"{srv.url}/data.bin", dest, checksum=("sha256", SHA256))
        reqs = srv.requests_for("/data.bin")
    assert reqs[0]["Range"] == "bytes=1234-"          # asked to resume ...
    assert dest.read_bytes() == PAYLOAD                # ... got 200 and rewrote from byte 0
    assert not res.resumed


def test_416_with_complete_partial_is_accepted(files: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    _part(dest).write_bytes(PAYLOAD)
    with serve(files) as srv:
        res = fetch(f"{srv.url}/data.bin", dest, checksum=("sha256", SHA256))
        reqs = srv.requests_for("/data.bin")
    assert len(reqs) == 1 and reqs[0]["Range"] == f"bytes={len(PAYLOAD)}-"
    assert dest.read_bytes() == PAYLOAD and res.checksum == SHA256


def test_416_with_oversized_partial_restarts(files: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    _part(dest).write_bytes(PAYLOAD + b"garbage")
    with serve(files) as srv:
        fetch(f"{srv.url}/data.bin", dest, backoff=0.01)
        reqs = srv.requests_for("/data.bin")
    assert [r.get("Range") for r in reqs] == [f"bytes={len(PAYLOAD) + 7}-", None]
    assert dest.read_bytes() == PAYLOAD


def test_retry_on_500_then_success(files: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    with serve(files, fail_first={"/data.bin": 2}) as srv:
        fetch(f"{srv.url}/data.bin", dest, retries=3, backoff=0.01)
        assert len(srv.requests_for("/data.bin")) == 3
    assert dest.read_bytes() == PAYLOAD


def test_persistent_500_gives_up(files: Path, tmp_path: Path) -> None:
    with serve(files, fail_first={"/data.bin": 10}) as srv:
        with pytest.raises(DownloadError) as e:
            fetch(f"{srv.url}/data.bin", tmp_path / "data.bin", retries=2, backoff=0.01)
        assert len(srv.requests_for("/data.bin")) == 3
    assert e.value.reason == "HTTP 500"


def test_404_is_not_retried(files: Path, tmp_path: Path) -> None:
    with serve(files) as srv:
        with pytest.raises(DownloadError) as e:
            fetch(f"{srv.url}/missing.bin", tmp_path / "missing.bin", retries=4, backoff=0.01)
        assert len(srv.requests_for("/missing.bin")) == 1
    assert e.value.reason == "HTTP 404"
    assert not (tmp_path / "missing.bin").exists()


def test_checksum_mismatch_redownloads_once_then_fails(files: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    with serve(files) as srv:
        with pytest.raises(DownloadError) as e:
            fetch(f"{srv.url}/data.bin", dest, checksum=("sha256", "0" * 64), backoff=0.01)
        assert len(srv.requests_for("/data.bin")) == 2
    assert e.value.reason == "checksum mismatch"
    assert not dest.exists() and not _part(dest).exists()


def test_existing_verified_file_is_not_downloaded_again(files: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    with serve(files) as srv:
        fetch(f"{srv.url}/data.bin", dest, checksum=("sha256", SHA256))
        fetch(f"{srv.url}/data.bin", dest, checksum=("sha256", SHA256))
        dest.write_bytes(b"corrupted")
        fetch(f"{srv.url}/data.bin", dest, checksum=("sha256", SHA256))
        assert len(srv.requests_for("/data.bin")) == 2
    assert dest.read_bytes() == PAYLOAD


def test_query_string_is_ignored_for_lookup(files: Path, tmp_path: Path) -> None:
    with serve(files) as srv:
        fetch(f"{srv.url}/data.bin?download=1", tmp_path / "data.bin")
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_hf_token_only_for_hf_hosts_and_never_logged(files: Path, tmp_path: Path, monkeypatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    secret = "hf_SECRETtoken123"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.delenv("MTX_HF_TOKEN_ALL_HOSTS", raising=False)
    assert hf_headers("https://huggingface.co/datasets/google/MusicCaps/resolve/main/x.csv") == {
        "Authorization": f"Bearer {secret}"}
    assert hf_headers("https://cdn-lfs.huggingface.co/x") != {}
    assert hf_headers("https://zenodo.org/record/1/files/a.zip") == {}
    assert hf_headers("https://huggingface.co.evil.example/x") == {}
    caplog.set_level(logging.DEBUG)
    with serve(files, fail_first={"/data.bin": 1}, truncate_first={"/data.bin": 10}) as srv:
        url = f"{srv.url}/data.bin"
        assert hf_headers(url) == {}
        monkeypatch.setenv("MTX_HF_TOKEN_ALL_HOSTS", "1")
        fetch(url, tmp_path / "data.bin", headers=hf_headers(url), backoff=0.01)
        with pytest.raises(DownloadError) as e:
            fetch(f"{srv.url}/nope", tmp_path / "nope", headers=hf_headers(url), retries=0)
        sent = srv.requests_for("/data.bin")
    assert all(h["Authorization"] == f"Bearer {secret}" for h in sent)
    assert len(sent) == 3  # a 500, a cut transfer and the resumed rest: all logged about, none leaking
    assert caplog.records and secret not in caplog.text and secret not in str(e.value)


def test_base_url_precedence(monkeypatch) -> None:
    monkeypatch.delenv("MTX_TEST_URL", raising=False)
    assert base_url("https://a.example/x/", None, "MTX_TEST_URL") == "https://a.example/x"
    monkeypatch.setenv("MTX_TEST_URL", "http://127.0.0.1:1/env")
    assert base_url("https://a.example/x/", None, "MTX_TEST_URL") == "http://127.0.0.1:1/env"
    assert base_url("https://a.example/x/", "http://127.0.0.1:2/m/", "MTX_TEST_URL") == "http://127.0.0.1:2/m"


def test_token_dropped_on_redirect_off_the_hub() -> None:
    import urllib.request

    from musiccli.sources._http import _SafeRedirect

    handler = _SafeRedirect()
    req = urllib.request.Request("https://huggingface.co/datasets/x/resolve/main/a.csv",
                                 headers={"Authorization": "Bearer hf_x", "Range": "bytes=10-"})
    to_cdn = handler.redirect_request(req, None, 302, "Found", {}, "https://signed-cdn.invalid/a.csv?sig=1")
    to_hub = handler.redirect_request(req, None, 302, "Found", {}, "https://cdn-lfs.huggingface.co/a.csv")
    assert not to_cdn.has_header("Authorization") and to_cdn.get_header("Range") == "bytes=10-"
    assert to_hub.get_header("Authorization") == "Bearer hf_x"
    assert DownloadError("plain message").reason == "plain message"


def test_malformed_url_is_a_download_error(tmp_path: Path) -> None:
    # One bad URL in a metadata row must fail that item (DownloadError, recorded), not crash the run.
    with pytest.raises(DownloadError) as e:
        fetch("not a url", tmp_path / "x.bin", retries=0)
    assert e.value.reason.startswith("bad URL")
    assert not list(tmp_path.iterdir())


def test_errors_never_show_url_credentials() -> None:
    from musiccli.sources._http import _redact

    # One redaction for everything (musiccli.redact): the secret values go, the rest of the URL stays.
    assert _redact("https://user:secret@host:8443/f.zip?X-Amz-Signature=abc&download=1") == \
        "https://host:8443/f.zip?X-Amz-Signature=REDACTED&download=1"
