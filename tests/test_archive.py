"""safe_extract(): hostile archives are refused whole; zip (bzip2) and tar extract atomically."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from musiccli.errors import MtxError
from musiccli.sources._archive import iter_members, safe_extract


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, infos: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for ti, data in infos:
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _sym(name: str, target: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.SYMTYPE, target
    return ti


def _nothing_written(dest: Path, outside: Path | None = None) -> bool:
    inside = [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else []
    return not inside and (outside is None or not outside.exists())


def test_bzip2_zip_with_filter_and_strip(tmp_path: Path) -> None:
    arc = _zip(tmp_path / "fma_small.zip", {
        "fma_small/000/000002.mp3": b"a" * 1000, "fma_small/000/000005.mp3": b"b" * 10,
        "fma_small/checksums": b"x  000/000002.mp3\n"}, compression=zipfile.ZIP_BZIP2)
    assert sorted(iter_members(arc)) == ["fma_small/000/000002.mp3", "fma_small/000/000005.mp3",
                                         "fma_small/checksums"]
    out = safe_extract(arc, tmp_path / "x", members=lambda n: n.endswith("000002.mp3") or n.endswith("sums"))
    assert sorted(p.relative_to(tmp_path / "x").as_posix() for p in out) == [
        "fma_small/000/000002.mp3", "fma_small/checksums"]
    assert (tmp_path / "x/fma_small/000/000002.mp3").read_bytes() == b"a" * 1000
    assert not list((tmp_path / "x").rglob(".tmp-*"))
    out = safe_extract(arc, tmp_path / "y", strip_components=1)
    assert (tmp_path / "y/000/000005.mp3").read_bytes() == b"b" * 10 and len(out) == 3


def test_zip_slip_refused(tmp_path: Path) -> None:
    arc = _zip(tmp_path / "evil.zip", {"ok.txt": b"fine", "../evil": b"pwned"})
    with pytest.raises(MtxError, match="unsafe archive member '../evil'"):
        safe_extract(arc, tmp_path / "dest")
    assert _nothing_written(tmp_path / "dest", tmp_path / "evil")


def test_zip_absolute_path_refused(tmp_path: Path) -> None:
    arc = tmp_path / "abs.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr(zipfile.ZipInfo("/tmp/abs-evil"), b"x")  # ZipInfo keeps the leading slash
    assert iter_members(arc) == ["/tmp/abs-evil"]
    with pytest.raises(MtxError, match="absolute path"):
        safe_extract(arc, tmp_path / "dest")


def test_zip_symlink_escape_refused(tmp_path: Path) -> None:
    arc = tmp_path / "link.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../etc")
    with pytest.raises(MtxError, match="outside the destination"):
        safe_extract(arc, tmp_path / "dest")


def test_tar_traversal_refused(tmp_path: Path) -> None:
    arc = _tar(tmp_path / "t.tar.gz", [(tarfile.TarInfo("a/ok.mp3"), b"ok"),
                                       (tarfile.TarInfo("a/../../evil"), b"pwned")])
    with pytest.raises(MtxError, match="traversal"):
        safe_extract(arc, tmp_path / "dest")
    assert _nothing_written(tmp_path / "dest", tmp_path / "evil")


def test_tar_symlink_and_hardlink_escape_refused(tmp_path: Path) -> None:
    arc = _tar(tmp_path / "s.tar", [(tarfile.TarInfo("a/ok.mp3"), b"ok"), (_sym("a/esc", "../../outside"), None)],
               mode="w")
    with pytest.raises(MtxError, match="outside the destination"):
        safe_extract(arc, tmp_path / "dest")
    hard = tarfile.TarInfo("h")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../secret"
    arc = _tar(tmp_path / "h.tar", [(hard, None)], mode="w")
    with pytest.raises(MtxError, match="unsafe archive member"):
        safe_extract(arc, tmp_path / "dest")
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    arc = _tar(tmp_path / "d.tar", [(dev, None)], mode="w")
    with pytest.raises(MtxError, match="device"):
        safe_extract(arc, tmp_path / "dest")
    assert _nothing_written(tmp_path / "dest")


def test_tar_inside_links_extract(tmp_path: Path) -> None:
    hard = tarfile.TarInfo("d/copy.mp3")
    hard.type, hard.linkname = tarfile.LNKTYPE, "d/00/1.mp3"
    arc = _tar(tmp_path / "ok.tgz", [(tarfile.TarInfo("d/00/1.mp3"), b"audio"), (_sym("d/latest", "00/1.mp3"), None),
                                     (hard, None)])
    out = safe_extract(arc, tmp_path / "dest", strip_components=1)
    assert {p.name for p in out} == {"1.mp3", "latest", "copy.mp3"}
    assert (tmp_path / "dest/latest").read_bytes() == b"audio"
    assert (tmp_path / "dest/copy.mp3").read_bytes() == b"audio"


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(MtxError, match="neither a zip nor a tar"):
        safe_extract(tmp_path / "x.zip", tmp_path / "d")


def test_unsupported_zip_compression_is_refused_before_extracting(tmp_path):
    import zipfile

    from musiccli.errors import MtxError
    from musiccli.sources._archive import safe_extract

    archive = tmp_path / "odd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("odd.bin", "data")
    raw = bytearray(archive.read_bytes())
    # Patch the second member's method to 99 (AE-x encryption) in its central-directory entry.
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 10:cd + 12] = (99).to_bytes(2, "little")
    archive.write_bytes(bytes(raw))
    with pytest.raises(MtxError, match="compression method 99 is not supported"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists()
