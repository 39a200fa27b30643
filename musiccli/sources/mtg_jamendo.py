"""MTG-Jamendo: 55k full-length CC-licensed Jamendo tracks with genre / instrument / mood tags.

Native layout under the dataset root (mirrors the GitHub repo and the CDN)::

    data/raw_30s_cleantags_50artists.tsv      TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS [TAGS ...]
    data/autotagging_moodtheme.tsv            (same format; the moodtheme subset)
    data/raw.meta.tsv                         TRACK_NAME / ARTIST_NAME / ALBUM_NAME ... per track
    data/splits/split-0/<name>-{train,validation,test}.tsv
    data/download/{dataset}_{type}_sha256_{tars,tracks}.txt   "<sha256> <name>" per line
    {dataset}/{type}/NN/<id>.mp3              audio (``<id>.low.mp3`` for audio-low), NN = id % 100
    {dataset}/{type}/{dataset}_{type}-NN.tar  removed after extraction unless --keep-archives
    ledger.jsonl                              one entry per tar (``tar/<name>``) and per track

``--subset`` picks the dataset (raw_30s, the default, or autotagging_moodtheme) and
``--quality`` the audio type (low: ``audio-low``, mono, the default; high: ``audio``,
320 kbps). Every tar is checked against the published sha256 after download, and
again when it is already on disk; every extracted track against its own sha256.
``--max-shards K`` takes the first K tars, ``--max-items N`` stops after N tracks.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import MtxError
from ..manifest import Record, jamendo_artist, jamendo_group
from ..progress import Progress
from ..state import file_sha256
from ._archive import iter_members, safe_extract
from ._http import DownloadError, base_url, fetch, join_url
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import Ledger

log = logging.getLogger(__name__)

DEFAULT_BASE = "https://cdn.freesound.org/mtg-jamendo"
MIRROR_BASE = "https://essentia.upf.edu/documentation/datasets/mtg-jamendo"
ENV_URL = "MTX_MTG_JAMENDO_URL"
# The metadata lives in the GitHub repo, not on the CDN.
META_BASE = "https://raw.githubusercontent.com/MTG/mtg-jamendo-dataset/master"
ENV_META_URL = "MTX_MTG_JAMENDO_META_URL"

DATASETS = {
    # dataset -> (tag TSV, split file name stems to try)
    "raw_30s": ("raw_30s_cleantags_50artists.tsv", ("autotagging", "raw_30s_cleantags_50artists")),
    "autotagging_moodtheme": ("autotagging_moodtheme.tsv", ("autotagging_moodtheme",)),
}
QUALITIES = {"low": "audio-low", "high": "audio", "raw": "audio"}
META_TSV = "raw.meta.tsv"
SPLIT_DIR = "data/splits/split-0"
SPLITS = {"train": "train", "validation": "val", "test": "test"}
LICENSE = "CC (per track)"  # each Jamendo track carries its own CC licence; the TSVs do not say which

INFO = SourceInfo(
    name="mtg-jamendo",
    description="MTG-Jamendo: 55k full-length Jamendo tracks with genre, instrument and mood/theme tags",
    license="CC-BY-NC-SA-4.0 (metadata); audio under per-track Creative Commons licences",
    citation=("Bogdanov, D., Won, M., Tovstogan, P., Porter, A., Serra, X. (2019). The MTG-Jamendo Dataset for "
              "Automatic Music Tagging. ICML Machine Learning for Music Discovery Workshop."),
    homepage="https://github.com/MTG/mtg-jamendo-dataset",
    phase=1,
    options=("quality", "max_shards", "keep_archives"),
    urls={"audio": DEFAULT_BASE + "/{dataset}/{type}/{dataset}_{type}-NN.tar",
          "mirror": MIRROR_BASE + "/{dataset}/{type}/{dataset}_{type}-NN.tar",
          "metadata": META_BASE + "/data/"},
    checksums={},  # published per tar and per track in data/download/*_sha256_*.txt, fetched at download time
)

_TRACK_MEMBER_RE = re.compile(r"(?:^|/)(\d{2})/(\d+)(\.low)?\.mp3$")


@dataclass(frozen=True)
class Track:
    track_id: int
    artist_id: str | None
    album_id: str | None
    path: str | None
    duration: float | None
    tags: tuple[str, ...]


def _dataset(cfg: DownloadConfig) -> str:
    name = cfg.subset or "raw_30s"
    if name not in DATASETS:
        raise MtxError(f"unknown MTG-Jamendo subset {name!r}", hint=f"choose one of: {', '.join(DATASETS)}")
    return name


def _type(cfg: DownloadConfig) -> str:
    if cfg.quality not in QUALITIES:
        raise MtxError(f"unknown MTG-Jamendo quality {cfg.quality!r}", hint="choose low (audio-low) or high (audio)")
    return QUALITIES[cfg.quality]


def numeric_id(track_id: str) -> int | None:
    """``track_0003346`` -> 3346 (also accepts a bare number)."""
    m = re.fullmatch(r"(?:track_)?0*(\d+)", track_id.strip())
    return int(m.group(1)) if m else None


def track_relpath(dataset: str, type_: str, track_id: int) -> str:
    suffix = ".low.mp3" if type_ == "audio-low" else ".mp3"
    return f"{dataset}/{type_}/{track_id % 100:02d}/{track_id}{suffix}"


def _lines(path: Path) -> list[list[str]]:
    """Tab-split lines without the header; CRLF and stray quotes tolerated (no CSV quoting rules)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = [line.rstrip("\r\n").split("\t") for line in f]
    return [r for r in rows[1:] if r and r[0].strip()]


