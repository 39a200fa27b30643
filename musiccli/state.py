"""The shared state directory, atomic writes, and the stage (resume) contract.

Layout (see ARCHITECTURE.md)::

    <state>/datasets/<source>/    native layout + ledger
    <state>/manifests/<name>.json
    <state>/embeddings/<encoder>/<manifest>.h5
    <state>/runs/<run>/
    <state>/exports/<run>/
    <state>/index/<name>/
    <state>/stages/<key>.json

A stage is identified by a *key*: the stage name plus the identity of what it
produces from which inputs (``embed:dsp:synth``). Its record stores the
result-affecting config. A fresh start over a complete record is a no-op, over a
partial one it is refused; ``--continue`` resumes a partial one only if the config
is unchanged (differences are listed); ``--force`` starts over.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from .errors import MtxError

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------- atomic I/O
@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; ``os.replace`` it into place on success.

    Readers ignore names starting with ``.tmp-``. On error the temporary file is removed,
    so a crash never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid is in the name, so a later run can tell a dead writer's leftovers from a live one's.
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.{os.getpid()}.", dir=path.parent)
    # mkstemp creates 0600; a playlist, manifest or export must be readable as the umask allows
    # (a media server running as another user), like a file written with open().
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except OSError:
        pass
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


# .tmp-<name>.<pid>.<random> (atomic_path); the older form without the pid is .tmp-<name>.<random>.
_TMP_WITH_PID = re.compile(r"^\.tmp-.+\.(\d+)\.[a-z0-9_]{8}$")
_TMP_NO_PID = re.compile(r"^\.tmp-.+\.[a-z0-9_]{8}$")
STALE_TMP_SECONDS = 6 * 3600  # a pid-less temp file this old has no writer left


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def clean_stale_temps(directory: Path) -> int:
    """Remove ``atomic_path`` temp files in ``directory`` whose writer is dead; return how many.

    Only files named the way :func:`atomic_path` names them are touched: a resumable download's
    ``.tmp-<name>.part`` is kept. A temp file of a live process (this one or another) is kept.
    """
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX) or not entry.is_file(follow_symlinks=False):
            continue
        m = _TMP_WITH_PID.match(entry.name)
        if m is not None:
            stale = not _pid_alive(int(m.group(1)))
        elif _TMP_NO_PID.match(entry.name) and not entry.name.endswith(".part"):
            try:
                stale = now - entry.stat().st_mtime > STALE_TMP_SECONDS
            except OSError:
                continue
        else:
            continue
        if stale:
            try:
                size = entry.stat().st_size
                os.unlink(entry.path)
                removed += 1
                log.info("removed %s (%d bytes) left by an interrupted run", entry.name, size)
            except OSError:
                pass
    return removed


def _umask() -> int:
    # The only portable way to read the umask is to set it; put it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MtxError(f"file not found: {path}", hint="check the path or run the stage that writes it") from None
    except json.JSONDecodeError as e:
        raise MtxError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})",
                       hint="the file is damaged: rerun the stage that wrote it with --force") from None


def iter_jsonl(source: Path | Iterable[str], where: str | None = None) -> Iterator[dict[str, Any]]:
    """JSON objects from JSON Lines (a path or an iterable of lines).

    Blank and undecodable lines are skipped: after a crash the last line of an append-only
    file may be torn. With ``where`` (a label for the log) each skipped line is warned about.
    """
    if isinstance(source, Path):
        if not source.exists():
            return
        with open(source, encoding="utf-8", errors="replace") as f:
            yield from iter_jsonl(f, where and f"{where}: {source.name}")
        return
    for n, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            if where:
                log.warning("%s line %d is not JSON; skipped", where, n)
            continue
        if isinstance(d, dict):
            yield d


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows and fsync: a committed line survives a crash; a torn one is skipped on reading."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- state dir
def default_state_dir() -> Path:
    env = os.environ.get("MTX_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("mtx"))


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(kind: str, name: str) -> str:
    """Names become path components: refuse anything that could escape the state dir."""
    if not _NAME_RE.match(name) or name in {".", ".."}:
        raise MtxError(f"invalid {kind} name {name!r}",
                       hint="use letters, digits, '.', '_' and '-' (not starting with '.' or '-')")
    return name


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def resolve(cls, root: Path | str | None = None) -> "StateDir":
        path = Path(root).expanduser() if root else default_state_dir()
        return cls(path.resolve())

    # Paths. Creating directories is left to writers.
    def dataset_dir(self, source: str) -> Path:
        return self.root / "datasets" / source

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    def manifest_path(self, name: str) -> Path:
        return self.manifests_dir / f"{check_name('manifest', name)}.json"

    def embeddings_path(self, encoder: str, manifest: str) -> Path:
        return self.root / "embeddings" / encoder / f"{manifest}.h5"

    def run_dir(self, run: str) -> Path:
        return self.root / "runs" / check_name("run", run)

    def export_dir(self, run: str) -> Path:
        return self.root / "exports" / check_name("run", run)

    def index_dir(self, name: str) -> Path:
        return self.root / "index" / check_name("index", name)

    @property
    def stages_dir(self) -> Path:
        return self.root / "stages"

    # Discovery of "the newest X", so the happy path needs no flags.
    def list_manifests(self) -> list[str]:
        return [p.stem for p in _newest_first(self.manifests_dir.glob("*.json"))]

    def newest_manifest(self) -> str:
        names = self.list_manifests()
        if not names:
            raise MtxError(f"no manifest in {self.manifests_dir}",
                           hint="run `mtx unify` first (or `mtx demo` for the whole pipeline)")
        return names[0]

    def list_runs(self, complete_only: bool = False) -> list[str]:
        base = self.root / "runs"
        dirs = [d for d in base.glob("*") if d.is_dir() and not d.name.startswith(".")]
        if complete_only:
            dirs = [d for d in dirs if (d / "best" / "model.safetensors").exists()
                    or (d / "latest" / "model.safetensors").exists()]
        return [d.name for d in sorted(dirs, key=lambda d: _mtime(d / "run.json", d), reverse=True)]

    def newest_run(self) -> str:
        runs = self.list_runs(complete_only=True)
        if not runs:
            raise MtxError(f"no trained run in {self.root / 'runs'}",
                           hint="run `mtx train --audio-encoder NAME` first")
        return runs[0]

    def list_encoders_with_embeddings(self, manifest: str) -> list[str]:
        base = self.root / "embeddings"
        return [p.parent.name for p in _newest_first(base.glob(f"*/{manifest}.h5"))]


def _mtime(path: Path, fallback: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return fallback.stat().st_mtime


def _newest_first(paths) -> list[Path]:
    files = [p for p in paths if not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


# --------------------------------------------------------------------------- stages
class Resume(str, enum.Enum):
    FRESH = "fresh"
    CONTINUE = "continue"
    FORCE = "force"

    @classmethod
    def from_flags(cls, cont: bool, force: bool) -> "Resume":
        if cont and force:
            raise MtxError("--continue and --force exclude each other",
                           hint="use --continue to resume, or --force to start over")
        return cls.CONTINUE if cont else cls.FORCE if force else cls.FRESH


class StageStatus(str, enum.Enum):
    RUNNING = "running"
    COMPLETE = "complete"


@dataclass
class StageRecord:
    stage: str
    key: str
    config: dict[str, Any]
    status: str = StageStatus.RUNNING.value
    counters: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    finished: float | None = None
    attempts: int = 1
    result: dict[str, Any] = field(default_factory=dict)


def diff_configs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k, "<unset>") != new.get(k, "<unset>"):
            out.append(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}")
    return out


class StageRun:
    """Handle on one stage execution; persists its record atomically."""

    def __init__(self, state: StateDir, record: StageRecord, resumed: bool, already_complete: bool) -> None:
        self.state = state
        self.record = record
        self.resumed = resumed
        self.already_complete = already_complete

    @property
    def path(self) -> Path:
        return stage_record_path(self.state, self.record.key)

    def save(self) -> None:
        self.record.updated = time.time()
        atomic_write_json(self.path, self.record)

    def update(self, **counters: Any) -> None:
        self.record.counters.update(counters)
        self.save()

    def complete(self, result: dict[str, Any] | None = None) -> None:
        self.record.status = StageStatus.COMPLETE.value
        self.record.finished = time.time()
        if result is not None:
            self.record.result = to_jsonable(result)
        self.save()


def stage_record_path(state: StateDir, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
    return state.stages_dir / f"{safe}.json"


def load_stage(state: StateDir, key: str) -> StageRecord | None:
    path = stage_record_path(state, key)
    if not path.exists():
        return None
    data = read_json(path)
    known = {f for f in StageRecord.__dataclass_fields__}
    return StageRecord(**{k: v for k, v in data.items() if k in known})


def begin_stage(
    state: StateDir,
    stage: str,
    key: str,
    config: dict[str, Any],
    mode: Resume,
    discard: Callable[[], None] | None = None,
    redo_changed: bool = False,
) -> StageRun:
    """Apply the resume contract and return the run handle.

    ``config`` holds everything that changes the stage's results (and only that).
    ``discard`` removes the stage's outputs; it runs on ``--force``.
    ``redo_changed``: for stages whose config holds the identity of changing inputs (new weights,
    a re-download), a fresh start over a record with a different config starts over (as
    ``--force``) instead of refusing; ``--continue`` still refuses and lists the differences.
    Callers check ``run.already_complete`` and return early without doing work.
    """
    config = to_jsonable(config)
    previous = load_stage(state, key)
    if redo_changed and mode is Resume.FRESH and previous is not None:
        differences = diff_configs(previous.config, config)
        if differences:
            log.info("%s: inputs changed since the last run (%s); starting over", stage, "; ".join(differences))
            mode = Resume.FORCE
    if mode is Resume.FORCE:
        if discard is not None:
            discard()
        previous = None
    if previous is not None:
        differences = diff_configs(previous.config, config)
        if previous.status == StageStatus.COMPLETE.value:
            if differences:
                raise MtxError(
                    f"{stage} output {key!r} already exists with a different config: " + "; ".join(differences),
                    hint="use --force to overwrite it, or choose another output name",
                )
            log.info("%s %s is already complete; nothing to do (use --force to redo it)", stage, key)
            return StageRun(state, previous, resumed=False, already_complete=True)
        if mode is Resume.FRESH:
            raise MtxError(
                f"interrupted {stage} found: rerun with --continue to resume, or --force to start over",
                hint=f"stage record: {stage_record_path(state, key)}",
            )
        if differences:
            raise MtxError(
                f"cannot continue {stage}: the config differs from the interrupted run: " + "; ".join(differences),
                hint="rerun with the original options, or use --force to start over",
            )
        previous.attempts += 1
        run = StageRun(state, previous, resumed=True, already_complete=False)
        run.save()
        log.info("resuming %s %s (attempt %d)", stage, key, previous.attempts)
        return run
    if mode is Resume.CONTINUE:
        log.info("nothing to continue for %s %s; starting fresh", stage, key)
    run = StageRun(state, StageRecord(stage=stage, key=key, config=config), resumed=False, already_complete=False)
    run.save()
    return run
