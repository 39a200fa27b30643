"""Captions for AudioMuse-AI songs: synthesised (default) and from a loopback OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pgserver import build_db
from musiccli import llm_captions as lc
from musiccli.manifest import Record, read_manifest
from musiccli.sources import audiomuse

API_KEY = "sk-test-Secret-llm-999"
N = 12


@contextmanager
def chat_server(fail_title: str | None = None, n_lines: int = 5):
    """POST /v1/chat/completions with a Bearer key check; prompts naming ``fail_title`` always get HTTP 500."""
    seen: list[dict] = []
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # noqa: ANN002
            pass

        def _send(self, code: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802
            data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": data})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": "no route"})
            if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                return self._send(401, {"error": {"message": "Incorrect API key provided"}})
            prompt = data["messages"][0]["content"]
            if fail_title and f"Title: {fail_title}\n" in prompt:
                return self._send(500, {"error": {"message": "model overloaded"}})
            title = prompt.split("Title: ")[1].split("\n")[0]
            text = "\n".join(f"{k + 1}. A warm and steady {title.lower()} groove number {k} with soft drums and bass"
                             for k in range(n_lines))
            self._send(200, {"id": "x", "object": "chat.completion", "model": data["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 100, "completion_tokens": 60, "total_tokens": 160}})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def imported(pg, cli, tmp_path, monkeypatch):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(8000, np.float32), 8000)
    songs = build_db(pg, "am_captions", "current", N, seed=7, file_paths={i: str(wav) for i in range(N)})
    r = cli("download", "audiomuse", "--dsn", pg.dsn("am_captions"), "--server", "local")
    assert r.exit_code == 0, r.output
    for k in ("OPENAI_SERVER_URL", "OPENAI_API_KEY", "OPENAI_MODEL_NAME"):
        monkeypatch.delenv(k, raising=False)
    return songs


def test_default_captions_are_synthesised(imported, cli, state) -> None:
    r = cli("unify", "--name", "tags")
    assert r.exit_code == 0, r.output and f"captions: tags ({N} synthesised" in r.output
    assert f"captions: tags ({N} synthesised from moods, features, tempo and key)" in r.output
    recs = read_manifest(state.manifest_path("tags"))
    s = imported[0]
    rec = next(x for x in recs if x.id == audiomuse.record_id(s.item_id))
    assert rec.caption.endswith(f"track in {s.key} {s.scale} at {round(s.tempo)} BPM") or \
        rec.caption.endswith(f"piece in {s.key} {s.scale} at {round(s.tempo)} BPM")
    assert rec.caption[0].isupper() and rec.alt_captions


@pytest.mark.slow
def test_llm_captions_cache_ledger_and_secrets(imported, cli, state, state_dir, monkeypatch) -> None:
    fail = imported[5].title
    with chat_server(fail_title=fail) as (url, seen):
        monkeypatch.setenv("OPENAI_SERVER_URL", url)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        monkeypatch.setenv("OPENAI_MODEL_NAME", "tiny-llm")
        monkeypatch.setattr(lc.LLMConfig, "backoff", 0.01)
        r = cli("unify", "--name", "llm", "--captions", "llm", "--descriptions-per-song", "3")
        assert r.exit_code == 0, r.output
        assert "captions: llm (tiny-llm)" in r.output and f"{N - 1} call(s)" in r.output and "1 failed" in r.output
        first_calls = len(seen)
        assert first_calls == (N - 1) + lc.LLMConfig.retries + 1   # the failing song was retried, then recorded
        prompt = seen[0]["body"]["messages"][0]["content"]
        assert "Generate 3 diverse, concise descriptions (10-20 words each)" in prompt
        assert "Mood vector (top labels):" in prompt and "Other features:" in prompt and "BPM" in prompt
        assert seen[0]["body"]["model"] == "tiny-llm"
        recs = {x.id: x for x in read_manifest(state.manifest_path("llm"))}
        ok = recs[audiomuse.record_id(imported[0].item_id)]
        assert ok.caption.startswith("A warm and steady song 0 groove number 0") and len(ok.alt_captions) == 2
        assert ok.extra["caption_source"] == "llm:tiny-llm"
        bad = recs[audiomuse.record_id(imported[5].item_id)]
        assert bad.extra["caption_source"] == "tags" and "BPM" in bad.caption
        ledger = [json.loads(line) for line in (Path(state_dir) / "captions" / "ledger.jsonl").read_text().splitlines()]
        failed = [e for e in ledger if e["status"] == "failed"]
        assert [e["id"] for e in failed] == [bad.id] and "HTTP 500" in failed[0]["reason"]

        # A rebuild asks nothing for what is cached: only the failed song is asked again.
        before = [(x.id, x.caption, x.alt_captions) for x in read_manifest(state.manifest_path("llm"))]
        seen.clear()
        r2 = cli("unify", "--name", "llm", "--captions", "llm", "--descriptions-per-song", "3", "--force", "--json")
        assert r2.exit_code == 0, r2.output
        report = json.loads(r2.stdout)["llm"]
        assert report["cached"] == N - 1 and report["calls"] == 0
        assert all(fail in s["body"]["messages"][0]["content"] for s in seen)
        assert [(x.id, x.caption, x.alt_captions) for x in read_manifest(state.manifest_path("llm"))] == before
    for path in Path(state_dir).rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    assert API_KEY not in r.output and API_KEY not in r2.output


def test_wrong_key_stops_with_one_line(imported, cli, monkeypatch) -> None:
    with chat_server() as (url, seen):
        monkeypatch.setenv("OPENAI_SERVER_URL", url + "/chat/completions")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key")
        r = cli("unify", "--name", "bad", "--captions", "llm")
    assert r.exit_code == 1 and "HTTP 401 (check OPENAI_API_KEY)" in r.output and "Traceback" not in r.output
    assert "sk-wrong-key" not in r.output and len(seen) <= 4 + 2 * 4


def test_neighbour_context_matches_naive() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 16)).astype(np.float32)
    vecs, recs = {}, []
    for i in range(30):
        v = base[i % 3] + 0.3 * rng.standard_normal(16).astype(np.float32)
        rid = f"r{i}"
        vecs[rid] = v
        recs.append(Record(id=rid, audio_path="/x", caption="c", duration=1.0,
                           extra={"moods": {["rock", "jazz", "ambient"][i % 3]: 0.5, "pop": 0.2}, "tempo": 60.0 + i}))
    got = lc.neighbour_context(recs, vecs, k=5, min_cosine=0.7, block=7)
    norm = {k: v / np.linalg.norm(v) for k, v in vecs.items()}
    for r in recs:
        sims = sorted(((float(norm[r.id] @ norm[o.id]), o.id) for o in recs if o.id != r.id), key=lambda t: -t[0])
        near = [o for s, o in sims[:5] if s >= 0.7]
        if not near:
            assert r.id not in got
            continue
        tempos = [60.0 + int(o[1:]) for o in near]
        assert got[r.id]["count"] == len(near) and got[r.id]["tempo"] == (min(tempos), max(tempos))
        assert got[r.id]["moods"][0] == ["rock", "jazz", "ambient"][int(r.id[1:]) % 3]


@pytest.mark.parametrize("text,n,expected", [
    ("1. One two three four five\n2) Six seven eight nine ten", 5, ["One two three four five", "Six seven eight nine ten"]),
    ("- \"Quoted words are kept here\"\n* bullet words go here too\n\nshort one", 5,
     ["Quoted words are kept here", "bullet words go here too"]),
    ("a b c d\nA B C D\ne f g h", 1, ["a b c d"]),
    ("", 3, []),
])
def test_parse_descriptions(text, n, expected) -> None:
    assert lc.parse_descriptions(text, n) == expected


def test_endpoint_forms(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_SERVER_URL", raising=False)
    assert lc.LLMConfig().endpoint() == "https://api.openai.com/v1/chat/completions"
    assert lc.LLMConfig(url="http://localhost:11434/v1/").endpoint() == "http://localhost:11434/v1/chat/completions"
    assert lc.LLMConfig(url="http://h/v1/chat/completions").endpoint() == "http://h/v1/chat/completions"


@pytest.mark.parametrize("song,first", [
    ({"item_id": "a", "moods": {"rock": 0.55, "metal": 0.5}, "features": {"danceable": 0.8, "party": 0.7},
      "tempo": 127.6, "key": "A", "scale": "minor"}, "An energetic, danceable rock and metal track in A minor at 128 BPM"),
    ({"item_id": "b", "moods": {"jazz": 0.4}, "features": {"relaxed": 0.9}, "tempo": 0},
     "A relaxed jazz track"),
    ({"item_id": "c", "moods": {}, "features": {}, "key": "C"}, "A piece in C"),
    ({"item_id": "d", "moods": {"ambient": 0.6, "happy": 0.5}, "features": {"sad": 0.1}, "tempo": 80.0},
     "A happy ambient track at 80 BPM"),
])
def test_describe_song(song, first) -> None:
    caps = audiomuse.describe_song(song)
    assert caps[0] == first and len(caps) == len(set(caps))
    assert audiomuse.describe_song(song) == caps   # deterministic per item id
