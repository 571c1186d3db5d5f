"""Downloading a data set archive, checking its checksum, and extracting it safely.

:func:`safe_extract` unpacks a zip or tar archive (plain, gzip, bz2 or xz) into a folder and
refuses, before writing anything, every member whose name is absolute (``/x``, ``C:\\x``) or has a
``..`` component, every symbolic link whose target is absolute or leads out of the folder, every
hard link to such a path, and device or FIFO members. While extracting it also checks each real
destination path (after following links already extracted), so a chain of links cannot lead out.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from mixbench.errors import UsageError

CHUNK = 1 << 20  # bytes read at a time when hashing or copying


def file_md5(path: Path) -> str:
    """The MD5 hex digest of the file at ``path``."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raise ``UsageError`` unless the file at ``path`` has MD5 ``expected``."""
    found = file_md5(path)
    if found != expected.lower():
        raise UsageError(
            f"checksum mismatch for {path}: MD5 {found}, expected {expected}; the file is "
            f"corrupted or not the official one: delete it and download it again"
        )


def fetch_url(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (written to ``dest.part`` first, renamed when complete)."""
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def download_archive(url: str, dest: Path, md5: str) -> Path:
    """``dest``, downloaded from ``url`` unless a file with MD5 ``md5`` is there already.

    A downloaded file with another checksum is deleted and ``UsageError`` is raised; so is a
    failed download (with the URL and the place to put a copy fetched by other means).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and file_md5(dest) == md5.lower():
        return dest
    try:
        fetch_url(url, dest)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise UsageError(
            f"cannot download {url} ({exc}); fetch it by other means and place it at {dest}"
        ) from exc
    try:
        verify_md5(dest, md5)
    except UsageError:
        dest.unlink(missing_ok=True)
        raise
    return dest


@dataclass(frozen=True)
class Member:
    """One archive entry as the checks see it: its name, kind and link target."""

    name: str
    kind: str  # "file", "dir", "symlink", "hardlink" or "special"
    link: str = ""


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _is_absolute(name: str) -> bool:
    return (
        PurePosixPath(name).is_absolute()
        or bool(PureWindowsPath(name).drive)
        or (name.startswith("\\"))
    )


def check_member_name(name: str, archive: Path) -> list[str]:
    """The path components of member ``name``; ``UsageError`` if absolute or with ``..``."""
    if _is_absolute(name):
        raise UsageError(f"refusing to extract {archive}: member {name!r} has an absolute path")
    parts = _parts(name)
    if ".." in parts:
        raise UsageError(f"refusing to extract {archive}: member {name!r} has a '..' component")
    return parts


def check_link(member: Member, archive: Path) -> None:
    """Refuse a link of ``member`` that is absolute or leads out of the extraction folder.

    A symbolic link's target is relative to the link's folder; a hard link's target is another
    member's name.
    """
    if _is_absolute(member.link):
        raise UsageError(
            f"refusing to extract {archive}: link {member.name!r} points to the absolute path "
            f"{member.link!r}"
        )
    if member.kind == "hardlink":
        if ".." in _parts(member.link):
            raise UsageError(
                f"refusing to extract {archive}: hard link {member.name!r} -> {member.link!r} "
                f"has a '..' component"
            )
        return
    depth = len(_parts(member.name)) - 1  # folders above the link inside the target
    for part in _parts(member.link):
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise UsageError(
                f"refusing to extract {archive}: link {member.name!r} -> {member.link!r} points "
                f"out of the extraction folder"
            )


def check_members(members: list[Member], archive: Path) -> None:
    """Check every member of an archive before anything is written (see the module doc)."""
    for member in members:
        check_member_name(member.name, archive)
        if member.kind == "special":
            raise UsageError(
                f"refusing to extract {archive}: member {member.name!r} is a device or FIFO"
            )
        if member.kind in ("symlink", "hardlink"):
            check_link(member, archive)


def _inside(path: Path, target: Path) -> bool:
    return path == target or target in path.parents


def _destination(target: Path, parts: list[str], archive: Path, name: str) -> Path:
    """Where a member goes: refused if its real folder (links followed) is out of ``target``."""
    dest = target.joinpath(*parts)
    if not _inside(Path(os.path.realpath(dest.parent)), target):
        raise UsageError(
            f"refusing to extract {archive}: member {name!r} would be written outside "
            f"{target} through a link"
        )
    return dest


def _zip_members(zf: zipfile.ZipFile) -> Iterator[tuple[zipfile.ZipInfo, Member]]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            yield info, Member(info.filename, "symlink", zf.read(info).decode("utf-8"))
        elif info.is_dir():
            yield info, Member(info.filename, "dir")
        elif mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            yield info, Member(info.filename, "special")
        else:
            yield info, Member(info.filename, "file")


def _tar_member(info: tarfile.TarInfo) -> Member:
    if info.issym():
        return Member(info.name, "symlink", info.linkname)
    if info.islnk():
        return Member(info.name, "hardlink", info.linkname)
    if info.isdir():
        return Member(info.name, "dir")
    if info.isfile():
        return Member(info.name, "file")
    return Member(info.name, "special")


def _make_symlink(dest: Path, link: str, target: Path, archive: Path, name: str) -> None:
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    os.symlink(link, dest)
    real = Path(os.path.realpath(dest))
    if not _inside(real, target):
        dest.unlink()
        raise UsageError(
            f"refusing to extract {archive}: link {name!r} resolves to {real}, outside {target}"
        )


def _write(dest: Path, source: object) -> None:
    if dest.is_symlink():
        dest.unlink()  # replace a link by the file instead of writing through it
    with open(dest, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def safe_extract(archive: Path, target: Path) -> list[Path]:
    """Extract the zip or tar ``archive`` into ``target``; returns the paths written.

    Every member is checked before anything is written (see the module doc); a refused member
    raises ``UsageError`` naming it. Files get the archive's permission bits without set-uid,
    set-gid and sticky bits.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    target = Path(os.path.realpath(target))
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, target)
    if tarfile.is_tarfile(archive):
        return _extract_tar(archive, target)
    raise UsageError(f"{archive} is neither a zip nor a tar archive; cannot extract it")


def _extract_zip(archive: Path, target: Path) -> list[Path]:
    written = []
    with zipfile.ZipFile(archive) as zf:
        entries = list(_zip_members(zf))
        check_members([m for _, m in entries], archive)
        for info, member in entries:
            parts = check_member_name(member.name, archive)
            if not parts:
                continue
            dest = _destination(target, parts, archive, member.name)
            if member.kind == "dir":
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if member.kind == "symlink":
                _make_symlink(dest, member.link, target, archive, member.name)
            else:
                with zf.open(info) as source:
                    _write(dest, source)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    dest.chmod(mode | stat.S_IRUSR | stat.S_IWUSR)
            written.append(dest)
    return written


def _extract_tar(archive: Path, target: Path) -> list[Path]:
    written = []
    with tarfile.open(archive) as tf:
        infos = tf.getmembers()
        members = [_tar_member(info) for info in infos]
        check_members(members, archive)
        for info, member in zip(infos, members):
            parts = check_member_name(member.name, archive)
            if not parts:
                continue
            dest = _destination(target, parts, archive, member.name)
            if member.kind == "dir":
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if member.kind == "symlink":
                _make_symlink(dest, member.link, target, archive, member.name)
            elif member.kind == "hardlink":
                source_path = target.joinpath(*check_member_name(member.link, archive))
                real = Path(os.path.realpath(source_path))
                if not _inside(real, target) or not real.is_file():
                    raise UsageError(
                        f"refusing to extract {archive}: hard link {member.name!r} -> "
                        f"{member.link!r} does not name a file extracted before it"
                    )
                if dest.is_symlink() or dest.exists():
                    dest.unlink()
                shutil.copyfile(real, dest)
            else:
                source = tf.extractfile(info)
                if source is None:  # pragma: no cover - regular files always have data
                    raise UsageError(f"cannot read member {member.name!r} of {archive}")
                with source:
                    _write(dest, source)
                dest.chmod((info.mode & 0o777) | stat.S_IRUSR | stat.S_IWUSR)
            written.append(dest)
    return written