def read_tags_tsv(path: Path) -> dict[int, Track]:
    """The autotagging TSV: every column after DURATION is one more tag."""
    if not path.exists():
        raise MtxError(f"{path} not found", hint="run `mtx download mtg-jamendo`")
    out: dict[int, Track] = {}
    for row in _lines(path):
        tid = numeric_id(row[0])
        if tid is None:
            continue
        cell = (lambda i: row[i].strip() if len(row) > i and row[i].strip() else None)
        try:
            duration = float(cell(4)) if cell(4) else None
        except ValueError:
            duration = None
        tags = tuple(t.strip() for t in row[5:] if t.strip())
        out[tid] = Track(tid, cell(1), cell(2), cell(3), duration, tags)
    return out


def read_meta(path: Path) -> dict[int, dict[str, str]]:
    """raw.meta.tsv -> {track id: {column: value}}; quote characters are kept as text."""
    if not path.exists():
        return {}
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        out = {}
        for line in f:
            row = line.rstrip("\r\n").split("\t")
            tid = numeric_id(row[0]) if row else None
            if tid is not None:
                out[tid] = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
    return out


def read_splits(data_dir: Path, stems: tuple[str, ...]) -> dict[int, str]:
    for stem in stems:
        out: dict[int, str] = {}
        for name, split in SPLITS.items():
            path = data_dir / "splits" / "split-0" / f"{stem}-{name}.tsv"
            if path.exists():
                for row in _lines(path):
                    tid = numeric_id(row[0])
                    if tid is not None:
                        out[tid] = split
        if out:
            return out
    return {}


def parse_sha256_list(text: str) -> dict[str, str]:
    """``<sha256> <name>`` lines (one space; tolerate more, and sha256sum's ``*``) -> {name: sha256}."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            out[parts[1].strip().lstrip("*")] = parts[0].lower()
    return out


def _track_key(name: str) -> str | None:
    """A track checksum list's name (``00/7400.low.mp3`` or a longer path) -> ``NN/<id>``."""
    m = _TRACK_MEMBER_RE.search(name)
    return f"{m.group(1)}/{int(m.group(2))}" if m else None


