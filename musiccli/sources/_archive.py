"""Safe, atomic extraction of zip and tar archives.

Every member is checked before anything is written: absolute names, ``..``
components, links that point outside ``dest`` and device files make the whole
archive refused, so a hostile archive extracts nothing. Each file is written to a
temporary name in its directory and ``os.replace``d, so an interrupted extraction
never leaves a truncated file under a final name.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import MtxError
from ..state import TMP_PREFIX

log = logging.getLogger(__name__)


@dataclass
class _Member:
    name: str                 # name inside the archive
    rel: str                  # relative output path after strip_components
    kind: str                 # "file", "dir", "symlink"
    size: int = 0
    link: str | None = None   # symlink target (as stored)
    handle: object = None     # ZipInfo or TarInfo


def _archive_kind(archive: Path) -> str:
    if not archive.exists():
        raise MtxError(f"archive not found: {archive}", hint="download it again")
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise MtxError(f"{archive.name} is neither a zip nor a tar archive",
                   hint="the download is corrupt: delete it and download it again")


def iter_members(archive: Path) -> list[str]:
    """The names of all members (files and directories) in a zip or tar archive."""
    archive = Path(archive)
    try:
        if _archive_kind(archive) == "zip":
            with zipfile.ZipFile(archive) as zf:
                return zf.namelist()
        with tarfile.open(archive, "r:*") as tf:
            return tf.getnames()
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise MtxError(f"cannot read archive {archive.name}: {e}",
                       hint="the download is corrupt: delete it and download it again") from None


def _unsafe(name: str, why: str) -> MtxError:
    return MtxError(f"unsafe archive member {name!r}: {why}", hint="refusing to extract this archive")


def _relative(name: str, strip_components: int) -> str | None:
    """Validate a member name and return its output path relative to dest (None: stripped away)."""
    if "\x00" in name:
        raise _unsafe(name, "NUL byte in name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise _unsafe(name, "absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(name, "path traversal ('..')")
    parts = parts[strip_components:]
    return "/".join(parts) if parts else None


def _check_link(name: str, rel: str, target: str, hard: bool) -> None:
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise _unsafe(name, f"link to absolute path {target!r}")
    # Symlinks resolve relative to their own directory; tar hardlinks relative to the archive root.
    base = "" if hard else posixpath.dirname(rel)
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    if resolved == ".." or resolved.startswith("../"):
        raise _unsafe(name, f"link points outside the destination ({target!r})")


# What Python's zipfile can decompress (FMA's zips are bzip2).
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}


def _zip_members(zf: zipfile.ZipFile, strip: int) -> list[_Member]:
    out = []
    for info in zf.infolist():
        if info.compress_type not in _ZIP_METHODS:
            # Checked up front, like unsafe members: nothing is extracted from an archive we cannot read whole.
            raise MtxError(f"{info.filename}: zip compression method {info.compress_type} is not supported",
                           hint=f"re-pack the archive with one of: {', '.join(_ZIP_METHODS.values())}")
        rel = _relative(info.filename, strip)
        mode = info.external_attr >> 16
        if info.create_system == 3 and mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                                                 or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise _unsafe(info.filename, "device or special file")
        if rel is None:
            continue
        if info.create_system == 3 and stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            _check_link(info.filename, rel, target, hard=False)
            out.append(_Member(info.filename, rel, "symlink", link=target, handle=info))
        elif info.is_dir():
            out.append(_Member(info.filename, rel, "dir", handle=info))
        else:
            out.append(_Member(info.filename, rel, "file", size=info.file_size, handle=info))
    return out


def _tar_members(tf: tarfile.TarFile, strip: int) -> list[_Member]:
    out = []
    for ti in tf.getmembers():
        if ti.isdev() or not (ti.isfile() or ti.isdir() or ti.issym() or ti.islnk()):
            raise _unsafe(ti.name, "device or special file")
        rel = _relative(ti.name, strip)
        if rel is None:
            continue
        if ti.issym():
            _check_link(ti.name, rel, ti.linkname, hard=False)
            out.append(_Member(ti.name, rel, "symlink", link=ti.linkname, handle=ti))
        elif ti.islnk():
            target_rel = _relative(ti.linkname, strip)
            if target_rel is None:
                raise _unsafe(ti.name, f"hard link to a stripped member {ti.linkname!r}")
            _check_link(ti.name, rel, ti.linkname, hard=True)
            # tarfile.extractfile follows a hard link to its target's data: copy it as a file.
            out.append(_Member(ti.name, rel, "file", size=ti.size, handle=ti))
        elif ti.isdir():
            out.append(_Member(ti.name, rel, "dir", handle=ti))
        else:
            out.append(_Member(ti.name, rel, "file", size=ti.size, handle=ti))
    return out


def safe_extract(
    archive: Path,
    dest: Path,
    members: Callable[[str], bool] | None = None,
    strip_components: int = 0,
    *,
    skip_existing: bool = False,
) -> list[Path]:
    """Extract ``archive`` (zip, incl. bzip2 members, or tar/tar.gz/tgz) into ``dest``.

    ``members`` filters by the member's name inside the archive. With
    ``skip_existing`` a file already present with the member's size is kept (for
    resuming a long extraction). Returns the paths of the extracted files (and links).
    """
    archive, dest = Path(archive), Path(dest)
    kind = _archive_kind(archive)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                todo = _zip_members(zf, strip_components)
                return _extract(todo, root, members, skip_existing, lambda m: zf.open(m.handle))
        with tarfile.open(archive, "r:*") as tf:
            todo = _tar_members(tf, strip_components)
            return _extract(todo, root, members, skip_existing, lambda m: tf.extractfile(m.handle))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise MtxError(f"cannot extract {archive.name}: {e}",
                       hint="the archive is corrupt or truncated: delete it and download it again") from None


def _extract(todo: list[_Member], root: Path, members: Callable[[str], bool] | None, skip_existing: bool,
             open_member: Callable[[_Member], object]) -> list[Path]:
    chosen = [m for m in todo if members is None or members(m.name)]
    # Refuse before writing anything: also catch paths that escape through an existing symlink in dest.
    for m in chosen:
        target = (root / m.rel).resolve() if m.kind != "symlink" else (root / m.rel).parent.resolve()
        if target != root and root not in target.parents:
            raise _unsafe(m.name, "resolves outside the destination")
    out: list[Path] = []
    for m in chosen:
        path = root / PurePosixPath(m.rel)
        if m.kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if m.kind == "symlink":
            if path.is_symlink() or path.exists():
                path.unlink()
            os.symlink(m.link, path)
            out.append(path)
            continue
        if skip_existing and path.is_file() and path.stat().st_size == m.size:
            out.append(path)
            continue
        src = open_member(m)
        if src is None:
            raise _unsafe(m.name, "not a regular file")
        write_member(src, path)
        out.append(path)
    return out


def write_member(src, path: Path) -> None:  # noqa: ANN001
    """Copy an open archive member to ``path`` through a temporary sibling; closes ``src``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.part"
    try:
        with src, open(tmp, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
