"""MusicCaps (google/MusicCaps): 5,521 expert captions of 10 s AudioSet clips; the audio comes from YouTube.

Native layout under the dataset root::

    musiccaps-public.csv     ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,
                             author_id,is_balanced_subset,is_audioset_eval
    audio/<ytid>.flac        the 10 s clip start_s..end_s
    ledger.jsonl             one entry per clip: ok, or failed + yt-dlp's reason

Clips are fetched with yt-dlp's Python API. With ffmpeg on PATH only the section is
downloaded (``download_ranges`` + ``force_keyframes_at_cuts``) and converted to FLAC;
without it the best audio-only format that libsndfile decodes is downloaded whole and
cut locally. Expect a few percent of the videos to be gone and bot checks on some
networks: every failure is recorded with its reason and the run goes on;
``--continue`` retries only the clips that are not ok.
"""

from __future__ import annotations

import ast
import csv
import logging
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..captions import alt_captions_with_tags
from ..errors import MtxError
from ..manifest import Record, youtube_group
from ..progress import Progress
from ..state import TMP_PREFIX
from ._http import base_url, fetch, hf_headers, join_url
from ._parallel import RateLimiter, run_bounded
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import Ledger

log = logging.getLogger(__name__)

CSV_NAME = "musiccaps-public.csv"
DEFAULT_BASE = "https://huggingface.co/datasets/google/MusicCaps/resolve/main"
ENV_CSV_URL = "MTX_MUSICCAPS_CSV_URL"          # a base URL, or the full URL of the CSV
DEFAULT_VIDEO_URL = "https://www.youtube.com/watch?v={ytid}"
ENV_VIDEO_URL = "MTX_MUSICCAPS_VIDEO_URL"      # a template with {ytid}
SUBSETS = ("eval", "train", "balanced")
DURATION_TOLERANCE = 1.0                       # keyframe-aligned cuts may drift a little
# Without ffmpeg the downloaded file is decoded by libsndfile, so prefer containers it reads.
FORMAT_NO_FFMPEG = ("bestaudio[ext=wav]/bestaudio[ext=flac]/bestaudio[ext=mp3]/bestaudio[ext=ogg]/"
                    "bestaudio[ext=opus]/bestaudio/best")
FORMAT_FFMPEG = "bestaudio/best"

INFO = SourceInfo(
    name="musiccaps",
    description="MusicCaps: 5,521 expert-written captions of 10 s YouTube clips (audio fetched with yt-dlp)",
    license="CC-BY-SA-4.0",
    citation=("Agostinelli, A., Denk, T. I., Borsos, Z., Engel, J., Verzetti, M., Caillon, A., Huang, Q., "
              "Jansen, A., Roberts, A., Tagliasacchi, M., Sharifi, M., Zeghidour, N., Frank, C. (2023). "
              "MusicLM: Generating Music From Text. arXiv:2301.11325."),
    homepage="https://huggingface.co/datasets/google/MusicCaps",
    phase=1,
    options=(),
    urls={"csv": join_url(DEFAULT_BASE, CSV_NAME), "video": DEFAULT_VIDEO_URL},
    checksums={},  # the CSV is versioned on the Hub; clips are cut locally, nothing is published to compare
)


@dataclass(frozen=True)
class Clip:
    ytid: str
    start: float
    end: float
    caption: str
    aspects: tuple[str, ...]
    labels: tuple[str, ...]
    author_id: int | None
    balanced: bool
    eval: bool

    @property
    def id(self) -> str:
        return f"musiccaps-{self.ytid}"

    @property
    def relpath(self) -> str:
        return f"audio/{self.ytid}.flac"


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def parse_aspects(value: str | None) -> tuple[str, ...]:
    """``"['rock', 'loud drums']"`` -> tags; a malformed literal falls back to splitting on commas."""
    text = (value or "").strip()
    if not text:
        return ()
    try:
        parsed = ast.literal_eval(text)
        items = parsed if isinstance(parsed, (list, tuple)) else [parsed]
    except (ValueError, SyntaxError):
        items = text.strip("[]").split(",")
    out: list[str] = []
    for item in items:
        tag = str(item).strip().strip("'\"").strip()
        if tag and tag not in out:
            out.append(tag)
    return tuple(out)