@register
class MtgJamendoSource(Source):
    info = INFO

    @staticmethod
    def _id(track_id: int) -> str:
        return f"mtg-jamendo-{track_id}"

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        dataset, type_ = _dataset(cfg), _type(cfg)
        root.mkdir(parents=True, exist_ok=True)
        audio_base = base_url(DEFAULT_BASE, cfg.mirror, ENV_URL)
        meta_base = base_url(META_BASE, None, ENV_META_URL)
        sums_tars, sums_tracks = self._metadata(meta_base, root, dataset, type_, progress)
        tracks = read_tags_tsv(root / "data" / DATASETS[dataset][0])

        tars = sorted(sums_tars)
        if cfg.max_shards is not None:
            tars = tars[: cfg.max_shards]
        budget = cfg.max_items
        log.info("mtg-jamendo %s/%s: %d tar(s) selected%s", dataset, type_, len(tars),
                 f", at most {budget} tracks" if budget is not None else "")
        out_dir = root / dataset / type_
        with progress.task(f"mtg-jamendo {type_} tars", total=len(tars), unit="tars") as overall:
            for tar_name in tars:
                if budget is not None and budget <= 0:
                    break
                nn = _tar_number(tar_name)
                wanted = sorted(t for t in tracks if nn is not None and t % 100 == nn)
                if budget is not None:
                    wanted = wanted[:budget]
                    budget -= len(wanted)
                self._one_tar(audio_base, out_dir, root, dataset, type_, tar_name, sums_tars[tar_name],
                              wanted, sums_tracks, ledger, cfg, progress)
                overall.advance(1)
                progress.check_interrupt()

    def _metadata(self, base: str, root: Path, dataset: str, type_: str,
                  progress: Progress) -> tuple[dict[str, str], dict[str, str]]:
        data = root / "data"
        tsv, stems = DATASETS[dataset]
        lists = [f"download/{dataset}_{type_}_sha256_tars.txt", f"download/{dataset}_{type_}_sha256_tracks.txt"]
        with progress.task("mtg-jamendo metadata", total=2 + len(lists), unit="files") as task:
            for rel in (tsv, *lists, META_TSV):
                fetch(join_url(base, f"data/{rel}"), data / rel)
                task.advance(1)
            # Splits are optional (older checkouts name them differently): a missing one leaves split empty.
            for stem in stems:
                got = 0
                for name in SPLITS:
                    rel = f"splits/split-0/{stem}-{name}.tsv"
                    try:
                        fetch(join_url(base, f"data/{rel}"), data / rel, retries=1)
                        got += 1
                    except DownloadError as e:
                        log.debug("mtg-jamendo: no split file %s (%s)", rel, e.reason)
                if got:
                    break
            else:
                log.warning("mtg-jamendo: no split files found for %s; records carry no split", dataset)
        sums_tars = parse_sha256_list((data / lists[0]).read_text(encoding="utf-8", errors="replace"))
        if not sums_tars:
            raise MtxError(f"{lists[0]} lists no tars", hint="download the metadata again with --force")
        tracks_text = (data / lists[1]).read_text(encoding="utf-8", errors="replace")
        sums_tracks = {k: v for name, v in parse_sha256_list(tracks_text).items() if (k := _track_key(name))}
        return {Path(n).name: v for n, v in sums_tars.items()}, sums_tracks

    def _one_tar(self, base: str, out_dir: Path, root: Path, dataset: str, type_: str, tar_name: str,
                 sha256: str, wanted: list[int], sums_tracks: dict[str, str], ledger: Ledger,
                 cfg: DownloadConfig, progress: Progress) -> None:
        tar_id = f"tar/{tar_name}"
        todo = [t for t in wanted
                if not (ledger.is_ok(self._id(t)) and (root / track_relpath(dataset, type_, t)).is_file())]
        tar_path = out_dir / tar_name
        if not todo:
            self._drop(tar_path, cfg)
            return
        url = join_url(base, f"{dataset}/{type_}/{tar_name}")
        try:
            with progress.task(tar_name, unit="B") as task:
                # fetch re-hashes a tar already on disk instead of trusting it.
                fetch(url, tar_path, checksum=("sha256", sha256), task=task)
        except DownloadError as e:
            ledger.failed(tar_id, e.reason)
            log.warning("mtg-jamendo: %s: %s", tar_name, e.message)
            return
        progress.check_interrupt()
        members = {}
        for name in iter_members(tar_path):
            m = _TRACK_MEMBER_RE.search(name)
            if m:
                members.setdefault(int(m.group(2)), name)
        chosen = {members[t] for t in todo if t in members}
        safe_extract(tar_path, out_dir, members=chosen.__contains__, skip_existing=True)
        failed = 0
        for t in todo:
            failed += not self._record(root, out_dir, t, members.get(t), sums_tracks, ledger, tar_name)
        ledger.ok(tar_id, path=tar_path.relative_to(root).as_posix(), checksum=sha256)
        if not failed:
            self._drop(tar_path, cfg)

    def _record(self, root: Path, out_dir: Path, t: int, member: str | None, sums: dict[str, str],
                ledger: Ledger, tar_name: str) -> bool:
        tid = self._id(t)
        if member is None:
            ledger.failed(tid, f"{t % 100:02d}/{t}.* is not in {tar_name}")
            return False
        path = out_dir / member  # pathlib drops a "./" prefix, as safe_extract does
        if not path.is_file():
            ledger.failed(tid, f"extraction of {member} produced no file")
            return False
        digest = file_sha256(path)
        expected = sums.get(f"{t % 100:02d}/{t}")
        if expected is not None and digest != expected:
            path.unlink()
            ledger.failed(tid, f"sha256 mismatch ({digest[:12]}..., list says {expected[:12]}...)")
            return False
        ledger.ok(tid, path=path.relative_to(root).as_posix(), checksum=digest, nbytes=path.stat().st_size)
        return True

    @staticmethod
    def _drop(tar_path: Path, cfg: DownloadConfig) -> None:
        if tar_path.exists() and not cfg.keep_archives:
            log.info("mtg-jamendo: %s extracted and verified; removing it", tar_path.name)
            tar_path.unlink()

    # ------------------------------------------------------------------ parsing
    def _downloaded(self, root: Path) -> list[tuple[int, str, Path, str | None]]:
        """(track id, dataset, audio path, sha256) for every track the ledger marks ok."""
        out = []
        for e in Ledger(root).entries.values():
            if e.status != "ok" or not e.path or not e.id.startswith("mtg-jamendo-"):
                continue
            tid = numeric_id(e.id.removeprefix("mtg-jamendo-"))
            if tid is not None:
                out.append((tid, e.path.split("/", 1)[0], root / e.path, e.checksum))
        return sorted(out)

    def _tracks(self, root: Path, datasets: set[str]) -> dict[str, dict[int, Track]]:
        out = {}
        for ds in datasets:
            path = root / "data" / DATASETS.get(ds, DATASETS["raw_30s"])[0]
            out[ds] = read_tags_tsv(path)
        return out

    def records(self, root: Path) -> list[Record]:
        from ..captions import synthesize_captions, tagset_from_prefixed

        root = Path(root).resolve()
        downloaded = self._downloaded(root)
        if not downloaded:
            return []
        tracks = self._tracks(root, {ds for _, ds, _, _ in downloaded})
        meta = read_meta(root / "data" / META_TSV)
        splits = {ds: read_splits(root / "data", DATASETS.get(ds, DATASETS["raw_30s"])[1]) for ds in tracks}
        out, seen, untagged = [], set(), 0
        for tid, ds, path, _ in downloaded:
            t = tracks[ds].get(tid)
            if t is None or tid in seen or not path.is_file():
                continue
            rid = self._id(tid)
            captions = synthesize_captions(tagset_from_prefixed(t.tags), key=rid, n=3)
            if not captions:
                untagged += 1
                continue
            seen.add(tid)
            m = meta.get(tid, {})
            out.append(Record(
                id=rid, audio_path=str(path), caption=captions[0], duration=float(t.duration or 0.0),
                alt_captions=captions[1:], dataset=INFO.name, artist=m.get("ARTIST_NAME") or t.artist_id,
                title=m.get("TRACK_NAME") or None, tags=list(t.tags), license=LICENSE,
                split=splits[ds].get(tid), group=jamendo_group(tid),
                extra={"track_id": f"track_{tid:07d}", "artist_id": t.artist_id,
                       "artist_key": jamendo_artist(t.artist_id), "album_id": t.album_id,
                       "album": m.get("ALBUM_NAME") or None, "jamendo_path": t.path, "mtg_dataset": ds,
                       "url": m.get("URL") or None},
            ))
        if untagged:
            log.info("mtg-jamendo: %d track(s) have no tags to caption and are left out", untagged)
        return out

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        root = Path(root)
        downloaded = self._downloaded(root)
        if not downloaded:
            return []
        tracks = self._tracks(root, {ds for _, ds, _, _ in downloaded})
        out = []
        for tid, ds, path, sha in downloaded:
            t = tracks[ds].get(tid)
            duration = t.duration if t is not None else None
            out.append(ExpectedFile(id=self._id(tid), path=path, duration=duration,
                                    duration_tolerance=max(1.0, 0.01 * (duration or 0.0)),
                                    checksum=("sha256", sha) if sha else None))
        return out


def _tar_number(name: str) -> int | None:
    m = re.search(r"-(\d{2})\.tar$", name)
    return int(m.group(1)) if m else None


__all__ = ["MtgJamendoSource", "INFO", "read_tags_tsv", "read_meta", "read_splits", "parse_sha256_list",
           "track_relpath", "numeric_id"]
