"""Signs of life: a file a process holds a lock on for as long as it lives.

Executors sharing a cache (on one machine, or in containers sharing a volume) must tell
what another one is still using from what a killed one left behind. A pid tells neither
(in containers every executor is pid 1); a lock on a file does: the kernel releases it
when its holder dies, however it died (SIGKILL, the OOM killer, a power cut), in whatever
pid namespace. The worktree pools (:mod:`autopack.executor.worktrees`) and the clones of
remotes (:mod:`autopack.executor.source`) mark what they use this way.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def sign_of_life(marker: Path) -> int:
    """Create ``marker``, locked for as long as the returned descriptor stays open.

    Locked under a name no sweep reads, then renamed into place: created under its own
    name and locked a moment later, a sweep of another executor could find it unlocked in
    between and take its owner for dead (every worktree pool starting after that removed
    the live one's slots mid-attempt)."""
    starting = marker.with_name(f".{marker.name}")
    fd = os.open(starting, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.replace(starting, marker)
    return fd


def shows_life(marker: Path) -> bool:
    """Does a living process hold ``marker`` (:func:`sign_of_life`)? None there: no."""
    try:
        probe = os.open(marker, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(probe)
    return False