def read_clips(path: Path) -> list[Clip]:
    if not path.exists():
        raise MtxError(f"{path} not found", hint="run `mtx download musiccaps`")
    clips, seen = [], set()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("ytid", "start_s", "end_s", "caption") if c not in (reader.fieldnames or [])]
        if missing:
            raise MtxError(f"{path.name} lacks column(s) {', '.join(missing)}",
                           hint="this is not musiccaps-public.csv; download it again with --force")
        for row in reader:
            ytid = (row.get("ytid") or "").strip()
            caption = (row.get("caption") or "").strip()
            try:
                start, end = float(row["start_s"]), float(row["end_s"])
            except (TypeError, ValueError):
                continue
            if not ytid or not caption or end <= start or ytid in seen:
                continue
            seen.add(ytid)
            author = (row.get("author_id") or "").strip()
            clips.append(Clip(
                ytid=ytid, start=start, end=end, caption=caption, aspects=parse_aspects(row.get("aspect_list")),
                labels=tuple(x.strip() for x in (row.get("audioset_positive_labels") or "").split(",") if x.strip()),
                author_id=int(float(author)) if author.replace(".", "", 1).isdigit() else None,
                balanced=_bool(row.get("is_balanced_subset")), eval=_bool(row.get("is_audioset_eval")),
            ))
    return clips


def select_clips(clips: list[Clip], subset: str | None, max_items: int | None) -> list[Clip]:
    if subset:
        if subset not in SUBSETS:
            raise MtxError(f"unknown MusicCaps subset {subset!r}", hint=f"choose one of: {', '.join(SUBSETS)}")
        keep = {"eval": lambda c: c.eval, "train": lambda c: not c.eval, "balanced": lambda c: c.balanced}[subset]
        clips = [c for c in clips if keep(c)]
    return clips[: max(0, max_items)] if max_items is not None else clips


def short_reason(e: BaseException) -> str:
    """yt-dlp's error as one short line for the ledger ("ERROR: [youtube] id: Video unavailable ...")."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = text.removeprefix("ERROR: ").strip()
    cut = text.find(" (caused by ")
    if cut > 0:
        text = text[:cut]
    return text[:200] or type(e).__name__


class _YtLogger:
    """Route yt-dlp's output to our log (core code never prints)."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    info = debug

    def warning(self, msg: str) -> None:
        log.debug("yt-dlp warning: %s", msg)

    def error(self, msg: str) -> None:
        log.debug("yt-dlp error: %s", msg)


class ClipError(Exception):
    """One clip that could not be fetched; the message is the ledger reason."""


@register
class MusicCapsSource(Source):
    info = INFO

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        root.mkdir(parents=True, exist_ok=True)
        base = base_url(DEFAULT_BASE, cfg.mirror, ENV_CSV_URL)
        csv_url = base if base.lower().split("?", 1)[0].endswith(".csv") else join_url(base, CSV_NAME)
        with progress.task(CSV_NAME, unit="B") as task:
            fetch(csv_url, root / CSV_NAME, headers=hf_headers(csv_url), task=task)
        clips = select_clips(read_clips(root / CSV_NAME), cfg.subset, cfg.max_items)
        todo = [c for c in clips if not (ledger.is_ok(c.id) and (root / c.relpath).is_file())]
        ffmpeg = shutil.which("ffmpeg")
        if todo and not ffmpeg:
            log.info("ffmpeg not found: downloading whole audio streams and cutting clips locally "
                     "(install ffmpeg to fetch only the 10 s sections)")
        log.info("musiccaps: %d clips selected, %d to fetch", len(clips), len(todo))
        template = _video_template()
        with progress.task("Fetching MusicCaps clips", total=len(clips), unit="clips",
                           completed=len(clips) - len(todo)) as task:
            if todo:
                self._fetch_all(todo, cfg, root, ledger, progress, task, template, ffmpeg)
        failed = [c for c in clips if not ledger.is_ok(c.id)]
        if failed:
            log.warning("musiccaps: %d of %d clips unavailable (see the ledger for reasons)", len(failed),
                        len(clips))

    def _fetch_all(self, todo: list[Clip], cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress,
                   task, template: str, ffmpeg: str | None) -> None:  # noqa: ANN001
        import yt_dlp  # noqa: F401  (imported once here, not concurrently in the workers)

        pacer = RateLimiter(cfg.rate_limit)
        workers = max(1, min(cfg.n_workers, len(todo)))
        bot_warned = False

        def done(clip: Clip, fut: Future) -> None:
            nonlocal bot_warned
            reason = fut.result()
            if reason and "not a bot" in reason and not bot_warned:
                bot_warned = True
                log.warning("YouTube asks for a bot check; consider --rate-limit, another network, "
                            "or yt-dlp cookies")
            task.advance(1)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="musiccaps") as pool:
            run_bounded(pool, lambda clip: pool.submit(self._one, clip, root, ledger, pacer, template, ffmpeg),
                        todo, workers * 2, done, progress)

    def _one(self, clip: Clip, root: Path, ledger: Ledger, pacer: RateLimiter, template: str,
             ffmpeg: str | None) -> str | None:
        """Fetch one clip and record it; returns the failure reason (None when ok). Never raises."""
        pacer.wait()
        work = root / f"{TMP_PREFIX}yt" / clip.ytid
        try:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
            dest = root / clip.relpath
            url = template.format(ytid=clip.ytid)
            if ffmpeg:
                _fetch_section(url, clip, work, dest)
            else:
                _fetch_and_cut(url, clip, work, dest)
        except ClipError as e:
            ledger.failed(clip.id, str(e))
            return str(e)
        except Exception as e:  # one broken clip never stops the run
            reason = short_reason(e) if type(e).__name__ in ("DownloadError", "ExtractorError") else \
                f"{type(e).__name__}: {short_reason(e)}"
            ledger.failed(clip.id, reason)
            return reason
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ledger.ok(clip.id, path=clip.relpath, nbytes=dest.stat().st_size)
        return None

    # ------------------------------------------------------------------ parsing
    def _downloaded(self, root: Path) -> list[tuple[Clip, Path]]:
        ledger = Ledger(root)
        out = []
        for c in read_clips(root / CSV_NAME):
            e = ledger.entries.get(c.id)
            if e is not None and e.status == "ok":
                out.append((c, root / (e.path or c.relpath)))
        return out

    def records(self, root: Path) -> list[Record]:
        root = Path(root).resolve()
        return [Record(
            id=c.id, audio_path=str(path), caption=c.caption, duration=c.end - c.start, dataset=INFO.name,
            alt_captions=alt_captions_with_tags(c.caption, [], c.aspects, c.id),
            tags=list(c.aspects), license=INFO.license,
            # The official split (AudioSet eval = test); unify reassigns it unless --keep-official-splits.
            split="test" if c.eval else "train", group=youtube_group(c.ytid),
            extra={"ytid": c.ytid, "start_s": c.start, "end_s": c.end, "author_id": c.author_id,
                   "audioset_labels": list(c.labels), "is_balanced_subset": c.balanced},
        ) for c, path in self._downloaded(root) if path.is_file()]

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        return [ExpectedFile(id=c.id, path=path, duration=c.end - c.start, duration_tolerance=DURATION_TOLERANCE)
                for c, path in self._downloaded(Path(root))]


