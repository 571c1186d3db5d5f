"""Downloading a data set archive, checking its checksum, and extracting it safely.

:func:`safe_extract` unpacks a zip or tar archive (plain, gzip, bz2 or xz) into a folder and
refuses, before writing anything, every member whose name is absolute (``/x``, ``C:\\x``) or has a
``..`` component, every symbolic link whose target is absolute or leads out of the folder, every
hard link to such a path, device or FIFO members, and archives that expand to more than
:data:`MAX_EXPANDED_BYTES` or :data:`MAX_RATIO` times their size (:func:`check_size`). While
extracting it also checks each real destination path (after following links already extracted),
and after each symbolic link it makes, that every link made so far still resolves inside the
folder, so a chain of links, or a link replaced by another, cannot lead out.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from mixbench.errors import UsageError

CHUNK = 1 << 20  # bytes read at a time when hashing or copying
#: The most bytes an archive may expand to (50 GiB; Tiny-ImageNet's zip expands to ~0.5 GB).
MAX_EXPANDED_BYTES = 50 << 30
#: The most an archive may expand relative to its own size (Tiny-ImageNet's zip: ~2x). Image
#: archives hardly compress; a "zip bomb" of zeros expands about 1000x.
MAX_RATIO = 200.0
#: Archives expanding to no more than this (16 MiB) may have any ratio: small text files
#: compress well, and that little cannot fill a disk.
RATIO_FREE_BYTES = 16 << 20
#: The longest target of a zip's symbolic link, in bytes (Linux's PATH_MAX).
MAX_LINK = 4096


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


def _zip_members(zf: zipfile.ZipFile, archive: Path) -> Iterator[tuple[zipfile.ZipInfo, Member]]:
    for info in zf.infolist():
        # The file type is in the high bits of external_attr only for zips made on Unix (and
        # Python's ``writestr`` leaves it out: permission bits alone mean a regular file).
        kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
        if kind == stat.S_IFLNK:
            yield info, Member(info.filename, "symlink", _zip_link(zf, info, archive))
        elif info.is_dir() or kind == stat.S_IFDIR:
            yield info, Member(info.filename, "dir")
        elif kind in (0, stat.S_IFREG):
            yield info, Member(info.filename, "file")
        else:
            yield info, Member(info.filename, "special")


def _zip_link(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> str:
    """The target of a zip's symbolic link: UTF-8 text of at most :data:`MAX_LINK` bytes."""
    if info.file_size > MAX_LINK:
        raise UsageError(
            f"refusing to extract {archive}: link {info.filename!r} has a {info.file_size}-byte "
            f"target (at most {MAX_LINK})"
        )
    try:
        return zf.read(info).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(
            f"refusing to extract {archive}: the target of link {info.filename!r} is not UTF-8 text"
        ) from None


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


def expanded_size(sizes: list[tuple[Member, int]]) -> int:
    """The bytes an archive's members expand to, from each member and its declared size; a hard
    link counts as a copy of the file it names (it is extracted as one). The declared sizes
    bound what is written: zipfile and tarfile read no more than them."""
    latest: dict[str, int] = {}
    total = 0
    for member, size in sizes:
        if member.kind == "hardlink":
            size = latest.get("/".join(_parts(member.link)), 0)
        elif member.kind == "file":
            latest["/".join(_parts(member.name))] = size
        total += size
    return total


def check_size(
    archive: Path,
    packed: int,
    total: int,
    max_bytes: int = MAX_EXPANDED_BYTES,
    max_ratio: float = MAX_RATIO,
) -> None:
    """Refuse an archive of ``packed`` bytes that expands to ``total`` bytes: more than
    ``max_bytes``, or more than ``max_ratio`` times ``packed`` once past
    :data:`RATIO_FREE_BYTES` (a "zip bomb")."""
    packed = max(packed, 1)
    if total > max_bytes:
        raise UsageError(
            f"refusing to extract {archive}: it expands to {total:,} bytes, more than the limit "
            f"of {max_bytes:,}; extract it by hand if you trust it"
        )
    if total > RATIO_FREE_BYTES and total > max_ratio * packed:
        raise UsageError(
            f"refusing to extract {archive}: it expands {total / packed:,.0f} times (from "
            f"{packed:,} to {total:,} bytes), more than the limit of {max_ratio:g}; extract it by "
            f"hand if you trust it"
        )


class _Links:
    """The symbolic links extracted so far: each new one, and every earlier one again, must
    resolve inside the target (a later link can change where an earlier one leads)."""

    def __init__(self, target: Path, archive: Path) -> None:
        self.target, self.archive = target, archive
        self.made: dict[Path, str] = {}

    def make(self, dest: Path, link: str, name: str) -> None:
        if dest.is_dir() and not dest.is_symlink():
            raise UsageError(
                f"refusing to extract {self.archive}: link {name!r} would replace a folder"
            )
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        os.symlink(link, dest)
        self.made[dest] = name
        self.check()

    def forget(self, dest: Path) -> None:
        """``dest`` is no longer a link (a file replaced it)."""
        self.made.pop(dest, None)

    def check(self) -> None:
        """Remove every link that now resolves outside the target and refuse the archive."""
        out = [
            (dest, name, real)
            for dest, name in self.made.items()
            if not _inside(real := Path(os.path.realpath(dest)), self.target)
        ]
        for dest, _, _ in out:
            dest.unlink(missing_ok=True)
            self.made.pop(dest)
        if out:
            _, name, real = out[0]
            raise UsageError(
                f"refusing to extract {self.archive}: link {name!r} resolves to {real}, outside "
                f"{self.target} (through the links extracted before or after it)"
            )


