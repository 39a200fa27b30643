"""Suno (nyuuzyou/suno): 659,788 AI-generated songs, CC0; the audio is fetched from each row's URL.

Native layout under the dataset root::

    suno.jsonl.zst        zstd-compressed JSON Lines, one song per line (id, audio_url, title,
                          metadata.{tags, prompt, duration, ...}); read as a stream, never whole
    selected.jsonl        the rows this download chose, normalised (written atomically)
    audio/<id[:2]>/<id>.mp3
    ledger.jsonl          one entry per song: ok, or failed + reason (e.g. HTTP 404)

The whole set is 659k full songs, so ``--max-items`` defaults to
:data:`DEFAULT_MAX_ITEMS`. Songs download on ``--workers`` threads;
``--rate-limit R`` allows at most R request starts per second.
"""

from __future__ import annotations

import io
import json
import logging
import re
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import MtxError
from ..manifest import Record
from ..progress import Progress
from ..state import atomic_write_text, iter_jsonl
from ._http import DownloadError, base_url, fetch, hf_headers, join_url
from ._parallel import RateLimiter, run_bounded
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import Ledger

log = logging.getLogger(__name__)

DEFAULT_BASE = "https://huggingface.co/datasets/nyuuzyou/suno/resolve/main"
ENV_URL = "MTX_SUNO_URL"
DATA_NAME = "suno.jsonl.zst"
SELECTED = "selected.jsonl"
DEFAULT_MAX_ITEMS = 1000
LICENSE = "cc0-1.0"
AUDIO_EXTS = (".mp3", ".m4a", ".wav", ".ogg", ".flac")
# Lyrics, not descriptions: section markers, or several lines.
_LYRICS_RE = re.compile(r"\[(verse|chorus|bridge|intro|outro|hook|pre-chorus|refrain|instrumental)[^\]]*\]", re.I)

INFO = SourceInfo(
    name="suno",
    description="Suno: 659,788 AI-generated songs with style tags and prompts (CC0; audio fetched per song)",
    license=LICENSE,
    citation="nyuuzyou (2024). Suno AI music dataset. Hugging Face: nyuuzyou/suno.",
    homepage="https://huggingface.co/datasets/nyuuzyou/suno",
    phase=2,
    options=("workers", "rate_limit"),
    urls={"data": join_url(DEFAULT_BASE, DATA_NAME)},
    checksums={},  # one Hub-versioned file; songs are fetched from their own URLs
)


