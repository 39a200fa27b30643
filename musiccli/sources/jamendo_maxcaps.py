"""JamendoMaxCaps (amaai-lab/JamendoMaxCaps): ~360k instrumental Jamendo tracks with generated captions.

Native layout under the dataset root::

    hub_tree.json, hub_tree_data.json   the Hub's file listing (names, sizes, LFS sha256)
    final_caption30sec.jsonl            {"id", "caption", "start_time", "end_time"} per 30 s segment
    <date-named>.jsonl                  Jamendo API track objects (id, name, artist_name, duration,
                                        musicinfo.tags.{genres, vartags, instruments}); tracks repeat
    data/train-{NNNNN}-of-01256.parquet audio shards (~1.1 TB in all); removed after extraction
                                        unless --keep-archives
    audio/NN/<track_id>.mp3             extracted audio, NN = track_id % 100
    ledger.jsonl                        one entry per shard (``shard/<name>``) and per track

The shards hold an ``audio`` struct ``{bytes, path}`` per row. They are read batch by
batch within a row group, never whole, and every track is written atomically.
``--max-shards K`` takes the first K shards, ``--max-items N`` stops after N tracks.
The metadata files are date-named, so their names come from the Hub's tree API
(``$MTX_JAMENDO_MAXCAPS_API_URL`` overrides it) or from
``$MTX_JAMENDO_MAXCAPS_METADATA`` (comma-separated names).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..captions import alt_captions_with_tags
from ..errors import MtxError
from ..manifest import Record, jamendo_artist, jamendo_group
from ..progress import Progress
from ..state import atomic_write_bytes, file_sha256, iter_jsonl
from ._http import DownloadError, base_url, fetch, hf_headers, join_url
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import Ledger

log = logging.getLogger(__name__)

REPO = "amaai-lab/JamendoMaxCaps"
DEFAULT_BASE = f"https://huggingface.co/datasets/{REPO}/resolve/main"
ENV_URL = "MTX_JAMENDO_MAXCAPS_URL"
DEFAULT_API = f"https://huggingface.co/api/datasets/{REPO}/tree/main"
ENV_API = "MTX_JAMENDO_MAXCAPS_API_URL"
ENV_METADATA = "MTX_JAMENDO_MAXCAPS_METADATA"
CAPTIONS = "final_caption30sec.jsonl"
NUM_SHARDS = 1256
BATCH_ROWS = 16          # rows per Arrow batch: a few full tracks in memory at a time
LICENSE = "cc-by-sa-3.0"

INFO = SourceInfo(
    name="jamendo-maxcaps",
    description="JamendoMaxCaps: ~360k instrumental Jamendo tracks with generated 30 s segment captions",
    license=LICENSE,
    citation=("Roy, A., Liu, R., Lu, T., Herremans, D. (2025). JamendoMaxCaps: A Large Scale Music-caption "
              "Dataset with Imputed Metadata. arXiv:2502.07461."),
    homepage=f"https://huggingface.co/datasets/{REPO}",
    phase=2,
    options=("max_shards", "keep_archives"),
    urls={"captions": join_url(DEFAULT_BASE, CAPTIONS), "tree": DEFAULT_API,
          "shards": join_url(DEFAULT_BASE, "data/train-{NNNNN}-of-01256.parquet")},
    checksums={},  # per-file sha256 comes from the Hub's LFS listing at download time
)

# Anchored: a listed path is joined to the dataset root, so only the Hub's own data/ shards qualify.
_SHARD_RE = re.compile(r"^data/train-(\d+)-of-(\d+)\.parquet$")
_DATE_RE = re.compile(r"\d{4}[-_]?\d{2}[-_]?\d{2}")


def shard_names(n: int = NUM_SHARDS) -> list[str]:
    return [f"data/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


def audio_relpath(track_id: str) -> str:
    nn = f"{int(track_id) % 100:02d}" if track_id.isdigit() else (track_id[:2] or "00")
    return f"audio/{nn}/{track_id}.mp3"


def _track_id(value: Any) -> str | None:
    """Jamendo ids arrive as ints, strings, or file names (``1234.mp3``)."""
    if value is None:
        return None
    s = str(value).strip()
    s = s.rsplit("/", 1)[-1]
    s = re.sub(r"\.(mp3|wav|flac|ogg)$", "", s, flags=re.I)
    return s or None


def is_metadata_name(path: str) -> bool:
    """Top-level JSONL files other than the captions: the date-named metadata dumps."""
    name = path.rsplit("/", 1)[-1]
    if "/" in path or not name.endswith(".jsonl") or "caption" in name.lower():
        return False
    return bool(_DATE_RE.search(name)) or "meta" in name.lower() or "track" in name.lower()


def read_captions(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Segment captions grouped by track id, ordered by start time (file order where times are missing)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if not path.exists():
        return {}
    for d in iter_jsonl(path, "jamendo-maxcaps"):
        tid, caption = _track_id(d.get("id")), d.get("caption")
        if tid and isinstance(caption, str) and caption.strip():
            groups[tid].append({"caption": caption.strip(), "start": _float(d.get("start_time")),
                                "end": _float(d.get("end_time"))})
    for segs in groups.values():
        segs.sort(key=lambda s: (s["start"] is None, s["start"] or 0.0))  # stable: file order among unknowns
    return dict(groups)


def read_metadata(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Jamendo API objects by id; the first occurrence wins (tracks repeat across the dated dumps)."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        for d in iter_jsonl(path, "jamendo-maxcaps"):
            tid = _track_id(d.get("id"))
            if tid and tid not in out:
                out[tid] = d
    return out


@register
class JamendoMaxCapsSource(Source):
    info = INFO

    @staticmethod
    def _id(track_id: str) -> str:
        return f"jamendo-maxcaps-{track_id}"

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        import pyarrow  # noqa: F401  (fail before fetching anything when the Parquet reader is missing)

        root.mkdir(parents=True, exist_ok=True)
        base = base_url(DEFAULT_BASE, cfg.mirror, ENV_URL)
        listing = self._listing(root)
        lfs = {item["path"]: (item.get("lfs") or {}).get("oid") for item in listing if item.get("type") == "file"}
        with progress.task(CAPTIONS, unit="B") as task:
            self._get(base, root, CAPTIONS, lfs, task)
        meta_names = self._metadata_names(listing)
        if not meta_names:
            log.warning("jamendo-maxcaps: no metadata files found (set $%s); records will carry no tags",
                        ENV_METADATA)
        for name in meta_names:
            with progress.task(name, unit="B") as task:
                self._get(base, root, name, lfs, task)
        shards = sorted(p for p in lfs if _SHARD_RE.search(p)) or shard_names()
        if cfg.max_shards is not None:
            shards = shards[: cfg.max_shards]
        # --max-items counts tracks recorded in the ledger, so a resumed run stops where a fresh one would.
        self._limit = cfg.max_items
        self._recorded = sum(1 for e in ledger.entries.values() if e.id.startswith("jamendo-maxcaps-"))
        log.info("jamendo-maxcaps: %d shard(s) selected%s", len(shards),
                 f", at most {cfg.max_items} tracks" if cfg.max_items is not None else "")
        with progress.task("jamendo-maxcaps shards", total=len(shards), unit="shards") as overall:
            for name in shards:
                if self._full():
                    break
                self._one_shard(base, root, name, lfs.get(name), ledger, cfg, progress)
                overall.advance(1)
                progress.check_interrupt()

    def _full(self) -> bool:
        return self._limit is not None and self._recorded >= self._limit

    # ------------------------------------------------------------------ listing
    def _listing(self, root: Path) -> list[dict[str, Any]]:
        """The Hub's tree listing (top level + data/), cached in the dataset dir; [] when unavailable."""
        api = base_url(DEFAULT_API, None, ENV_API)
        items: list[dict[str, Any]] = []
        for url, name in ((api, "hub_tree.json"), (join_url(api, "data"), "hub_tree_data.json")):
            try:
                path = fetch(url, root / name, headers=hf_headers(url), retries=2).path
                data = json.loads(path.read_text(encoding="utf-8"))
            except DownloadError as e:
                log.warning("jamendo-maxcaps: cannot list %s (%s); using the known file names", url, e.reason)
                continue
            except json.JSONDecodeError:
                (root / name).unlink(missing_ok=True)
                log.warning("jamendo-maxcaps: %s did not return a JSON listing", url)
                continue
            if isinstance(data, list):
                items.extend(d for d in data if isinstance(d, dict) and isinstance(d.get("path"), str))
        return items

    @staticmethod
    def _metadata_names(listing: list[dict[str, Any]]) -> list[str]:
        configured = [n.strip() for n in os.environ.get(ENV_METADATA, "").split(",") if n.strip()]
        if configured:
            return configured
        return sorted(d["path"] for d in listing if d.get("type") == "file" and is_metadata_name(d["path"]))

    @staticmethod
    def _get(base: str, root: Path, name: str, lfs: dict[str, str | None], task=None) -> Path:  # noqa: ANN001
        url = join_url(base, name)
        sha = lfs.get(name)
        return fetch(url, root / name, headers=hf_headers(url), task=task,
                     checksum=("sha256", sha) if sha and len(sha) == 64 else None).path

    # ------------------------------------------------------------------ shards
    def _one_shard(self, base: str, root: Path, name: str, sha: str | None, ledger: Ledger, cfg: DownloadConfig,
                   progress: Progress) -> None:
        shard_id = f"shard/{name.rsplit('/', 1)[-1]}"
        path = root / name
        if ledger.is_ok(shard_id):
            self._drop(path, cfg)
            return
        try:
            with progress.task(name.rsplit("/", 1)[-1], unit="B") as task:
                self._get(base, root, name, {name: sha}, task)
        except DownloadError as e:
            ledger.failed(shard_id, e.reason)
            log.warning("jamendo-maxcaps: %s: %s", name, e.message)
            return
        progress.check_interrupt()
        try:
            complete = self._extract(path, root, ledger, progress)
        except MtxError as e:
            # One unreadable shard is recorded like a failed download; the other shards go on.
            ledger.failed(shard_id, e.message[:120])
            log.warning("jamendo-maxcaps: %s (%s)", e.message, e.hint)
            if sha is None:
                path.unlink(missing_ok=True)  # unverified bytes: fetch them again on --continue
            return
        if complete:
            ledger.ok(shard_id, path=name, checksum=sha)
            self._drop(path, cfg)

    def _extract(self, path: Path, root: Path, ledger: Ledger, progress: Progress) -> bool:
        """Write the shard's tracks; False when --max-items stopped it part-way."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
            if "audio" not in pf.schema_arrow.names:
                raise MtxError(f"{path.name} has no 'audio' column", hint="this is not a JamendoMaxCaps shard")
            with progress.task(f"Extracting {path.name}", total=pf.metadata.num_rows, unit="tracks") as task:
                for rg in range(pf.num_row_groups):
                    for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=["audio"]):
                        for item in batch.column("audio").to_pylist():
                            if not self._write_track(item, root, ledger, path.name):
                                return False
                            task.advance(1)
                        progress.check_interrupt()
        except (pa.ArrowException, OSError) as e:
            raise MtxError(f"cannot read {path.name}: {e}",
                           hint="the shard is corrupt; rerun with --continue to fetch it again") from None
        return True

    def _write_track(self, item: Any, root: Path, ledger: Ledger, shard: str) -> bool:
        """Write one row's audio; False when the --max-items limit is reached before it."""
        tid = _track_id(item.get("path")) if isinstance(item, dict) else None
        if tid is None:
            return True
        rid = self._id(tid)
        rel = audio_relpath(tid)
        if ledger.is_ok(rid) and (root / rel).is_file():
            return True
        known = rid in ledger.entries
        if not known and self._full():
            return False
        data = item.get("bytes")
        if not data:
            ledger.failed(rid, f"no audio bytes in {shard}")
        else:
            atomic_write_bytes(root / rel, data)
            ledger.ok(rid, path=rel, checksum=file_sha256(root / rel), nbytes=len(data))
        self._recorded += not known
        return True

    @staticmethod
    def _drop(path: Path, cfg: DownloadConfig) -> None:
        if path.exists() and not cfg.keep_archives:
            log.info("jamendo-maxcaps: %s extracted; removing it", path.name)
            path.unlink()

    # ------------------------------------------------------------------ parsing
    def _metadata_files(self, root: Path) -> list[Path]:
        names = set(self._metadata_names([]))
        return sorted(p for p in root.glob("*.jsonl") if p.name in names or is_metadata_name(p.name))

    def _downloaded(self, root: Path) -> list[tuple[str, Path, str | None]]:
        out = []
        for e in Ledger(root).entries.values():
            if e.status == "ok" and e.path and e.id.startswith("jamendo-maxcaps-"):
                out.append((e.id.removeprefix("jamendo-maxcaps-"), root / e.path, e.checksum))
        return out

    def records(self, root: Path) -> list[Record]:
        from ..audio import AudioError, audio_info

        root = Path(root).resolve()
        downloaded = self._downloaded(root)
        if not downloaded:
            return []
        captions = read_captions(root / CAPTIONS)
        if not captions:
            raise MtxError(f"no captions in {root / CAPTIONS}", hint="run `mtx download jamendo-maxcaps --continue`")
        meta = read_metadata(self._metadata_files(root))
        out, uncaptioned = [], 0
        for tid, path, _ in downloaded:
            segs = captions.get(tid)
            if not segs:
                uncaptioned += 1
                continue
            if not path.is_file():
                continue
            m = meta.get(tid, {})
            duration = _float(m.get("duration"))
            if not duration:
                try:
                    duration = audio_info(path).duration
                except AudioError as e:
                    log.warning("jamendo-maxcaps: skipping %s: %s", tid, e.message)
                    continue
            tags = _tags(m)
            out.append(Record(
                id=self._id(tid), audio_path=str(path), caption=segs[0]["caption"], duration=duration,
                alt_captions=alt_captions_with_tags(segs[0]["caption"], [s["caption"] for s in segs[1:]], tags,
                                                    self._id(tid)),
                dataset=INFO.name, artist=_str(m.get("artist_name")), title=_str(m.get("name")), tags=tags,
                license=_str(m.get("license_ccurl")) or LICENSE, group=jamendo_group(tid),
                extra={k: v for k, v in {
                    "track_id": tid, "artist_key": jamendo_artist(m.get("artist_id")),
                    "album": _str(m.get("album_name")), "releasedate": _str(m.get("releasedate")),
                    "segments": [[s["start"], s["end"]] for s in segs]}.items() if v is not None},
            ))
        if uncaptioned:
            log.info("jamendo-maxcaps: %d track(s) have no caption and are left out", uncaptioned)
        return sorted(out, key=lambda r: r.id)

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        root = Path(root)
        downloaded = self._downloaded(root)
        meta = read_metadata(self._metadata_files(root)) if downloaded else {}
        out = []
        for tid, path, sha in downloaded:
            duration = _float(meta.get(tid, {}).get("duration"))
            out.append(ExpectedFile(id=self._id(tid), path=path, duration=duration,
                                    # The API's durations are whole seconds.
                                    duration_tolerance=max(1.5, 0.01 * (duration or 0.0)),
                                    checksum=("sha256", sha) if sha else None))
        return out


def _tags(meta: dict[str, Any]) -> list[str]:
    tags = ((meta.get("musicinfo") or {}).get("tags") or {}) if isinstance(meta.get("musicinfo"), dict) else {}
    out: list[str] = []
    for key in ("genres", "instruments", "vartags"):
        values = tags.get(key) if isinstance(tags, dict) else None
        for v in values if isinstance(values, list) else []:
            s = _str(v)
            if s and s.lower() not in {t.lower() for t in out}:
                out.append(s)
    return out


def _str(value: Any) -> str | None:
    return str(value).strip() or None if value is not None and not isinstance(value, (dict, list)) else None


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


__all__ = ["JamendoMaxCapsSource", "INFO", "read_captions", "read_metadata", "is_metadata_name", "shard_names",
           "audio_relpath"]