def _write(dest: Path, source: object, archive: Path, name: str) -> None:
    if dest.is_dir() and not dest.is_symlink():
        raise UsageError(
            f"refusing to extract {archive}: file {name!r} would replace the folder of that name"
        )
    if dest.is_symlink():
        dest.unlink()  # replace a link by the file instead of writing through it
    with open(dest, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def safe_extract(
    archive: Path,
    target: Path,
    *,
    max_bytes: int = MAX_EXPANDED_BYTES,
    max_ratio: float = MAX_RATIO,
) -> list[Path]:
    """Extract the zip or tar ``archive`` into ``target``; returns the paths written.

    Every member is checked before anything is written (see the module doc), and so is the
    expanded size: at most ``max_bytes`` in all, and at most ``max_ratio`` times the archive's
    size (:func:`check_size`). A refused member raises ``UsageError`` naming it; so does a
    damaged archive or a member that cannot be written (a file over a folder, ...). Files get
    the archive's permission bits without set-uid, set-gid and sticky bits.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    target = Path(os.path.realpath(target))
    try:
        if zipfile.is_zipfile(archive):
            return _extract_zip(archive, target, max_bytes, max_ratio)
        if tarfile.is_tarfile(archive):
            return _extract_tar(archive, target, max_bytes, max_ratio)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise UsageError(f"{archive} is damaged ({exc}); delete it and download it again") from None
    raise UsageError(f"{archive} is neither a zip nor a tar archive; cannot extract it")


def _extract_member(member: Member, dest: Path, links: _Links, write: Callable[[], None]) -> None:
    """Write one member at ``dest``; an OS error (say a file where a folder must go) is a
    ``UsageError`` naming the member."""
    try:
        if member.kind == "dir":
            dest.mkdir(parents=True, exist_ok=True)
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        if member.kind == "symlink":
            links.make(dest, member.link, member.name)
            return
        write()
        links.forget(dest)
    except OSError as exc:
        raise UsageError(
            f"refusing to extract {links.archive}: cannot write member {member.name!r} "
            f"({exc.strerror or exc}); the archive's entries conflict"
        ) from None


def _extract_zip(archive: Path, target: Path, max_bytes: int, max_ratio: float) -> list[Path]:
    written = []
    with zipfile.ZipFile(archive) as zf:
        entries = list(_zip_members(zf, archive))
        check_members([m for _, m in entries], archive)
        total = expanded_size([(m, info.file_size) for info, m in entries])
        check_size(archive, archive.stat().st_size, total, max_bytes, max_ratio)
        links = _Links(target, archive)
        for info, member in entries:
            parts = check_member_name(member.name, archive)
            if not parts:
                continue
            dest = _destination(target, parts, archive, member.name)

            def write(info: zipfile.ZipInfo = info, dest: Path = dest, name: str = member.name):
                with zf.open(info) as source:
                    _write(dest, source, archive, name)
                mode = (info.external_attr >> 16) & 0o777 if info.create_system == 3 else 0
                if mode:
                    dest.chmod(mode | stat.S_IRUSR | stat.S_IWUSR)

            _extract_member(member, dest, links, write)
            if member.kind != "dir":
                written.append(dest)
    return written


def _extract_tar(archive: Path, target: Path, max_bytes: int, max_ratio: float) -> list[Path]:
    written = []
    with tarfile.open(archive) as tf:
        infos = tf.getmembers()
        members = [_tar_member(info) for info in infos]
        check_members(members, archive)
        total = expanded_size([(m, i.size) for i, m in zip(infos, members)])
        check_size(archive, archive.stat().st_size, total, max_bytes, max_ratio)
        links = _Links(target, archive)
        for info, member in zip(infos, members):
            parts = check_member_name(member.name, archive)
            if not parts:
                continue
            dest = _destination(target, parts, archive, member.name)

            def write(info: tarfile.TarInfo = info, member: Member = member, dest: Path = dest):
                if member.kind == "hardlink":
                    _copy_hardlink(target, archive, member, dest)
                    return
                source = tf.extractfile(info)
                if source is None:  # pragma: no cover - regular files always have data
                    raise UsageError(f"cannot read member {member.name!r} of {archive}")
                with source:
                    _write(dest, source, archive, member.name)
                dest.chmod((info.mode & 0o777) | stat.S_IRUSR | stat.S_IWUSR)

            _extract_member(member, dest, links, write)
            if member.kind != "dir":
                written.append(dest)
    return written


def _copy_hardlink(target: Path, archive: Path, member: Member, dest: Path) -> None:
    """A hard link, extracted as a copy of the file extracted before it that it names."""
    source_path = target.joinpath(*check_member_name(member.link, archive))
    real = Path(os.path.realpath(source_path))
    if not _inside(real, target) or not real.is_file():
        raise UsageError(
            f"refusing to extract {archive}: hard link {member.name!r} -> "
            f"{member.link!r} does not name a file extracted before it"
        )
    if dest.is_dir() and not dest.is_symlink():
        raise UsageError(
            f"refusing to extract {archive}: hard link {member.name!r} would replace a folder"
        )
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    shutil.copyfile(real, dest)