def _video_template() -> str:
    import os

    template = os.environ.get(ENV_VIDEO_URL) or DEFAULT_VIDEO_URL
    if "{ytid}" not in template:
        raise MtxError(f"{ENV_VIDEO_URL}={template!r} has no {{ytid}} placeholder",
                       hint="for example http://host/watch?v={ytid}")
    return template


def _ydl_options(work: Path, fmt: str) -> dict:
    return {
        "format": fmt, "outtmpl": str(work / "source.%(ext)s"), "paths": {"home": str(work)},
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": _YtLogger(), "noplaylist": True,
        "retries": 3, "fragment_retries": 3, "socket_timeout": 30, "overwrites": True,
    }


def _run_ydl(url: str, opts: dict) -> Path:
    import yt_dlp

    with yt_dlp.YoutubeDL(opts) as ydl:
        info = ydl.extract_info(url, download=True)
    if info is None:
        raise ClipError("yt-dlp returned no media")
    downloads = info.get("requested_downloads") or []
    path = Path(downloads[-1]["filepath"]) if downloads and downloads[-1].get("filepath") else None
    if path is None or not path.is_file():
        raise ClipError("yt-dlp reported success but wrote no file")
    return path


def _fetch_section(url: str, clip: Clip, work: Path, dest: Path) -> None:
    """With ffmpeg: download only start..end and convert it to FLAC."""
    import os

    import yt_dlp

    opts = _ydl_options(work, FORMAT_FFMPEG)
    opts.update({
        "download_ranges": yt_dlp.utils.download_range_func(None, [(clip.start, clip.end)]),
        "force_keyframes_at_cuts": True,
        "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": "flac"}],
    })
    path = _run_ydl(url, opts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)  # work/ sits under the dataset root: same filesystem, atomic


def _fetch_and_cut(url: str, clip: Clip, work: Path, dest: Path) -> None:
    """Without ffmpeg: download the whole audio stream, then cut start..end with libsndfile."""
    import soundfile as sf

    from ..audio import write_audio

    path = _run_ydl(url, _ydl_options(work, FORMAT_NO_FFMPEG))
    try:
        with sf.SoundFile(str(path)) as f:
            sr = int(f.samplerate)
            start = int(round(clip.start * sr))
            if f.frames and start >= f.frames:
                raise ClipError(f"the audio is {f.frames / sr:.1f} s long, the clip starts at {clip.start:g} s")
            f.seek(start)
            data = f.read(frames=int(round((clip.end - clip.start) * sr)), dtype="float32", always_2d=True)
    except ClipError:
        raise
    except Exception as e:
        raise ClipError(f"cannot decode the downloaded {path.suffix.lstrip('.') or 'audio'} without ffmpeg "
                        f"({short_reason(e)[:80]}); install ffmpeg") from None
    if len(data) == 0:
        raise ClipError("no audio samples in the clip's time range")
    write_audio(dest, data, sr, subtype="PCM_16")


__all__ = ["MusicCapsSource", "INFO", "read_clips", "select_clips", "parse_aspects"]
