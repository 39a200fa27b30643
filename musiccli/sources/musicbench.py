"""MusicBench (amaai-lab/MusicBench): 52,768 train + 400 test 10 s clips with rich captions.

Native layout under the dataset root (as published on the Hub)::

    MusicBench_train.json      JSON Lines, one clip per line (older name: same)
    MusicBench_test_A.json     JSON Lines (older name: MusicBench_testA.json)
    MusicBench_test_B.json     JSON Lines (older name: MusicBench_testB.json)
    data/<name>.wav            audio, from the archive's ``datashare/`` folder
    MusicBench.tar.gz          16.8 GB (older name: datasetaug.tar.gz); removed unless --keep-archives
    ledger.jsonl               one entry per clip: ok + sha256 of the extracted file

Each row's ``location`` (``data/sUjAb0SfppQ.wav``) is relative to ``datashare/``
inside the tarball. The tarball is gzip-compressed, so random access would mean
decompressing from the start for every member: it is read once, as a stream, and only
the members that are wanted are written. ``--subset train|test`` narrows the clips.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MtxError
from ..manifest import Record, youtube_group
from ..progress import Progress
from ..state import file_sha256, iter_jsonl
from ._archive import _relative, write_member
from ..redact import redact_url
from ._http import DownloadError, base_url, fetch, hf_headers, join_url
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import Ledger

log = logging.getLogger(__name__)

DEFAULT_BASE = "https://huggingface.co/datasets/amaai-lab/MusicBench/resolve/main"
ENV_URL = "MTX_MUSICBENCH_URL"
# (canonical name, older names) per split file; the first one the server has is used.
JSON_FILES = {
    "train": ("MusicBench_train.json", ()),
    "test_A": ("MusicBench_test_A.json", ("MusicBench_testA.json",)),
    "test_B": ("MusicBench_test_B.json", ("MusicBench_testB.json",)),
}
ARCHIVES = ("MusicBench.tar.gz", "datasetaug.tar.gz")
ARCHIVE_ROOT = "datashare"
LICENSE = "cc-by-sa-3.0"
PROMPT_FIELDS = ("prompt_aug", "prompt_ch", "prompt_bt", "prompt_bpm", "prompt_key")

INFO = SourceInfo(
    name="musicbench",
    description="MusicBench: 52,768 train + 400 test 10 s clips (MusicCaps + augmentations) with rich captions",
    license=LICENSE,
    citation=("Melechovsky, J., Guo, Z., Ghosal, D., Majumder, N., Herremans, D., Poria, S. (2024). Mustango: "
              "Toward Controllable Text-to-Music Generation. NAACL."),
    homepage="https://huggingface.co/datasets/amaai-lab/MusicBench",
    phase=1,
    options=("keep_archives",),
    urls={**{k: join_url(DEFAULT_BASE, v[0]) for k, v in JSON_FILES.items()},
          "audio": join_url(DEFAULT_BASE, ARCHIVES[0])},
    checksums={},  # the Hub's LFS hashes are not published in the repo files; the ledger keeps sha256
)


@dataclass(frozen=True)
class Clip:
    location: str          # relative to datashare/, e.g. data/sUjAb0SfppQ.wav
    split: str             # train / test
    file: str              # the JSON Lines file it came from
    row: dict[str, Any]

    @property
    def id(self) -> str:
        return clip_id(self.location)


def clip_id(location: str) -> str:
    """``data/abc.wav`` -> ``musicbench-abc``; other folders stay in the id (``musicbench-data_aug2-abc``)."""
    path = posixpath.normpath(location.replace("\\", "/")).lstrip("./")
    stem = path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path
    if stem.startswith("data/"):
        stem = stem[len("data/"):]
    return "musicbench-" + stem.replace("/", "-")


def source_ytid(location: str) -> str | None:
    """The YouTube id of the MusicCaps clip a MusicBench file was made from.

    Originals are ``data/<ytid>.wav``; augmented copies are ``data_aug2/<ytid>_<n>.wav``. YouTube ids
    are 11 characters and may themselves hold ``_``, so an 11-character prefix followed by ``_`` (or
    nothing) is taken first; other names (test fixtures, renamed files) drop the last ``_suffix`` of
    an augmented copy.
    """
    path = posixpath.normpath(location.replace("\\", "/")).lstrip("./")
    folder, _, name = path.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    if len(stem) >= 11 and (len(stem) == 11 or stem[11] == "_"):
        return stem[:11]
    if folder not in ("", "data") and "_" in stem:
        return stem.rsplit("_", 1)[0]
    return stem or None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON Lines despite the .json name; a whole-file JSON array is accepted too."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
            return [d for d in data if isinstance(d, dict)]
        except json.JSONDecodeError:
            pass
    return list(iter_jsonl(text.splitlines(), f"musicbench: {path.name}"))


def _local_json(root: Path, key: str) -> Path | None:
    name, old = JSON_FILES[key]
    for candidate in (name, *old):
        if (root / candidate).is_file():
            return root / candidate
    return None


def read_clips(root: Path) -> list[Clip]:
    """All clips of the JSON Lines files present, in file order; duplicates (by id) keep the first."""
    out, seen = [], set()
    for key in JSON_FILES:
        path = _local_json(root, key)
        if path is None:
            continue
        for row in read_jsonl(path):
            loc = row.get("location")
            if not isinstance(loc, str) or not loc.strip():
                continue
            clip = Clip(loc.strip(), "train" if key == "train" else "test", path.name, row)
            if clip.id not in seen:
                seen.add(clip.id)
                out.append(clip)
    return out


@register
class MusicBenchSource(Source):
    info = INFO

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        root.mkdir(parents=True, exist_ok=True)
        base = base_url(DEFAULT_BASE, cfg.mirror, ENV_URL)
        with progress.task("MusicBench metadata", total=len(JSON_FILES), unit="files") as task:
            for key in JSON_FILES:
                self._fetch_first(base, root, (JSON_FILES[key][0], *JSON_FILES[key][1]), progress=None)
                task.advance(1)
        clips = read_clips(root)
        if not clips:
            raise MtxError("the MusicBench JSON files list no clips", hint="download them again with --force")
        if cfg.subset:
            if cfg.subset not in ("train", "test"):
                raise MtxError(f"unknown MusicBench subset {cfg.subset!r}", hint="choose train or test")
            clips = [c for c in clips if c.split == cfg.subset]
        if cfg.max_items is not None:
            clips = clips[: max(0, cfg.max_items)]
        todo = {c.location.lstrip("./"): c for c in clips
                if not (ledger.is_ok(c.id) and (root / c.location).is_file())}
        log.info("musicbench: %d clips selected, %d to extract", len(clips), len(todo))
        if todo:
            archive = self._fetch_first(base, root, ARCHIVES, progress=progress)
            progress.check_interrupt()
            self._stream_extract(archive, root, todo, ledger, progress)
            for c in todo.values():
                if not ledger.is_ok(c.id):
                    ledger.failed(c.id, f"{ARCHIVE_ROOT}/{c.location} is not in {archive.name}")
        if all(ledger.is_ok(c.id) for c in clips) and not cfg.keep_archives:
            for name in ARCHIVES:
                if (root / name).exists():
                    log.info("musicbench: all selected clips extracted; removing %s", name)
                    (root / name).unlink()

    @staticmethod
    def _fetch_first(base: str, root: Path, names: tuple[str, ...], progress: Progress | None) -> Path:
        """Fetch the first of ``names`` the server has (the Hub renamed files over time)."""
        for name in names:
            if (root / name).is_file():
                return root / name
        last: DownloadError | None = None
        for name in names:
            url = join_url(base, name)
            try:
                if progress is None:
                    return fetch(url, root / name, headers=hf_headers(url)).path
                with progress.task(name, unit="B") as task:
                    return fetch(url, root / name, headers=hf_headers(url), task=task).path
            except DownloadError as e:
                if e.reason != "HTTP 404":
                    raise
                last = e
        raise DownloadError(f"none of {', '.join(names)} is available at {redact_url(base)}", reason="HTTP 404",
                            hint="check --mirror / $" + ENV_URL) from last

    def _stream_extract(self, archive: Path, root: Path, todo: dict[str, Clip], ledger: Ledger,
                        progress: Progress) -> None:
        dest = root.resolve()
        prefix = ARCHIVE_ROOT + "/"
        with progress.task(f"Extracting {archive.name}", total=len(todo), unit="clips") as task:
            try:
                with tarfile.open(archive, "r|*") as tf:
                    for ti in tf:
                        # _relative refuses absolute names and '..' before anything is written.
                        rel = _relative(ti.name, 0)
                        if rel is None or not ti.isfile():
                            continue  # links and devices are never extracted
                        loc = rel[len(prefix):] if rel.startswith(prefix) else rel
                        clip = todo.get(loc)
                        if clip is None or ledger.is_ok(clip.id):
                            continue
                        path = dest / loc
                        if dest not in path.resolve().parents:
                            raise MtxError(f"unsafe archive member {ti.name!r}", hint="refusing to extract it")
                        write_member(tf.extractfile(ti), path)
                        ledger.ok(clip.id, path=loc, checksum=file_sha256(path), nbytes=path.stat().st_size)
                        task.advance(1)
                        progress.check_interrupt()
            except (tarfile.TarError, EOFError, OSError) as e:
                raise MtxError(f"cannot read {archive.name}: {e}",
                               hint="the archive is corrupt or truncated: delete it and download it again") from None

    # ------------------------------------------------------------------ parsing
    def records(self, root: Path) -> list[Record]:
        from ..audio import AudioError, audio_info

        root = Path(root).resolve()
        ledger = Ledger(root)
        out = []
        for c in read_clips(root):
            e = ledger.entries.get(c.id)
            if e is None or e.status != "ok":
                continue
            path = root / (e.path or c.location)
            caption = _text(c.row.get("main_caption"))
            if caption is None or not path.is_file():
                continue
            try:
                duration = audio_info(path).duration
            except AudioError as err:
                log.warning("musicbench: skipping %s: %s", c.id, err.message)
                continue
            alts = [a for a in (_text(c.row.get("alt_caption")),) if a and a != caption]
            key = _key(c.row.get("key"))
            bpm = _float(c.row.get("bpm"))
            tags = [t for t in (key, f"{round(bpm)} bpm" if bpm else None) if t]
            extra: dict[str, Any] = {k: c.row[k] for k in PROMPT_FIELDS if _text(c.row.get(k))}
            extra.update({"location": c.location, "musicbench_file": c.file, "source_dataset": c.row.get("dataset"),
                          "key": key, "bpm": bpm, "chords": c.row.get("chords"),
                          "chords_time": c.row.get("chords_time"), "beats": c.row.get("beats"),
                          "keyprob": c.row.get("keyprob"),
                          "is_audioset_eval_mcaps": c.row.get("is_audioset_eval_mcaps")})
            out.append(Record(id=c.id, audio_path=str(path), caption=caption, duration=duration,
                              # Tags are only key and tempo, which MusicBench's captions already state.
                              alt_captions=alts, dataset=INFO.name, tags=tags, license=LICENSE, split=c.split,
                              group=youtube_group(source_ytid(c.location)),
                              extra={k: v for k, v in extra.items() if v is not None}))
        return out

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        root = Path(root)
        return [ExpectedFile(id=e.id, path=root / e.path, checksum=("sha256", e.checksum) if e.checksum else None)
                for e in Ledger(root).entries.values() if e.status == "ok" and e.path]


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _key(value: Any) -> str | None:
    """``["A", "minor"]`` -> "A minor"; a plain string is kept."""
    if isinstance(value, (list, tuple)):
        text = " ".join(str(v).strip() for v in value if str(v).strip())
    elif isinstance(value, str):
        text = value.strip()
    else:
        return None
    return re.sub(r"\s+", " ", text) or None


__all__ = ["MusicBenchSource", "INFO", "clip_id", "read_clips", "read_jsonl"]
