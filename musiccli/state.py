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

The :class:`Stage` object owns key, config, output paths, discard and the completion
policy. Outcomes: ``complete``; ``complete-with-failures`` (nothing pending, some items
failed and listed; downstream stages use the output); ``partial`` (interrupted, or
``running`` with no process holding the lock); ``failed`` (a systemic error or too many
failed items; never complete, and the next attempt simply tries again). While a stage
runs, it holds ``fcntl.flock`` on ``stages/<key>.lock``: a second process is refused with
"<stage> <key> is running (pid N)". Stage functions are wrapped in :func:`stage_function`,
which records a raising stage as failed (partial on Ctrl-C) and releases its lock.
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
from .redact import redact_obj, redact_text

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


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh temp folder in ``parent`` (``mkdtemp``), with the mode a plain ``mkdir`` would give.

    ``mkdtemp`` creates 0700 whatever the umask; an export renamed into place from it would stay
    unreadable to a consumer running as another user (an AudioMuse-AI container).
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


def honour_umask(root: Path) -> None:
    """Give every folder and file under ``root`` (and ``root``) the mode the umask allows.

    Libraries write with modes of their own (safetensors: 0600); a folder about to be published
    (an export) gets folders ``0777 & ~umask`` and files ``0666 & ~umask``, like ``mkdir``/``open``.
    """
    mask = _umask()
    root = Path(root)
    for d, _, files in os.walk(root):
        os.chmod(d, 0o777 & ~mask)
        for name in files:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                executable = os.stat(p).st_mode & 0o100
                os.chmod(p, (0o777 if executable else 0o666) & ~mask)


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


DAMAGED_HINT = "the file is damaged: rerun the stage that wrote it with --force"


class DamagedFileError(MtxError):
    """A file exists but cannot be decoded (truncated, overwritten, not UTF-8): one line naming it."""

    def __init__(self, path: Path | str, what: str, hint: str | None = None) -> None:
        super().__init__(f"{path} is damaged: {what}", hint=hint or DAMAGED_HINT)
        self.path = Path(path)
        self.what = what

    def __reduce__(self):   # raised in a worker process, it must unpickle in the parent
        return (type(self), (self.path, self.what, self.hint))


def read_json(path: Path, hint: str | None = None) -> Any:
    """JSON from ``path``; a missing or damaged file is one :class:`MtxError` line naming it.

    ``hint`` says what to do about a damaged file (default: rerun the stage that wrote it with --force).
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MtxError(f"file not found: {path}", hint="check the path or run the stage that writes it") from None
    except IsADirectoryError:
        raise MtxError(f"{path} is a folder, not a JSON file", hint="check the path") from None
    except json.JSONDecodeError as e:
        raise DamagedFileError(path, f"not valid JSON ({e.msg} at line {e.lineno})", hint) from None
    except UnicodeDecodeError as e:
        raise DamagedFileError(path, f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
                               hint) from None


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
# A name becomes part of file names that add to it (``.tmp-<name>.json.<pid>.<random>``, an index named
# ``<run>--<manifest>--milvus``, a stage record ``<stage>_<key>.json``); 255 bytes is the usual limit.
MAX_NAME_LENGTH = 100
# Names built from other names get room for them: a default run is <encoder>-<manifest>, a default
# index <run>--<manifest>--<backend>.
_MAX_LENGTH_OF = {"run": MAX_NAME_LENGTH + 28, "index": 2 * MAX_NAME_LENGTH + 40}


def check_name(kind: str, name: str) -> str:
    """Names become path components: refuse anything that could escape the state dir or be too long."""
    if not _NAME_RE.match(name) or name in {".", ".."}:
        raise MtxError(f"invalid {kind} name {name!r}",
                       hint="use letters, digits, '.', '_' and '-' (not starting with '.' or '-')")
    limit = _MAX_LENGTH_OF.get(kind, MAX_NAME_LENGTH)
    if len(name) > limit:
        raise MtxError(f"{kind} name is {len(name)} characters long ({name[:24]}...)",
                       hint=f"use at most {limit} characters")
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
    """A stage record's status. ``running`` with no process holding the lock reads as partial."""

    RUNNING = "running"
    PARTIAL = "partial"                                  # interrupted: --continue resumes it
    COMPLETE = "complete"
    COMPLETE_WITH_FAILURES = "complete-with-failures"    # nothing pending, some items failed (listed)
    FAILED = "failed"                                    # systemic error or too many failures


