"""Song descriptions written by an LLM through any OpenAI-compatible chat-completions endpoint.

For records without a human caption (``caption_source == "tags"``), ``mtx unify --captions llm``
asks for ``n`` short descriptions (10-20 words) from the metadata, the mood vector and features,
and the moods and tempo range of the song's nearest CLAP neighbours (cosine >= 0.7, at most
10), the AudioMuse-AI student design's anchor context. The first answer becomes the caption,
the rest alternatives; a song whose call failed keeps its synthesised caption.

- Endpoint: ``OPENAI_SERVER_URL`` (a base such as ``http://localhost:11434/v1`` for Ollama or
  llama.cpp's server, or the full ``.../chat/completions`` URL), ``OPENAI_API_KEY`` (optional
  for local servers), ``OPENAI_MODEL_NAME``.
- Cache: ``<state>/captions/llm-cache.jsonl``, keyed by sha256(model, prompt); appended after
  every call, so a rerun (or a resumed unify) makes no call for a prompt it has seen.
- Ledger: ``<state>/captions/ledger.jsonl``, one entry per record (ok / failed + reason).
- A bounded thread pool (``concurrency``), retries with exponential backoff on 429/5xx and
  network errors, token usage summed and logged. The API key is sent only as a header.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MtxError
from .manifest import Record
from .progress import NullProgress, Progress
from .sources._parallel import run_bounded
from .sources.ledger import Ledger
from .state import StateDir, append_jsonl, iter_jsonl

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
CACHE_NAME = "llm-cache.jsonl"
PROMPT_VERSION = 1
_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.):]|\(\d+\))\s*")
SYSTEMIC_AFTER = 3   # this many failures before any success: the endpoint itself is wrong


@dataclass
class LLMConfig:
    n: int = 5                        # --descriptions-per-song
    url: str | None = None            # None: OPENAI_SERVER_URL, else the OpenAI API
    model: str | None = None          # None: OPENAI_MODEL_NAME, else DEFAULT_MODEL
    concurrency: int = 4
    retries: int = 4
    backoff: float = 1.0
    timeout: float = 120.0
    temperature: float = 0.7
    neighbours: int = 10
    min_cosine: float = 0.7

    def endpoint(self) -> str:
        url = (self.url or os.environ.get("OPENAI_SERVER_URL") or DEFAULT_URL).rstrip("/")
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"

    def model_name(self) -> str:
        return self.model or os.environ.get("OPENAI_MODEL_NAME") or DEFAULT_MODEL

    def identity(self) -> dict[str, Any]:
        """What changes the captions (never the key): for the unify stage record."""
        from .mediaserver import safe_url

        return {"n": self.n, "endpoint": safe_url(self.endpoint()), "model": self.model_name(),
                "temperature": self.temperature, "neighbours": self.neighbours, "min_cosine": self.min_cosine,
                "prompt_version": PROMPT_VERSION}


@dataclass
class LLMReport:
    model: str
    records: int = 0                  # records that needed a caption
    calls: int = 0                    # requests answered by the endpoint
    cached: int = 0                   # prompts answered from the cache
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- prompt
def _fmt_scores(scores: dict[str, float], k: int = 5) -> str:
    top = sorted(scores.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{label} ({score:.2f})" for label, score in top) or "unknown"


def neighbour_context(records: Sequence[Record], vectors: dict[str, np.ndarray], k: int,
                      min_cosine: float, block: int = 1024) -> dict[str, dict[str, Any]]:
    """For each record with a vector: moods and tempo range of its ``k`` nearest others (cosine >= min)."""
    ids = [r.id for r in records if r.id in vectors]
    if len(ids) < 2:
        return {}
    by_id = {r.id: r for r in records}
    mat = np.stack([vectors[i] for i in ids]).astype(np.float32)
    mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), block):
        sims = mat[start:start + block] @ mat.T
        for row, sim in enumerate(sims):
            me = start + row
            sim[me] = -np.inf
            top = np.argsort(-sim, kind="stable")[:k]
            near = [ids[j] for j in top if sim[j] >= min_cosine]
            if not near:
                continue
            moods = Counter(m for j in near for m in list(by_id[j].extra.get("moods", {}))[:3])
            tempos = [by_id[j].extra["tempo"] for j in near if isinstance(by_id[j].extra.get("tempo"), (int, float))]
            out[ids[me]] = {"count": len(near), "moods": [m for m, _ in moods.most_common(5)],
                            "tempo": (min(tempos), max(tempos)) if tempos else None}
    return out


def build_prompt(record: Record, n: int, context: dict[str, Any] | None) -> str:
    x = record.extra
    lines = [f"Generate {n} diverse, concise descriptions (10-20 words each) of this song for music search.",
             "Describe how it sounds (genre, mood, energy, tempo, instruments); do not name the title or artist.",
             "Answer with one description per line and nothing else.", "",
             f"Title: {record.title or 'unknown'}", f"Artist: {record.artist or 'unknown'}"]
    if isinstance(x.get("tempo"), (int, float)):
        lines.append(f"Tempo: {round(float(x['tempo']))} BPM")
    if x.get("key"):
        lines.append(f"Key: {x['key']} {x.get('scale') or ''}".rstrip())
    if isinstance(x.get("energy"), (int, float)):
        lines.append(f"Energy: {float(x['energy']):.3f}")
    lines.append(f"Mood vector (top labels): {_fmt_scores(x.get('moods', {}))}")
    if x.get("features"):
        lines.append(f"Other features: {_fmt_scores(x['features'], 6)}")
    if context:
        tempo = context.get("tempo")
        lines.append(f"Similar songs ({context['count']}) are mostly: {', '.join(context['moods']) or 'unknown'}"
                     + (f"; their tempo ranges {round(tempo[0])}-{round(tempo[1])} BPM" if tempo else ""))
    return "\n".join(lines)


def parse_descriptions(text: str, n: int) -> list[str]:
    """One description per line; numbering, bullets and quotes removed; too-short lines dropped."""
    out = []
    for line in (text or "").splitlines():
        s = _BULLET.sub("", line).strip().strip('"\u201c\u201d').strip()
        if len(s.split()) >= 4 and s.lower() not in {o.lower() for o in out}:
            out.append(s)
    return out[:n]


def cache_key(model: str, prompt: str) -> str:
    return hashlib.sha256(json.dumps([model, prompt]).encode()).hexdigest()


# --------------------------------------------------------------------------- client
class _CallFailed(Exception):
    pass


class ChatClient:
    def __init__(self, cfg: LLMConfig) -> None:
        self.cfg = cfg
        from .redact import split_credentials

        # user:password@ in OPENAI_SERVER_URL (a proxy with basic auth) becomes an Authorization header:
        # urllib cannot open such a URL ("Name or service not known").
        self.url, creds = split_credentials(cfg.endpoint())
        self.model = cfg.model_name()
        self._key = os.environ.get("OPENAI_API_KEY") or ""
        self._basic = None
        if creds is not None:
            if self._key:
                raise MtxError("OPENAI_SERVER_URL carries user:password@ and OPENAI_API_KEY is set too",
                               hint="use one: remove user:password@ from the URL, or unset OPENAI_API_KEY")
            import base64

            self._basic = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()

    def complete(self, prompt: str) -> tuple[str, dict[str, int]]:
        body = json.dumps({"model": self.model, "temperature": self.cfg.temperature,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        elif self._basic:
            headers["Authorization"] = f"Basic {self._basic}"
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
                    data = json.loads(resp.read())
            except urllib.error.HTTPError as e:
                with e:
                    last = f"HTTP {e.code}"
                    if e.code not in _RETRYABLE:
                        raise _CallFailed(last + (" (check OPENAI_API_KEY)" if e.code in (401, 403) else "")) from None
                continue
            except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
                last = f"{type(getattr(e, 'reason', e)).__name__}: {getattr(e, 'reason', e)}"[:120]
                continue
            try:
                text = data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise _CallFailed("the response has no choices[0].message.content") from None
            usage = data.get("usage") or {}
            return str(text or ""), {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                                     "completion_tokens": int(usage.get("completion_tokens") or 0)}
        raise _CallFailed(f"gave up after {self.cfg.retries + 1} attempts ({last})")


# --------------------------------------------------------------------------- the step
def captions_dir(state: StateDir) -> Path:
    return state.root / "captions"


def load_cache(path: Path) -> dict[str, list[str]]:
    return {d["key"]: list(d["descriptions"]) for d in iter_jsonl(path) if "key" in d and "descriptions" in d}


def caption_records(state: StateDir, records: Sequence[Record], cfg: LLMConfig,
                    vectors: dict[str, np.ndarray] | None = None, progress: Progress | None = None) -> LLMReport:
    """Rewrite caption + alt_captions of the records marked ``caption_source == "tags"``, in place."""
    progress = progress or NullProgress()
    if cfg.n < 1:
        raise MtxError(f"--descriptions-per-song must be at least 1 (got {cfg.n})")
    client = ChatClient(cfg)
    todo = [r for r in records if r.extra.get("caption_source") == "tags"]
    report = LLMReport(model=client.model, records=len(todo))
    if not todo:
        return report
    context = neighbour_context(records, vectors or {}, cfg.neighbours, cfg.min_cosine)
    root = captions_dir(state)
    cache_path = root / CACHE_NAME
    cache = load_cache(cache_path)
    ledger = Ledger(root)
    lock = threading.Lock()
    prompts = {r.id: build_prompt(r, cfg.n, context.get(r.id)) for r in todo}
    pending = []
    for r in todo:
        hit = cache.get(cache_key(client.model, prompts[r.id]))
        if hit:
            _apply(r, hit, client.model)
            report.cached += 1
        else:
            pending.append(r)
    log.info("llm captions: %d record(s), %d from the cache, %d to ask %s (%s)", len(todo), report.cached,
             len(pending), client.model, _host(client.url))
    with progress.task("Writing captions (LLM)", total=len(pending), unit="songs") as task, \
            ThreadPoolExecutor(max_workers=max(1, cfg.concurrency)) as pool:
        def done(rec: Record, fut) -> None:  # noqa: ANN001
            try:
                descriptions, usage = fut.result()
            except _CallFailed as e:
                ledger.failed(rec.id, str(e))
                with lock:
                    report.failed += 1
                    report.failures.append((rec.id, str(e)))
                    systemic = report.calls == report.cached == 0 and report.failed >= min(SYSTEMIC_AFTER, len(pending))
                if systemic:
                    raise MtxError(f"the LLM endpoint failed {report.failed} time(s) in a row: {e}",
                                   hint="check OPENAI_SERVER_URL, OPENAI_MODEL_NAME and OPENAI_API_KEY; "
                                        "or use --captions tags") from None
            else:
                key = cache_key(client.model, prompts[rec.id])
                append_jsonl(cache_path, [{"key": key, "model": client.model, "descriptions": descriptions,
                                           "usage": usage}])
                _apply(rec, descriptions, client.model)
                ledger.ok(rec.id)
                with lock:
                    report.calls += 1
                    report.prompt_tokens += usage["prompt_tokens"]
                    report.completion_tokens += usage["completion_tokens"]
            task.advance(1)

        def one(rec: Record) -> tuple[list[str], dict[str, int]]:
            text, usage = client.complete(prompts[rec.id])
            descriptions = parse_descriptions(text, cfg.n)
            if not descriptions:
                raise _CallFailed("the answer held no usable description")
            return descriptions, usage

        run_bounded(pool, lambda r: pool.submit(one, r), pending, window=2 * max(1, cfg.concurrency),
                    on_done=done, progress=progress)
    log.info("llm captions: %d call(s), %d cached, %d failed; tokens: %d prompt + %d completion", report.calls,
             report.cached, report.failed, report.prompt_tokens, report.completion_tokens)
    return report


def _apply(record: Record, descriptions: list[str], model: str) -> None:
    record.caption = descriptions[0]
    record.alt_captions = list(descriptions[1:])
    record.extra["caption_source"] = f"llm:{model}"


def _host(url: str) -> str:
    from .mediaserver import safe_url

    return safe_url(url)


__all__ = ["LLMConfig", "LLMReport", "build_prompt", "cache_key", "caption_records", "neighbour_context",
           "parse_descriptions"]
