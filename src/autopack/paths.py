"""Path rules, written once: what a workspace-relative path may be and where it may lead.

Run files (scope paths, deliverables, context) and the Builder's answers (files it writes
or deletes) obey the same rules, so a path a run file may name is exactly a path an
answer may write:

* :func:`normalize` refuses anything that could leave the workspace by its spelling:
  absolute paths, drive letters, ``..``, ``.git``, backslashes, NUL bytes and other control
  characters, lone surrogates (not Unicode: no file name, row or answer can hold one),
  empty names (and names longer than the file system takes);
* :func:`inside` compares component-wise (``src/a`` is not inside ``src/ab``);
* :func:`resolved_inside` checks the path *as the file system resolves it*: a symlink
  inside the workspace (``src/link -> ../secret``) cannot carry a write out of the scope
  it was checked against, because the scope is checked on the resolved path; and
  :func:`resolved` keeps reads (the Builder's context) inside the workspace the same way.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from autopack.bounds import lone_surrogate
from autopack.errors import ConfigError

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile("[\x01-\x1f\x7f-\x9f]")
"""A file name holding one (``ESC]0;…``, ``ESC[2K``) reached the operator's terminal
through ``run phase`` and the progress lines, retitling it or erasing what it showed."""
_HFS_IGNORABLE = re.compile("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")
"""Code points HFS+ ignores in names, which git therefore ignores in ``.git`` too."""


def _names_git(part: str) -> bool:
    """Is ``part`` a spelling of ``.git`` that git refuses to track (``core.protectNTFS`` and
    ``core.protectHFS``: any case, trailing dots or spaces, an NTFS stream or short name,
    ignorable code points)? Written, such a file made ``git add`` fail, and the attempt
    ended as a ``git_error`` instead of feedback the Builder could act on."""
    name = _HFS_IGNORABLE.sub("", part).lower().split(":")[0].rstrip(". ")
    return name in (".git", "git~1")


MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
"""What Linux file systems take (NAME_MAX, PATH_MAX): longer is refused by its spelling,
not by an OSError halfway through writing an answer."""


class UnsafePath(ValueError):
    """A path that may not be used; the message says why (``"contains '..'"``)."""


def normalize(path: str, *, directory_ok: bool = False) -> str:
    """``./a//b`` -> ``a/b``: a workspace-relative POSIX path, or :class:`UnsafePath`.

    ``directory_ok``: a trailing ``/`` (naming a directory) is kept; otherwise refused.
    """
    problem = ""
    if not path or not path.strip():
        problem = "is empty"
    elif "\x00" in path:
        problem = "contains a NUL byte"
    elif control := _CONTROL.search(path):  # shown raw, ESC sequences drive the terminal
        problem = f"contains a control character (U+{ord(control.group()):04X})"
    elif lone_surrogate(path):
        problem = "contains a lone surrogate (\\ud800-\\udfff), which is not Unicode"
    elif "\\" in path:
        problem = "uses backslashes; use forward slashes"
    elif path.startswith("/") or _DRIVE.match(path):
        problem = "is absolute; paths are relative to the workspace root"
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not problem and len(path.encode()) > MAX_PATH_BYTES:
        problem = f"is longer than {MAX_PATH_BYTES} bytes"
    elif not problem and any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        problem = f"has a name longer than {MAX_NAME_BYTES} bytes"
    elif not problem and ".." in parts:
        problem = "contains '..'"
    elif not problem and any(_names_git(part) for part in parts):
        problem = "names .git, which git keeps for itself (it would never be committed)"
    elif not problem and not parts:
        problem = "names no file or directory"
    elif not problem and path.endswith("/") and not directory_ok:
        problem = "names a directory; a file is needed"
    if problem:
        raise UnsafePath(problem)
    return "/".join(parts) + ("/" if path.endswith("/") else "")


def inside(path: str, container: str) -> bool:
    """Is ``path`` the ``container`` path itself or below it (component-wise)?"""
    prefix = container.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def inside_any(path: str, containers: Iterable[str]) -> bool:
    return any(inside(path, container) for container in containers)


def absolute(path: Path, what: str) -> Path:
    """``path`` made absolute with its symlinks resolved, for a path a person gave; one that
    cannot be resolved (a symlink loop) is a ConfigError naming ``what`` and the path,
    never a traceback. Nor is a name longer than the file system holds: resolve() lets it
    through, and the first exists() or is_dir() on it raised OSError (File name too long)."""
    try:
        found = path.resolve()
        found.exists()
    except (RuntimeError, OSError) as exc:  # a loop: RuntimeError before Python 3.13
        raise ConfigError(f"{what} {path} cannot be resolved: {exc}") from None
    return found


def is_git_directory(path: Path) -> bool:
    """Is ``path`` a git directory itself (a bare repository, a ``.git``), not a checkout?"""
    parts = (path / "HEAD").is_file(), (path / "objects").is_dir(), (path / "refs").is_dir()
    return all(parts)


def not_a_directory(path: Path) -> str | None:
    """Why ``path`` can never be a directory Autopack creates or uses (a name longer than
    the file system holds, a FIFO or file at it or in place of one of its parents), or
    None when it is one or can be made one. ``mkdir(parents=True)`` on such a path raised
    ``OSError`` with a traceback at the first attempt that needed it."""
    for place in (path, *path.parents):
        try:
            found = place.stat()
        except FileNotFoundError:
            continue  # made when needed, if its parents allow
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                continue  # a parent is no directory: said when the walk reaches it
            return f"cannot be looked at: {exc.strerror}"
        if stat.S_ISDIR(found.st_mode):
            return None
        kind = file_kind(found.st_mode)
        if place != path:
            return f"cannot be made a directory: {place} above it is {kind}"
        return f"is {kind}, not a directory"
    return None


def as_the_system_means(path: Path) -> Path:
    """The absolute ``path`` without ``.`` and ``..``, naming what the system's own lookup
    finds at it: a ``..`` steps up from where a symbolic link before it points.
    ``os.path.normpath`` drops ``lnk/..`` as text, so ``sqlite:///lnk/../a.db`` (``lnk`` a
    link to ``data/real``) meant ``./a.db`` instead of ``data/a.db``: readers found no
    database, ``run create`` made a new, empty one beside the real one. The part up to
    the last ``..`` is resolved; the rest (the file name too) stays as written."""
    parts = path.parts
    if ".." not in parts:
        return Path(os.path.normpath(path))
    last = len(parts) - parts[::-1].index("..")
    return Path(os.path.realpath(Path(*parts[:last]))) / os.path.normpath(Path(*parts[last:]))


def cache_directory(path: Path, keeps: str) -> Path:
    """``path``, a directory of Autopack's cache that keeps ``keeps``, made when missing. A
    file or FIFO in its place (or above it) raised ``OSError`` with a traceback from the
    first drain that needed it: a ConfigError naming it and the setting instead."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = not_a_directory(path) or f"cannot be made: {exc.strerror}"
        raise ConfigError(
            f"the cache cannot keep {keeps}: {path} {problem} (move it out of the way, or "
            "set AUTOPACK_CACHE_DIR to another directory)"
        ) from None
    return path