def parse_row(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A normalised song: id, audio_url, title, style (str), prompt, description, duration; None if unusable."""
    sid, url = raw.get("id"), raw.get("audio_url")
    if not isinstance(sid, str) or not sid.strip() or not isinstance(url, str) or not url.strip():
        return None
    meta = raw.get("metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = {}
    meta = meta if isinstance(meta, dict) else {}
    tags = meta.get("tags")
    if isinstance(tags, list):
        tags = ", ".join(str(t).strip() for t in tags if str(t).strip())
    style = " ".join(str(tags).split()) if isinstance(tags, str) else ""
    return {"id": sid.strip(), "audio_url": url.strip(), "title": _str(raw.get("title")), "style": style or None,
            "prompt": _str(meta.get("prompt")), "description": _str(meta.get("gpt_description_prompt")),
            "duration": _float(meta.get("duration"))}


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Stream the zstd JSON Lines file row by row (constant memory)."""
    import zstandard

    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        text = io.TextIOWrapper(reader, encoding="utf-8", errors="replace")
        try:
            for raw in iter_jsonl(text, f"suno: {path.name}"):
                row = parse_row(raw)
                if row is not None:
                    yield row
        except zstandard.ZstdError as e:
            raise MtxError(f"cannot decompress {path.name}: {e}",
                           hint="the file is corrupt: rerun `mtx download suno --force`") from None


def is_description(prompt: str | None) -> bool:
    """True for a short one-line description ("a dreamy synthwave song about summer"), False for lyrics."""
    if not prompt:
        return False
    p = prompt.strip()
    return bool(p) and "\n" not in p and len(p) <= 300 and not _LYRICS_RE.search(p)


def captions_for(row: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for text in (row.get("style"), row.get("description"), row.get("prompt") if is_description(row.get("prompt"))
                 else None):
        if text and text not in out:
            out.append(text)
    return out


def audio_relpath(song_id: str, url: str) -> str:
    ext = Path(urllib.parse.urlsplit(url).path).suffix.lower()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", song_id)
    return f"audio/{safe[:2]}/{safe}{ext if ext in AUDIO_EXTS else '.mp3'}"


@register
class SunoSource(Source):
    info = INFO

    @staticmethod
    def _id(song_id: str) -> str:
        return f"suno-{song_id}"

    def identity(self, cfg: DownloadConfig) -> dict[str, Any]:
        # workers and rate_limit change speed, not what is downloaded; the default cap does.
        return {"max_items": cfg.max_items if cfg.max_items is not None else DEFAULT_MAX_ITEMS,
                "subset": cfg.subset}

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        root.mkdir(parents=True, exist_ok=True)
        base = base_url(DEFAULT_BASE, cfg.mirror, ENV_URL)
        url = join_url(base, DATA_NAME)
        with progress.task(DATA_NAME, unit="B") as task:
            fetch(url, root / DATA_NAME, headers=hf_headers(url), task=task)
        limit = cfg.max_items
        if limit is None:
            limit = DEFAULT_MAX_ITEMS
            log.info("suno: taking the first %d of ~660k songs (pass --max-items to change it)", limit)
        rows = self._select(root, limit)
        todo = [r for r in rows if not (ledger.is_ok(self._id(r["id"]))
                                        and (root / audio_relpath(r["id"], r["audio_url"])).is_file())]
        log.info("suno: %d songs selected, %d to fetch", len(rows), len(todo))
        self._fetch_all(todo, root, ledger, cfg, progress)

    def _select(self, root: Path, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` usable rows; written to selected.jsonl so records() need not rescan."""
        rows, seen = [], set()
        for row in iter_rows(root / DATA_NAME):
            if len(rows) >= limit:
                break
            if row["id"] not in seen:
                seen.add(row["id"])
                rows.append(row)
        atomic_write_text(root / SELECTED, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return rows

    def _fetch_all(self, todo: list[dict[str, Any]], root: Path, ledger: Ledger, cfg: DownloadConfig,
                   progress: Progress) -> None:
        limiter = RateLimiter(cfg.rate_limit)
        workers = max(1, cfg.n_workers)

        def one(row: dict[str, Any]) -> None:
            rid = self._id(row["id"])
            rel = audio_relpath(row["id"], row["audio_url"])
            limiter.wait()
            try:
                res = fetch(row["audio_url"], root / rel, headers=hf_headers(row["audio_url"]), retries=2)
            except DownloadError as e:
                ledger.failed(rid, e.reason)
                return
            ledger.ok(rid, path=rel, nbytes=res.bytes)

        with progress.task("suno songs", total=len(todo), unit="songs") as task, \
                ThreadPoolExecutor(max_workers=workers) as pool:
            # fut.result() re-raises programming errors; download failures are already in the ledger.
            run_bounded(pool, lambda row: pool.submit(one, row), todo, 2 * workers,
                        lambda row, fut: (fut.result(), task.advance(1)), progress)

    # ------------------------------------------------------------------ parsing
    def _selected(self, root: Path) -> list[dict[str, Any]]:
        return list(iter_jsonl(root / SELECTED))

    def records(self, root: Path) -> list[Record]:
        from ..audio import AudioError, audio_info

        root = Path(root).resolve()
        ledger = Ledger(root)
        out, uncaptioned = [], 0
        for row in self._selected(root):
            e = ledger.entries.get(self._id(row["id"]))
            if e is None or e.status != "ok" or not e.path:
                continue
            path = root / e.path
            captions = captions_for(row)
            if not captions:
                uncaptioned += 1
                continue
            duration = row.get("duration")
            if not duration:
                try:
                    duration = audio_info(path).duration
                except AudioError as err:
                    log.warning("suno: skipping %s: %s", row["id"], err.message)
                    continue
            tags = [t.strip() for t in (row.get("style") or "").split(",") if t.strip()]
            out.append(Record(
                id=self._id(row["id"]), audio_path=str(path), caption=captions[0], duration=float(duration),
                alt_captions=captions[1:], dataset=INFO.name, title=row.get("title"), tags=tags, license=LICENSE,
                group=f"suno:{row['id']}",
                extra={k: v for k, v in {"song_id": row["id"], "audio_url": row["audio_url"],
                                         "prompt": row.get("prompt")}.items() if v}))
        if uncaptioned:
            log.info("suno: %d song(s) have neither style tags nor a description and are left out", uncaptioned)
        return out

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        root = Path(root)
        ledger = Ledger(root)
        out = []
        for row in self._selected(root):
            e = ledger.entries.get(self._id(row["id"]))
            if e is not None and e.status == "ok" and e.path:
                d = row.get("duration")
                out.append(ExpectedFile(id=e.id, path=root / e.path, duration=d,
                                        duration_tolerance=max(1.0, 0.01 * (d or 0.0))))
        return out


def _str(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and f > 0 else None


__all__ = ["SunoSource", "INFO", "parse_row", "iter_rows", "is_description", "captions_for", "audio_relpath"]
