"""Worktrees: every attempt a checkout of its own, none of them shared.

A slot is a ``git worktree`` of the run's repository owned by one executor process
(named after its pid). :meth:`Worktrees.checkout` hands an attempt a free slot switched to
the attempt's base commit and cleaned of anything untracked or ignored, so it holds
exactly that commit's files; switching a checkout between nearby commits rewrites only
the files that differ, which is what keeps an attempt's overhead small on a large
repository. After a completed attempt the slot goes back to the pool; after a failed one
it is moved aside for inspection and removed once it is older than the configured time.
Slots of executor processes that no longer exist are removed when a pool starts.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from autopack.executor.git import git, out
from autopack.executor.repository import IntegrationConflict, RunRepository
from autopack.executor.signs import shows_life, sign_of_life
from autopack.logs import log_event
from autopack.paths import cache_directory, read_text_file

logger = logging.getLogger("autopack.executor.worktrees")

checkout_git = functools.partial(git, "-c", "core.sparseCheckout=false")
"""``git`` for what makes or fills a slot's checkout and index: all of the commit's files,
whatever sparse checkout the person's work tree uses (``git worktree add`` copies it
into every new worktree). A sparse slot lacked the files outside the person's cone: the
phase's checks failed on files its branch holds, and ``git add`` refused every
deliverable outside it, so each attempt failed ``git_error`` and the run failed."""


def _drop_flagged_index(path: Path) -> None:
    """Remove a reused slot's index when an entry in it is flagged ``assume-unchanged`` or
    ``skip-worktree`` (a check may set either): ``checkout --force`` leaves such a file as
    it is on disk, so what a completed attempt's check wrote into a file it never
    delivered reached the next attempt's checks and, through an edit, its commit. Without
    an index, the checkout writes every file of the base afresh."""
    listed = git("ls-files", "-v", "-z", cwd=path).stdout.split(b"\0")
    if any(entry[:1].islower() or entry[:1] == b"S" for entry in listed if entry):
        index = out("rev-parse", "--path-format=absolute", "--git-path", "index", cwd=path)
        Path(index).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commit_tree(tree: str, parent: str, message: str, cwd: Path) -> str:
    """``git commit-tree`` with the message on stdin: it holds the Builder's summary, and
    as an argument one over 128 KiB (the kernel's limit for one) failed the attempt with
    E2BIG, an ``executor_error`` telling the Builder nothing, at every retry."""
    made = git("commit-tree", tree, "-p", parent, "-F", "-", cwd=cwd, input=message.encode())
    return made.stdout.decode().strip()


@dataclass
class Worktree:
    """One attempt's checkout: ``path`` holds the files of ``base`` (plus its own change)."""

    path: Path
    base: str
    repository: RunRepository
    keep: bool = False
    """Set aside for inspection instead of going back to the pool (a failed attempt)."""

    commit: str | None = None
    """The attempt's commit once made (on ``base``; replaced when rebased)."""
    message: str = ""
    """The commit's message (kept for the rebased commit)."""
    paths: list[str] = field(default_factory=list)
    """The paths the commit changes (at most)."""

    def make_commit(self, paths: list[str], message: str) -> str:
        """The attempt's change as one commit on ``base``; its sha.

        Built in an index of its own, from ``base`` plus exactly ``paths`` as they are on
        disk: nothing else the attempt's checks did in the checkout (files they created,
        things they staged or committed, a HEAD they moved) reaches the commit. The index
        is made fresh from ``base`` (``read-tree``), not copied from the checkout: flags in
        the checkout's (assume-unchanged, which ``core.ignoreStat`` sets on every file a
        checkout writes; skip-worktree a check may set) make ``git add`` pass a file by.
        ``git add --force``: a deliverable the repository's ``.gitignore`` matches is
        committed anyway (the run file asked for it); modes are taken from the files. The
        paths go on stdin, as literal paths (``*`` in a name is no glob).
        """
        present = [p for p in paths if (self.path / p).exists() or self._in_base(p)]
        index = self.path.parent / f".{self.path.name}.autopack-index"
        env = {"GIT_INDEX_FILE": str(index)}
        # The slot is this pool's alone: a lock on its index can only be a git step of an
        # earlier commit here killed at its timeout, and it failed every later commit.
        index.with_name(f"{index.name}.lock").unlink(missing_ok=True)
        try:
            checkout_git("read-tree", self.base, cwd=self.path, env=env)
            if present:  # on stdin: thousands of paths are more than one command line holds
                listed = "\0".join(present).encode()
                add = ("add", "--force", "--all", "--pathspec-from-file=-", "--pathspec-file-nul")
                checkout_git(
                    *add, cwd=self.path, env={**env, "GIT_LITERAL_PATHSPECS": "1"}, input=listed
                )
            tree = out("write-tree", cwd=self.path, env=env)
        finally:
            index.unlink(missing_ok=True)
        self.message = message
        self.commit = _commit_tree(tree, self.base, message, self.path)
        self.paths = present
        self.repository.made(self.commit, parent=self.base, paths=present)
        return self.commit

    def gitlinks(self) -> frozenset[str]:
        """The paths of ``base`` that are submodules: a file written inside one cannot be
        committed (:func:`autopack.builder.change.plan_change` says so to the Builder).
        Asked only of a repository with a ``.gitmodules``: listing every file of a large
        one at each attempt is what the pool's reuse of checkouts spares (a gitlink
        without one, an embedded repository added by mistake, is git's to refuse)."""
        if not (self.path / ".gitmodules").is_file():
            return frozenset()
        listed = git("ls-tree", "-r", "-z", self.base, cwd=self.path).stdout.split(b"\0")
        return frozenset(
            entry.partition(b"\t")[2].decode(errors="surrogateescape")
            for entry in listed
            if entry.startswith(b"160000 ")
        )

    def _in_base(self, path: str) -> bool:
        """Is ``path`` a file of ``base`` (a deletion to record, not a path to skip)?"""
        found = git("cat-file", "-e", f"{self.base}:{path}", cwd=self.path, check=False)
        return found.returncode == 0

    def rebase(self, onto: str) -> list[str]:
        """Replay the attempt's commit on ``onto``; the files the branch changed meanwhile.

        Done on trees, not in the checkout (``git merge-tree --write-tree`` + ``commit-tree``:
        milliseconds however large the repository), so the checkout is left as it was; call
        :meth:`sync` before running anything in it. A conflict changes nothing and raises
        :class:`IntegrationConflict` naming the files.
        """
        assert self.commit is not None, "rebase needs the attempt's commit"
        upstream = self.repository.changed(self.base, onto)
        merged = git(
            "merge-tree",
            "--write-tree",
            "--name-only",
            onto,
            self.commit,
            cwd=self.path,
            check=False,
        )
        lines = merged.stdout.decode().splitlines()
        if merged.returncode != 0:
            files = ", ".join(line for line in lines[1:] if line) or "unknown files"
            raise IntegrationConflict(
                ("merge-tree", onto[:12], self.commit[:12]),
                f"the change conflicts with what the branch got meanwhile in {files}",
            )
        self.commit = _commit_tree(lines[0], onto, self.message, self.path)
        if not set(self.paths).isdisjoint(upstream):
            # merge-tree follows renames: an edit of a file the branch renamed meanwhile
            # lands on the new name, which the attempt never named; ask git what it changed.
            self.paths = self.repository.changed(onto, self.commit)
        self.repository.made(self.commit, parent=onto, paths=self.paths)
        self.base = onto
        return upstream

    def sync(self) -> None:
        """Make the checkout hold the attempt's (rebased) commit, to run checks on it."""
        assert self.commit is not None
        with self.repository.locked():
            checkout_git("checkout", "--quiet", "--force", "--detach", self.commit, cwd=self.path)


class Worktrees:
    """The pool of checkouts of one repository for one executor process."""

    def __init__(
        self, repository: RunRepository, root: Path, *, keep_failed_minutes: float
    ) -> None:
        self.repository = repository
        digest = hashlib.sha256(str(repository.path).encode()).hexdigest()[:8]
        self.root = root / f"{repository.path.name.removesuffix('.git')}-{digest}"
        self.kept = self.root / "kept"
        self.keep_failed_seconds = keep_failed_minutes * 60
        self._free: list[Path] = []
        self._made = 0
        self._lock = threading.Lock()
        self._owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        """Names this pool's slots. Not the pid alone: executors in containers sharing a
        cache volume are all pid 1, and each took the other's live slot for a leftover of
        its own and removed it mid-attempt."""
        cache_directory(self.root, "the attempts' worktrees")
        cache_directory(self.kept, "failed attempts' worktrees")  # before one fails, not after
        self._alive = self._sign_of_life()
        self._sweep()

    def _sign_of_life(self) -> int:
        """The locked file that tells other pools this one is open (held while it lives)."""
        return sign_of_life(self.root / f"alive-{self._owner}")

    def _owner_alive(self, owner: str) -> bool:
        """Is the pool named ``owner`` still open? The file of a dead one is removed."""
        marker = self.root / f"alive-{owner}"
        if shows_life(marker):
            return True
        marker.unlink(missing_ok=True)
        return False

    def _sweep(self) -> None:
        """Remove slots of dead executor processes and kept checkouts past their time."""
        with self.repository.locked():
            self._sweep_locked()

    def _expire_kept(self) -> None:
        """Remove kept checkouts older than the configured time (a long drain keeps many)."""
        now = time.time()
        for kept in self.kept.glob("*") if self.kept.exists() else []:
            if now - kept.stat().st_mtime > self.keep_failed_seconds:
                self._remove(kept)

    def _sweep_locked(self) -> None:
        for slot in self.root.glob("slot-*"):
            parts = slot.name.split("-")  # slot-PID-TOKEN-N (slot-PID-N: an older executor)
            if len(parts) == 4:
                alive = self._owner_alive(f"{parts[1]}-{parts[2]}")
            else:
                alive = parts[1].isdigit() and _alive(int(parts[1]))
            if not alive:
                self._remove(slot)
        for marker in self.root.glob("alive-*"):  # owners whose slots are all gone
            self._owner_alive(marker.name.removeprefix("alive-"))
        self._expire_kept()
        self._prune_own()

    def _prune_own(self) -> None:
        """Forget git's records of this pool's checkouts whose directories are gone.

        Not ``git worktree prune``: that also forgets a person's own worktrees whose
        directory is away for now (an unmounted drive, a directory moved for ``git
        worktree repair``), and their index and HEAD with them: staged work lost, the
        worktree no longer a repository when it comes back.
        """
        root = Path(os.path.realpath(self.root))  # git records real paths
        for entry in (self.repository.common_dir() / "worktrees").glob("*"):
            try:
                checkout = Path(read_text_file(entry / "gitdir").strip()).parent
            except OSError:
                continue
            if Path(os.path.realpath(checkout)).is_relative_to(root) and not checkout.exists():
                shutil.rmtree(entry, ignore_errors=True)

    def _remove(self, path: Path) -> None:
        if path.is_symlink():  # a check put it in its checkout's place: only the link goes
            path.unlink()
            return
        with self.repository.locked():
            git("worktree", "remove", "--force", str(path), cwd=self.repository.path, check=False)
            shutil.rmtree(path, ignore_errors=True)

    def _slot(self, base: str) -> tuple[Path, bool]:
        """A free slot switched to ``base``: (its path, whether it was used before).

        A new slot is made by ``git worktree add`` already holding ``base``'s files (one
        git process: at the start of a drain K slots are made at once, in turn, under the
        repository lock, and every process there delays the wave's first LLM calls).
        """
        with self._lock:
            if self._free:
                return self._free.pop(), True
            self._made += 1
            path = self.root / f"slot-{self._owner}-{self._made}"
        with self.repository.locked():
            add = ("worktree", "add", "--quiet", "--detach", str(path), base)
            checkout_git(*add, cwd=self.repository.path)
        return path, False

    @contextmanager
    def checkout(self, base: str, name: str) -> Iterator[Worktree]:
        """A checkout of exactly ``base``; ``name`` names it if it is kept for inspection."""
        self.repository.require(base)
        path, used = self._slot(base)
        try:
            if used:  # a reused slot: switch it to ``base`` and drop what the last left
                with self.repository.locked():
                    _drop_flagged_index(path)
                    checkout_git("checkout", "--quiet", "--force", "--detach", base, cwd=path)
                    checkout_git("clean", "-ffdxq", cwd=path)
        except BaseException:
            self._remove(path)
            raise
        worktree = Worktree(path, base, self.repository)
        try:
            yield worktree
        except BaseException:
            worktree.keep = True
            raise
        finally:
            self._release(worktree, name)

    def _release(self, worktree: Worktree, name: str) -> None:
        if not worktree.keep:
            with self._lock:
                self._free.append(worktree.path)
            return
        self.kept.mkdir(parents=True, exist_ok=True)
        target = self.kept / name
        self._remove(target)
        with self.repository.locked():
            move = ("move", str(worktree.path), str(target))
            moved = git("worktree", *move, cwd=self.repository.path, check=False)
        if moved.returncode != 0:
            self._remove(worktree.path)
            return
        os.utime(target)
        log_event(logger, "worktree_kept", path=target, minutes=self.keep_failed_seconds / 60)
        self._expire_kept()

    def close(self) -> None:
        """Remove this process's free slots (kept ones stay for inspection), and let go of
        the pool's lock: a process opening many pools (a test run, a long-lived host) held
        one descriptor per pool until it ended."""
        with self._lock:
            free, self._free = self._free, []
            alive, self._alive = self._alive, -1
        for path in free:
            self._remove(path)
        if alive >= 0:
            os.close(alive)