def not_a_file(path: Path) -> str | None:
    """Why a regular file can never be written at ``path`` (a directory, FIFO or device
    there, a parent that can be no directory, a name longer than the file system holds),
    or None. Asked before work whose result goes there is done: a FIFO waits for a reader
    forever, and the rest failed only once there was something to write."""
    try:
        found = path.stat()
    except FileNotFoundError:
        if len(path.name.encode()) > MAX_NAME_BYTES:
            return f"has a name longer than {MAX_NAME_BYTES} bytes"
        return _in_no_directory(path)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return _in_no_directory(path)
        return f"cannot be looked at: {exc.strerror}"
    if stat.S_ISREG(found.st_mode):
        return None
    return f"is {file_kind(found.st_mode)}, not a regular file"


def _in_no_directory(path: Path) -> str | None:
    problem = not_a_directory(path.parent)
    return problem and f"is in {path.parent}, which {problem}"


def file_kind(mode: int) -> str:
    """What kind of file it is, in words (from its ``st_mode``)."""
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def resolved(root: Path, path: str) -> str | None:
    """The normalized ``path`` under ``root`` as the file system resolves it (following
    every symlink that exists), relative to ``root``; None when that leaves ``root``."""
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(real_root / path))
    if not target.is_relative_to(real_root):
        return None
    return target.relative_to(real_root).as_posix()


def resolved_inside(root: Path, path: str, containers: Iterable[str]) -> bool:
    """Does the normalized ``path``, resolved under ``root`` (following every symlink that
    exists), still lie inside ``root`` and inside one of ``containers``?

    Symlinks are followed as the kernel would when the file is opened for writing; a path
    whose resolution leaves ``root`` or lands outside every container is refused, even when
    its spelling is inside one.
    """
    relative = resolved(root, path)
    return relative is not None and inside_any(relative, containers)


def directory_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory at ``path`` itself, never through a symlink; None
    when it is gone, a symlink or no directory. A checkout a check replaced (``ln -s
    ~/project $PWD`` after moving it away) has another one, or none: Autopack's own steps
    in it went wherever it led (:mod:`autopack.executor.git_guard`)."""
    try:
        found = os.lstat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if stat.S_ISDIR(found.st_mode) else None


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``target`` whole or not at all: a temporary sibling moved over it with
    ``os.replace`` (atomic on POSIX), so no reader ever sees half a file. An overwritten
    file keeps its mode; a new one gets the umask's (applied by the kernel at creation:
    reading the umask means setting it, which would race other threads creating files).
    ``OSError`` when it cannot."""
    existing = target.stat() if target.is_file() else None
    # Not named after the target: a name of MAX_NAME_BYTES leaves no room for more.
    temp = target.with_name(f".autopack-{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if existing is not None:  # before the data: a 0600 file's is never readable
                os.fchmod(handle.fileno(), stat.S_IMODE(existing.st_mode))
            handle.write(data)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _regular_file(path: Path) -> int:
    """A descriptor of the regular file at ``path`` (symlinks followed). A FIFO, device,
    socket or directory is an ``OSError`` (EINVAL) naming what it is, never a wait:
    opening a FIFO blocks until a writer comes, and reading ``/dev/zero`` never ends. The
    file is opened without blocking and judged by what was opened, so nothing put in its
    place between a look and the open can make the read wait."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{file_kind(mode)}, not a regular file", str(path))
    return fd


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file at ``path`` (see :func:`_regular_file`)."""
    with open(_regular_file(path), "rb") as opened:
        return opened.read()


def read_text_file(path: Path) -> str:
    """The UTF-8 text of the regular file at ``path`` (see :func:`_regular_file`), read
    as ``Path.read_text`` reads it; ``UnicodeDecodeError`` for non-UTF-8."""
    with open(_regular_file(path), encoding="utf-8") as opened:
        return opened.read()
