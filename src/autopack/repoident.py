"""One identity for the spellings of one repository, so one branch has one active run.

Two runs on one branch of one repository lose one's commits (each run's branch moves by a
compare-and-swap against its own accepted head), so run creation refuses the second: but
``/srv/x.git``, ``/srv/x.git/``, ``file:///srv/x.git`` and ``/srv/x/.git`` vs ``/srv/x``
were four repositories to that check. Two halves, because the server may run on another
machine than the client whose paths a run file names:

* :func:`resolve_local` (client side, where the path is a path: ``run create FILE``,
  ``drain --repo``/``--workspace``): an existing path's symlinks resolved, so a link
  and its target are one path. The
  executor clones from the path as the client sees it, so only the client can say what
  it is; the server never resolves a path against its own file system.
* :func:`repository_identity` (server side, by spelling alone, no file system and no
  network): what the branch check compares. Conservative: different hosts, users, ports,
  schemes (``ssh://h/p`` is ``/p``, scp-like ``h:p`` is ``~/p``), path case and ``..``
  stay different; only what names one thing for sure is folded (and a URL's password,
  which never chooses the repository, is never kept: :func:`without_password`).
"""

from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import unquote

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>[^/]*)(?P<path>.*)", re.S)


def _file_url_path(repository: str) -> str | None:
    """The local path a ``file:///path`` (or ``file://localhost/path``) URL names, else None."""
    url = _URL.fullmatch(repository)
    if url is None or url["scheme"].lower() != "file" or url["host"] not in ("", "localhost"):
        return None
    return unquote(url["path"])


def _local_identity(path: str) -> str:
    """``/x/``, ``/x//``, ``/x/.`` -> ``/x``; a work tree's ``/x/.git`` -> ``/x`` (git
    clones the same repository from both). ``/x.git`` stays: it is another directory, and
    so does ``/a/b/../x``: when ``b`` is a symbolic link that is not ``/a/x`` (the kernel
    follows the link first), and a path the drain's machine could resolve comes resolved
    (:func:`resolve_local`)."""
    absolute = path.startswith("/")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    path = ("/" if absolute else "") + "/".join(parts)
    if posixpath.basename(path) == ".git" and path != "/.git":
        path = posixpath.dirname(path)
    return path


def _remote_path(path: str) -> str:
    """A remote path without trailing ``/`` and ``.git`` (hosts serve ``org/x`` for
    ``org/x.git``; git itself asks for ``x.git`` when ``x`` is not found)."""
    path = path.rstrip("/")
    path = path.removesuffix(".git").rstrip("/")
    return path or "/"


def _host(host: str, *, scheme: str = "") -> str:
    """``User@Host`` -> ``User@host``: host names are case-insensitive, user names not. A
    password never chooses the repository (``https://u:secret@h/x`` is ``https://u@h/x``),
    nor does an HTTP(S) user name (it only logs in: ``https://u@h/x`` is ``https://h/x``);
    an SSH user's does (``u@h:x`` is ``x`` in u's home)."""
    user, at, name = host.rpartition("@")
    user = user.partition(":")[0]
    if scheme in ("http", "https"):
        user, at = "", ""
    return f"{user}{at}{name.lower()}"


def without_password(repository: str) -> str:
    """``scheme://user:secret@host/path`` -> ``scheme://user@host/path``: how the server
    keeps and names a repository it only compares (``drained_in``, a 409's message): the
    drain clones with what it was given, the server never does."""
    url = _URL.fullmatch(repository)
    if url is None or "@" not in url["host"]:
        return repository
    user, _, name = url["host"].rpartition("@")
    return f"{url['scheme']}://{user.partition(':')[0]}@{name}{url['path']}"


def repository_identity(repository: str) -> str:
    """What two runs' ``repository`` values are compared by (never stored, never cloned).

    Expects a value :func:`autopack.rundef.repository_from` accepted: a URL, an scp-like
    ``[user@]host:path`` or an absolute path."""
    local = _file_url_path(repository)
    if local is not None:
        return _local_identity(local)
    url = _URL.fullmatch(repository)
    if url is not None:
        scheme = url["scheme"].lower()
        return f"{scheme}://{_host(url['host'], scheme=scheme)}{_remote_path(url['path'])}"
    colon = repository.find(":")
    if colon > 0 and "/" not in repository[:colon]:  # git's scp-like rule
        return f"{_host(repository[:colon])}:{_remote_path(repository[colon + 1 :])}"
    return _local_identity(repository)


def resolve_local(repository: str) -> str:
    """Client side: an absolute local path (or local ``file://`` URL) that exists here,
    with its symlinks resolved (as ``--repo`` always did); anything else as given (a path
    only the executors' machines have is theirs to read). A file URL stays a file URL
    (git clones it by its transport, not as a local path); one with ``%``-escapes is left
    for git to read."""
    local = _file_url_path(repository)
    if local is not None:
        if "%" in repository or not os.path.exists(local):
            return repository
        return f"file://{os.path.realpath(local)}"
    if os.path.isabs(repository) and os.path.exists(repository):
        return os.path.realpath(repository)
    return repository