DONE = (StageStatus.COMPLETE.value, StageStatus.COMPLETE_WITH_FAILURES.value)


def is_done(status: str) -> bool:
    """Downstream stages use the output of a stage that is complete, with or without failed items."""
    return status in DONE


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
    failed_items: int = 0
    error: str | None = None
    pid: int | None = None


def diff_configs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k, "<unset>") != new.get(k, "<unset>"):
            out.append(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}")
    return out


# --------------------------------------------------------------------------- completion policy
DEFAULT_MAX_FAILURE_RATE = 0.5
SAME_ERROR_ITEMS = 5

# Failures that say the environment is broken, not the item: no point trying the next one.
_SYSTEMIC_PATTERNS = (
    re.compile(r"^(ImportError|ModuleNotFoundError)\b"),
    re.compile(r"undefined symbol|cannot open shared object|image not found|DLL load failed", re.I),
    re.compile(r"^(OutOfMemoryError|MemoryError)\b"),
    re.compile(r"CUDA out of memory|CUDA error|out of memory", re.I),
)


class SystemicError(MtxError):
    """The stage cannot succeed on any item; it is recorded failed and the CLI exits 1."""


# A full disk is systemic too: every next item would fail the same way. Libraries word it their own
# way (h5py's "errno = 28", safetensors' "code: 28, kind: StorageFull"); libsndfile says only
# "System error", which is why an item failure is also checked against the output's free space.
_NO_SPACE = re.compile(r"No space left on device|\bENOSPC\b|errno = 28\b|\[Errno 28\]|code: 28\b|StorageFull|"
                       r"Disk quota exceeded|\[Errno 122\]", re.I)
NO_SPACE_HINT = "free some space, then rerun the same command with --continue: committed work is kept"
LOW_SPACE_BYTES = 1 << 20   # below this much free space, a failed write is a full disk whatever it says


def is_no_space(reason: str) -> bool:
    """Whether a failure reason or exception text says the disk (or the user's quota) is full."""
    return bool(_NO_SPACE.search(reason))


