"""Telling "this machine ran out" from a phase's failure.

A full disk under the workspace or the attempts' worktrees, or a drain at its open-files
limit (``ulimit -n``, ``-k`` workers each running git and checks), makes every attempt
fail the same way whatever its phase: an ``OSError`` (``executor_error``) or git saying
"No space left on device" (``git_error``). Recorded as the phase's failure, it spent
every phase's tries in a second. :func:`ran_out` recognises it, so the attempt hands its
phase back and the drain stops with :class:`ResourceExhausted`, naming what ran out,
where and how much room is left there.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from autopack.errors import AutopackError, ResourceExhausted
from autopack.executor.options import Services

DISK = {errno.ENOSPC, errno.EDQUOT}
FILES = {errno.EMFILE, errno.ENFILE}
_SAID = {os.strerror(code): code for code in DISK | FILES}
"""git (and other programs) print ``strerror``'s words, not the number."""


def ran_out(exc: BaseException, services: Services) -> ResourceExhausted | None:
    """The drain-stopping error for ``exc`` when it (or what caused it) says the machine
    ran out of disk space or open files, else None (None for that error itself too: it
    goes on as it is). A full disk is named by the free space where the executor writes."""
    if isinstance(exc, ResourceExhausted):
        return None
    code = exhaustion(exc)
    if code is None:
        return None
    if code in FILES:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        what = (
            f"open files ({os.strerror(code)}; this process may open {soft}: raise "
            "`ulimit -n`, or drain with fewer workers, -k)"
        )
    else:
        places = (
            ("the repository", services.repository.path),
            ("the attempts' worktrees", services.worktrees.root),
        )
        what = f"disk space ({os.strerror(code)}: {_room(places)}; free some there)"
    return ResourceExhausted(
        f"this executor ran out of {what}. Not the phase's failure: its phases were handed "
        "back, no try spent; run the drain again once there is room"
    )


def exhaustion(exc: BaseException) -> int | None:
    """The errno of what ran out, when ``exc`` or what caused it says so."""
    return next((code for code in map(_code, _chain(exc)) if code is not None), None)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _code(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno in DISK | FILES:
        return exc.errno
    if isinstance(exc, AutopackError):
        return next((code for said, code in _SAID.items() if said in exc.message), None)
    return None


def _room(places: Sequence[tuple[str, Path]]) -> str:
    """``the repository /r (0 bytes free), …``: one entry per filesystem."""
    shown: list[str] = []
    devices: set[int] = set()
    for name, path in places:
        try:
            device = path.stat().st_dev
            free = shutil.disk_usage(path).free
        except OSError:
            continue
        if device not in devices:
            devices.add(device)
            shown.append(f"{name} {path} ({free:,} bytes free)")
    return ", ".join(shown) or "where it writes"