def exception_is_no_space(e: BaseException) -> bool:
    """Whether ``e`` or anything in its chain is a full disk (ENOSPC, EDQUOT, or a library's words for it)."""
    import errno as errno_mod

    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "errno", None) in (errno_mod.ENOSPC, errno_mod.EDQUOT) or is_no_space(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def _free_bytes(path: Path) -> int | None:
    import shutil

    p = Path(path)
    while not p.exists() and p != p.parent:   # an output that is not there yet: its nearest folder
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def out_of_space(path: Path | None) -> bool:
    """Whether the file system holding ``path`` has (almost) no space left for this user."""
    if path is None:
        return False
    free = _free_bytes(path)
    return free is not None and free < LOW_SPACE_BYTES


def no_space_error(where: Path | str, stage: str | None = None) -> "SystemicError":
    """The one no-space line every stage and the CLI print: ``no space left on device at WHERE``."""
    return SystemicError(f"no space left on device at {where}" + (f" ({stage} stopped)" if stage else ""),
                         hint=NO_SPACE_HINT)


def is_systemic(reason: str) -> bool:
    """Whether one item's failure reason (``"Type: message"`` or a message) is a systemic error."""
    return is_no_space(reason) or any(p.search(reason) for p in _SYSTEMIC_PATTERNS)


def systemic_exception(e: BaseException) -> bool:
    """Exceptions that mean the library or the device is broken (a stage raises them through)."""
    if isinstance(e, (ImportError, MemoryError)):
        return True
    return type(e).__name__ == "OutOfMemoryError" or is_systemic(f"{type(e).__name__}: {e}")


def failure_signature(reason: str) -> str:
    """A failure reason with its item-specific parts (paths, quoted names, numbers) masked."""
    sig = re.sub(r"'[^']*'|\"[^\"]*\"", "<name>", reason)
    sig = re.sub(r"\S*[/\\]\S*", "<path>", sig)
    return re.sub(r"\d+", "N", sig).strip()


@dataclass(frozen=True)
class FailurePolicy:
    """When item failures make a whole stage fail instead of complete-with-failures.

    - a systemic failure (a library that cannot load, out of memory) aborts at once;
    - the same failure (up to paths and numbers) on each of the first ``same_error_items``
      items aborts: nothing after them would fare differently;
    - at the end, a failure rate above ``max_failure_rate`` fails the stage.
    """

    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE
    same_error_items: int = SAME_ERROR_ITEMS

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise MtxError(f"--max-failure-rate must be between 0 and 1 (got {self.max_failure_rate})",
                           hint="e.g. --max-failure-rate 0.1 fails the stage when more than 10% of items fail")


class FailureTracker:
    """Counts item outcomes in processing order and raises :class:`SystemicError` per the policy."""

    def __init__(self, stage: str, policy: FailurePolicy | None = None, where: Path | None = None) -> None:
        self.stage = stage
        self.policy = policy or FailurePolicy()
        self.where = where   # the output whose free space decides whether a failure is a full disk
        self.ok = 0
        self.failed = 0
        self._first: list[str] = []     # signatures of the first items, while all of them failed
        self._streak_broken = False

    def success(self, n: int = 1) -> None:
        self.ok += n
        if n:
            self._streak_broken = True

    def failure(self, item: str, reason: str) -> None:
        self.failed += 1
        self._check_systemic(item, reason)
        if self._streak_broken:
            return
        self._first.append(failure_signature(reason))
        n = self.policy.same_error_items
        if len(self._first) >= n and len(set(self._first[:n])) == 1:
            raise SystemicError(f"{self.stage} stopped: the first {n} items all failed with the same error: "
                                f"{reason}", hint="this is not a problem of single items; fix it and rerun")
        if len(self._first) >= n:
            self._streak_broken = True

    def _check_systemic(self, item: str, reason: str) -> None:
        where = self.where if self.where is not None else _current_output()
        if is_no_space(reason) or out_of_space(where):
            raise no_space_error(where or _path_in(reason) or "the output folder", self.stage)
        if is_systemic(reason):
            raise SystemicError(f"{self.stage} stopped: {reason} (item {item})",
                                hint="fix the installation or the device; nothing was recorded as complete")

    def check_rate(self, total: int | None = None, failures: list[tuple[str, str]] | None = None,
                   listed_in: Path | None = None) -> None:
        """Raise if the failure rate over ``total`` items (default: those seen) is above the policy's.

        ``failures`` ((item, reason) pairs) are listed in the error, the first few of them, so the
        user sees what failed without opening ``listed_in`` (the ledger or record that holds them all).
        """
        total = self.ok + self.failed if total is None else total
        if total and self.failed / total > self.policy.max_failure_rate:
            raise SystemicError(
                f"{self.stage} failed: {self.failed} of {total} items failed "
                f"({self.failed / total:.0%} > --max-failure-rate {self.policy.max_failure_rate:.0%})"
                + list_failures(failures or [], listed_in),
                hint=("fix the failures listed" if failures else "see the failures in the log above")
                + ", or raise --max-failure-rate to accept them")


LISTED_FAILURES = 5


def list_failures(failures: list[tuple[str, str]], listed_in: Path | None = None) -> str:
    """``: a (reason); b (reason); ... and N more (all in FILE)`` for an error line; '' when none."""
    if not failures:
        return ""
    shown = "; ".join(f"{item} ({reason})" for item, reason in failures[:LISTED_FAILURES])
    more = len(failures) - LISTED_FAILURES
    tail = f"; and {more} more" if more > 0 else ""
    where = f" (all in {listed_in})" if listed_in is not None and more > 0 else ""
    return f": {shown}{tail}{where}"


def _path_in(reason: str) -> str | None:
    m = re.search(r"'(/[^']+)'", reason)
    return m.group(1) if m else None


class RetryTracker(FailureTracker):
    """Outcomes of items that failed before and are tried again (``--retry-failed``).

    Some of them are expected to fail again the same way (a file nobody fixed), so the same-error
    rule does not apply; a systemic failure (a library that cannot load) still aborts at once.
    """

    def failure(self, item: str, reason: str) -> None:
        self.failed += 1
        self._check_systemic(item, reason)


# --------------------------------------------------------------------------- one process per output
_MAX_RECORD_STEM = 160   # + ".json", and the atomic writer's ".tmp-" prefix and ".<pid>.<random>" suffix


def stage_record_path(state: StateDir, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
    if len(safe) > _MAX_RECORD_STEM:   # a key of long names: keep it readable and unique, but short enough
        safe = f"{safe[:_MAX_RECORD_STEM - 17]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return state.stages_dir / f"{safe}.json"


def stage_lock_path(state: StateDir, key: str) -> Path:
    return stage_record_path(state, key).with_suffix(".lock")


# Locks this process holds: path -> [fd, holders]. A stage that calls another in-process (the demo,
# a shard that marks the unsharded stage complete) shares the lock; another process is refused.
_HELD: dict[Path, list[int]] = {}


def _acquire_lock(path: Path, stage: str, key: str) -> None:
    import fcntl

    if path in _HELD:
        _HELD[path][1] += 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise MtxError(f"{stage} {key} is running (pid {holder})",
                       hint="wait for it to finish, or stop that process first; one process per output") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[path] = [fd, 1]


def _release_lock(path: Path) -> None:
    held = _HELD.get(path)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[path]
        os.close(held[0])   # closing the descriptor releases the flock


def lock_holder(state: StateDir, key: str) -> int | None:
    """The pid of another process running this stage output, or None (a probe: takes no lock)."""
    import fcntl

    path = stage_lock_path(state, key)
    if path in _HELD or not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


# --------------------------------------------------------------------------- the stage object
class StageRun:
    """Handle on one stage execution; persists its record atomically and holds the output's lock."""

    def __init__(self, state: StateDir, record: StageRecord, resumed: bool, already_complete: bool,
                 policy: FailurePolicy | None = None) -> None:
        self.state = state
        self.record = record
        self.resumed = resumed
        self.already_complete = already_complete
        self.policy = policy or FailurePolicy()
        self.outputs: dict[str, Path] = {}
        self._lock: Path | None = None

    @property
    def path(self) -> Path:
        return stage_record_path(self.state, self.record.key)

    @property
    def status(self) -> str:
        return self.record.status

    def save(self) -> None:
        self.record.updated = time.time()
        # Messages and results may quote a URL (a mirror with ?token=, a user:pass@ server): never at rest.
        atomic_write_json(self.path, redact_obj(to_jsonable(self.record)))

    def update(self, **counters: Any) -> None:
        self.record.counters.update(counters)
        self.save()

    def complete(self, result: dict[str, Any] | None = None, failed: int = 0) -> str:
        """Record the stage as done: ``complete``, or ``complete-with-failures`` when items failed."""
        status = StageStatus.COMPLETE_WITH_FAILURES if failed else StageStatus.COMPLETE
        self.record.status = status.value
        self.record.failed_items = int(failed)
        self.record.error = None
        self.record.finished = time.time()
        if result is not None:
            self.record.result = to_jsonable(result)
        self.save()
        return status.value

    def finish(self, result: dict[str, Any] | None, ok: int, failed: int, pending: int = 0,
               failures: list[tuple[str, str]] | None = None, listed_in: Path | None = None) -> str:
        """Apply the completion policy to a finished pass over the items and record the outcome.

        Pending items leave the stage partial (``--continue`` picks them up); a failure rate above
        the policy's records it failed and raises :class:`SystemicError`; otherwise it is complete,
        with failures when some items failed.
        """
        if pending:
            self.mark(StageStatus.PARTIAL)
            if result is not None:
                self.record.result = to_jsonable(result)
                self.save()
            return StageStatus.PARTIAL.value
        if result is not None:
            self.record.result = to_jsonable(result)
        self.check_failures(ok, failed, failures, listed_in)
        return self.complete(result, failed=failed)

    def check_failures(self, ok: int, failed: int, failures: list[tuple[str, str]] | None = None,
                       listed_in: Path | None = None) -> None:
        """Record the stage failed and raise :class:`SystemicError` if too many items failed
        (the error lists the first of ``failures``)."""
        tracker = FailureTracker(self.record.stage, self.policy)
        tracker.ok, tracker.failed = ok, failed
        try:
            tracker.check_rate(failures=failures, listed_in=listed_in)
        except SystemicError as e:
            self.mark(StageStatus.FAILED, e.message)
            raise

    def mark(self, status: StageStatus, error: str | None = None) -> None:
        self.record.status = status.value
        if error is not None:
            self.record.error = error
        self.record.finished = time.time() if status is StageStatus.FAILED else self.record.finished
        self.save()

    @property
    def holds_lock(self) -> bool:
        return self._lock is not None

    def close(self) -> None:
        """Release the output's lock (the record stays as it is)."""
        if self._lock is not None:
            _release_lock(self._lock)
            self._lock = None

    def __del__(self) -> None:   # a handle dropped without close() must not keep its output locked
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


DAMAGED_RECORD_HINT = "rerun the same command with --force: the stage starts over and writes a new record"


def load_stage(state: StateDir, key: str) -> StageRecord | None:
    path = stage_record_path(state, key)
    if not path.exists():
        return None
    data = read_json(path, hint=DAMAGED_RECORD_HINT)
    if not isinstance(data, dict):
        raise DamagedFileError(path, "not a stage record", hint=DAMAGED_RECORD_HINT)
    known = {f for f in StageRecord.__dataclass_fields__}
    return StageRecord(**{k: v for k, v in data.items() if k in known})


@dataclass
class Stage:
    """One stage output: its key, result-affecting config, output paths, discard and completion policy.

    ``key`` is the stage name plus the parts that identify the output (``embed:dsp:synth``);
    ``outputs`` are the paths derived from the same parts by whoever builds the Stage, so a path
    and its key cannot disagree. ``discard`` removes the outputs (default: delete ``outputs``).
    ``begin`` takes the output's lock (one process per output) and applies the resume contract;
    the stage function then commits units, and ``finish``/``complete`` record the outcome.
    """

    state: StateDir
    name: str
    key: str
    config: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)
    discard: Callable[[], None] | None = None
    redo_changed: bool = False
    policy: FailurePolicy = field(default_factory=FailurePolicy)
    # For stages whose output name is an option: how to pick another one ("choose another manifest
    # name with --name"), offered beside --force when a complete output with another config is in the way.
    rename_hint: str | None = None

    @property
    def record_path(self) -> Path:
        return stage_record_path(self.state, self.key)

    @property
    def lock_path(self) -> Path:
        return stage_lock_path(self.state, self.key)

    def discard_outputs(self) -> None:
        if self.discard is not None:
            self.discard()
            return
        import shutil

        for path in self.outputs.values():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def clean_temps(self) -> int:
        """Remove the temp files that dead writers left in this stage's outputs; return how many.

        Every stage gets this through :meth:`begin`: a folder output is searched all the way down
        (a dataset's teacher stores, an index's vectors), a file output in its folder and in its
        hidden work folders (``.<stem>.parts``). The output's lock is held, so no other process
        writes there for this stage, and a live writer's temp file (its pid is in the name) is kept.
        """
        folders: list[Path] = [self.state.stages_dir]
        for path in self.outputs.values():
            path = Path(path)
            if path.is_dir():
                folders += [Path(d) for d, _, _ in os.walk(path)]
            else:
                folders.append(path.parent)
                if path.parent.is_dir():
                    folders += [path.parent / d.name for d in os.scandir(path.parent)
                                if d.name.startswith(f".{path.stem}.") and d.is_dir(follow_symlinks=False)]
        return sum(clean_stale_temps(d) for d in dict.fromkeys(folders))

    def begin(self, mode: Resume) -> StageRun:
        _acquire_lock(self.lock_path, self.name, self.key)
        try:
            run = self._apply_contract(mode)
            if not run.already_complete:
                self.clean_temps()
        except BaseException:
            _release_lock(self.lock_path)
            raise
        run.policy = self.policy
        run.outputs = dict(self.outputs)
        run._lock = self.lock_path
        _current_scope_add(run)
        return run

    def _apply_contract(self, mode: Resume) -> StageRun:
        stage, key = self.name, self.key
        config = redact_obj(to_jsonable(self.config))   # as saved: a URL's credentials never change results
        try:
            previous = load_stage(self.state, key)
        except DamagedFileError as e:
            if mode is not Resume.FORCE:
                raise
            log.warning("%s; starting over", e.message)   # --force discards the outputs the record described
            previous = None
        if previous is not None and previous.status == StageStatus.FAILED.value and mode is Resume.FRESH:
            # A failed attempt is not an interruption: the next run simply tries again, keeping
            # committed units when nothing changed and starting over when the config did.
            if diff_configs(previous.config, config):
                log.info("%s: the last attempt failed and the config changed; starting over", stage)
                mode = Resume.FORCE
            else:
                log.info("%s: the last attempt failed (%s); trying again", stage, previous.error or "unknown error")
                mode = Resume.CONTINUE
        if self.redo_changed and mode is Resume.FRESH and previous is not None:
            differences = diff_configs(previous.config, config)
            if differences:
                log.info("%s: inputs changed since the last run (%s); starting over", stage, "; ".join(differences))
                mode = Resume.FORCE
        if mode is Resume.FORCE:
            self.discard_outputs()
            previous = None
        if previous is not None:
            differences = diff_configs(previous.config, config)
            done = is_done(previous.status)
            if done and differences:
                raise MtxError(
                    f"{stage} output {key!r} already exists with a different config: " + "; ".join(differences),
                    hint="use --force to overwrite it" + (f", or {self.rename_hint}" if self.rename_hint else ""),
                )
            if previous.status == StageStatus.COMPLETE.value or (done and mode is Resume.FRESH):
                if previous.failed_items:
                    log.info("%s %s is complete with %d failed item(s); nothing to do "
                             "(--retry-failed or --continue retries them, --force redoes all)",
                             stage, key, previous.failed_items)
                else:
                    log.info("%s %s is already complete; nothing to do (use --force to redo it)", stage, key)
                return StageRun(self.state, previous, resumed=False, already_complete=True)
            if mode is Resume.FRESH:
                raise MtxError(
                    f"interrupted {stage} found: rerun with --continue to resume, or --force to start over",
                    hint=f"stage record: {stage_record_path(self.state, key)}",
                )
            if differences:
                raise MtxError(
                    f"cannot continue {stage}: the config differs from the interrupted run: " + "; ".join(differences),
                    hint="rerun with the original options, or use --force to start over",
                )
            previous.attempts += 1
            previous.status = StageStatus.RUNNING.value
            previous.error = None
            previous.pid = os.getpid()
            run = StageRun(self.state, previous, resumed=True, already_complete=False)
            run.save()
            log.info("resuming %s %s (attempt %d)", stage, key, previous.attempts)
            return run
        if mode is Resume.CONTINUE:
            log.info("nothing to continue for %s %s; starting fresh", stage, key)
        record = StageRecord(stage=stage, key=key, config=config, pid=os.getpid())
        run = StageRun(self.state, record, resumed=False, already_complete=False)
        run.save()
        return run


def begin_stage(
    state: StateDir,
    stage: str,
    key: str,
    config: dict[str, Any],
    mode: Resume,
    discard: Callable[[], None] | None = None,
    redo_changed: bool = False,
    outputs: dict[str, Path] | None = None,
    policy: FailurePolicy | None = None,
    rename_hint: str | None = None,
) -> StageRun:
    """Build the :class:`Stage` and begin it: lock the output, apply the resume contract.

    ``config`` holds everything that changes the stage's results (and only that).
    ``discard`` removes the stage's outputs; it runs on ``--force``.
    ``redo_changed``: for stages whose config holds the identity of changing inputs (new weights,
    a re-download), a fresh start over a record with a different config starts over (as
    ``--force``) instead of refusing; ``--continue`` still refuses and lists the differences.
    ``rename_hint``: see :class:`Stage`.
    Callers check ``run.already_complete`` and return early without doing work.
    """
    return Stage(state, stage, key, config, outputs=dict(outputs or {}), discard=discard,
                 redo_changed=redo_changed, policy=policy or FailurePolicy(), rename_hint=rename_hint).begin(mode)


# --------------------------------------------------------------------------- stage scope
# The stage runs begun inside one ``@stage_function`` call. When the function raises, each run
# that is still "running" is recorded: partial on Ctrl-C, failed on anything else (so the next
# attempt is not refused as interrupted); its lock is released either way.
_scopes: list[list[StageRun]] = []


def _current_scope_add(run: StageRun) -> None:
    if _scopes:
        _scopes[-1].append(run)


def _current_output() -> Path | None:
    """The first output of the innermost stage running in this process (for the free-space check)."""
    for scope in reversed(_scopes):
        for run in reversed(scope):
            if run.outputs:
                return next(iter(run.outputs.values()))
    return None


def _stage_error(e: BaseException, scope: list[StageRun], fn_name: str) -> BaseException | None:
    """The :class:`SystemicError` a stage's unexpected exception becomes (None: raise it as it is)."""
    if isinstance(e, MtxError) or not isinstance(e, Exception):
        return None
    name = scope[0].record.stage if scope else fn_name.removeprefix("run_")
    if exception_is_no_space(e):
        where = next((getattr(x, "filename", None) for x in _chain(e) if getattr(x, "filename", None)), None)
        return no_space_error(where or _current_output() or "the output folder", name)
    if systemic_exception(e):
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return SystemicError(f"{name} stopped: {type(e).__name__}: {first}",
                             hint="a library cannot load or the device ran out of memory; "
                                  "fix that (e.g. a smaller --batch-size) and rerun")
    return None


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def stage_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a stage's core function: a raising stage is recorded failed (partial on Ctrl-C), a full
    disk or a broken library becomes one :class:`SystemicError` line, and its locks are released."""
    import functools

    from .errors import Interrupted

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _scopes.append([])
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            interrupted = isinstance(e, (Interrupted, KeyboardInterrupt))
            converted = _stage_error(e, _scopes[-1], fn.__name__)
            for run in _scopes[-1]:
                # Only the lock holder writes the record (other torchrun ranks follow rank 0), and a
                # record the stage removed itself (a setup that failed before any work) stays removed.
                if run.record.status == StageStatus.RUNNING.value and not run.already_complete \
                        and run.holds_lock and run.path.exists():
                    if interrupted:
                        run.mark(StageStatus.PARTIAL)
                    else:
                        shown = converted if converted is not None else e
                        message = shown.message if isinstance(shown, MtxError) else f"{type(e).__name__}: {e}"
                        try:
                            run.mark(StageStatus.FAILED, redact_text(message))
                        except OSError:   # the disk that is full cannot take the record either
                            log.debug("could not record %s as failed", run.record.key, exc_info=True)
            if converted is not None:
                raise converted from e
            raise
        finally:
            for run in _scopes.pop():
                run.close()

    return wrapper
