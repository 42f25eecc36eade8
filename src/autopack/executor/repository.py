"""A run's code is a git branch; each attempt works in a worktree of its own.

The run's repository is either a local repository used in place (``--workspace DIR``,
created and initialised when missing) or a remote (``--repo URL``, or the run file's
``repository``), which every executor clones into a local cache, so executors on many
machines share one branch instead of scattering files over their disks.

* **Worktrees** (:class:`Worktrees`): an attempt gets a checkout of the branch head as it
  was when the attempt was claimed, reads its context there, writes there and runs its
  checks there. Nothing it does touches the branch or another attempt's checkout. A
  checkout that served a completed attempt is cleaned and reused (switching a checkout
  between nearby commits rewrites only the files that differ); one of a failed attempt is
  set aside for inspection and removed after a while.
* **Commits**: a completed attempt is one commit on the head it started from; it is
  published under ``refs/autopack/attempts/RUN/PHASE/ATTEMPT`` before its result is
  posted, so a COMPLETE phase's commit is always reachable from a ref, whatever dies when.
* **The branch** only moves forward, to the head the control plane accepted
  (:meth:`RunRepository.advance`), by compare-and-swap: ``git update-ref NEW OLD`` on a
  local repository, a push with ``--force-with-lease=BRANCH:OLD`` to a remote.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autopack.errors import ConfigError
from autopack.executor.checkouts import BranchCheckedOut, carry
from autopack.executor.git import UNSHOWN, GitError, Progress, git, out
from autopack.executor.recall import recall, remember
from autopack.executor.repolock import RepositoryLock, stale_git_lock
from autopack.executor.repository_errors import (
    FilterMissing,
    HeadElsewhere,
    RemoteUnreachable,
    RepositoryGone,
    missing_filter,
    refused_by_remote,
)
from autopack.executor.source import (
    RepoSource,
    cache_clone,
    is_repository,
    local_repository,
    refuse_unreadable,
    require_local,
)
from autopack.logs import log_event
from autopack.rundef import default_branch

logger = logging.getLogger("autopack.executor.repository")

ATTEMPT_REFS = "refs/autopack/attempts"
REMOTE = "origin"
ADVANCE_TRIES = 20


def run_branch(run_id: str) -> str:
    return default_branch(run_id)


def attempt_ref(run_id: str, phase_id: str, attempt: int) -> str:
    return f"{ATTEMPT_REFS}/{run_id}/{phase_id}/{attempt}"


class IntegrationConflict(GitError):
    """The attempt's change does not apply on the branch's new head."""


class RunRepository:
    """The repository holding one run's branch, as this executor reaches it."""

    def __init__(self, path: Path, *, branch: str, remote: str | None) -> None:
        self.path = path
        self.branch = branch
        self.remote = remote
        self._common_dir: Path | None = None
        self._repository_lock = RepositoryLock(self.common_dir)
        # Facts about commits never change (objects are never deleted here, ancestry is
        # fixed), so each is asked of git once: at K attempts at a time every git process
        # spared is a fork on the executor's few cores. (A repository replaced or pruned
        # under the drain does lose them: :meth:`check_present` asks again.)
        self._present: set[str] = set()
        self._required: str | None = None
        """The commit an attempt last needed here: asked again after a git failure."""
        self._ancestry: dict[tuple[str, str], bool] = {}
        self._reached: str | None = None
        """The newest head this process moved the branch to (or found it past)."""
        self.waiting: str | None = None
        """Why the branch stays behind the head it was last asked to reach (a checkout in
        the way), or None: what a drain's summary says instead of "the branch is at"."""
        self._changes: dict[str, tuple[str, frozenset[str]]] = {}
        """Commits this process made: their parent and the paths they change."""

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository while changing it: its refs, its worktrees, its cache
        (:mod:`autopack.executor.repolock` says why and what a stopped holder costs)."""
        with self._repository_lock.held():
            yield

    def common_dir(self) -> Path:
        """The repository's git common directory (``.git``, or the bare repository)."""
        if self._common_dir is None:
            common = out("rev-parse", "--git-common-dir", cwd=self.path)
            self._common_dir = (self.path / common).resolve()
        return self._common_dir

    def check_present(self, failure: GitError | None = None) -> None:
        """Raise :class:`RepositoryGone` when the repository's directory is no longer there
        (asked after a git command failed: it names the directory, not the cause),
        :class:`RemoteUnreachable` when the run's remote does not answer, or
        ``failure`` when it says so already (:class:`HeadElsewhere`): not the phase's
        failure, but this executor's."""
        if isinstance(failure, RepositoryGone):
            raise failure
        if failure is not None and (missing := missing_filter(failure, self.path)) is not None:
            raise FilterMissing(
                (failure.command,),
                f"the repository {self.where} requires the git filter '{missing}' "
                f"(filter.{missing}.required), and this machine has no driver for it (no "
                f"filter.{missing}.clean, .smudge or .process): git can neither store nor "
                "check out the files it covers. Install it here (`git lfs install`, "
                "git-crypt's unlock, …) or drain on a machine that has it; the phase was "
                "handed back",
            )
        if self.path.is_dir():
            self._check_remote_answers()
            if self._required is not None:
                self.require(self._required, again=True)
            return
        again = f"it clones {self.remote_url} again" if self.remote_url else "or give --workspace"
        raise RepositoryGone(
            ("-C", str(self.path)),
            f"the repository {self.path} this executor worked in is gone (removed while the "
            f"drain ran: a wiped cache?); its phases were handed back: run the drain again "
            f"({again})",
        )

    def _check_remote_answers(self) -> None:
        """Raise :class:`RemoteUnreachable` when the run's remote does not answer now."""
        if not self.remote:
            return
        asked = git("ls-remote", REMOTE, f"refs/heads/{self.branch}", cwd=self.path, check=False)
        if asked.returncode == 0:
            return
        said = " ".join(asked.stderr.decode(errors="replace").split()) or "no answer"
        raise RemoteUnreachable(
            ("ls-remote", REMOTE),
            f"the run's repository {self.remote_url} does not answer ({said}); this "
            "executor's phases were handed back: run the drain again once it answers",
        )

    @property
    def where(self) -> str:
        """How messages name the repository (the remote URL, or the local path)."""
        return self.remote_url or str(self.path)

    @property
    def flag(self) -> str:
        """The command-line option that names this repository (for the hints we print)."""
        return f"--repo {self.remote_url}" if self.remote_url else f"--workspace {self.path}"

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        source: RepoSource,
        *,
        branch: str,
        cache_dir: Path,
        create: bool = True,
        head: str | None = None,
        shown: Progress = UNSHOWN,
    ) -> RunRepository:
        """The run's repository, with its branch existing (created from the repository's
        current HEAD, or as an empty first commit in a new repository). ``create=False``:
        a missing local repository or branch is an error instead (reading commands).
        ``head``: the run's accepted head, which a local repository must already hold.
        ``shown``: the progress of a remote's first clone."""
        if source.remote:
            clone = cache_clone(source.remote, cache_dir, shown=shown)
            repository = cls(clone, branch=branch, remote=REMOTE)
            repository.remote_url = source.remote
        else:
            workspace = source.workspace
            assert workspace is not None
            if head is not None:
                if source.default and source.run_id is not None:
                    workspace = recall(workspace, source.run_id, head, cache_dir)
                require_local(workspace, head, branch)
            if not create and not (workspace.is_dir() and is_repository(workspace)):
                raise ConfigError(
                    f"no repository at {workspace}: give the run's --workspace or --repo"
                )
            repository = cls(local_repository(workspace), branch=branch, remote=None)
            if source.run_id is not None:
                remember(cache_dir, source.run_id, repository.path)
        if create:
            found = repository._ensure_branch()
            if head is None and found is not None and not repository._starts_anew(found):
                repository.found_before = found
        return repository

    remote_url: str | None = None
    found_before: str | None = None
    """The head of the run's branch when it already existed, past or beside where a new
    one starts, before the run accepted any work: its phases build on commits the run did
    not make (an earlier run's of the same id, a person's own branch of that name), which
    the drain says instead of building on them without a word."""

    def _ensure_branch(self) -> str | None:
        """Create the branch unless it exists; its head when it did (None: created)."""
        with self.locked():
            existing = self._branch_head(fetch=True)
            if existing is not None:
                return existing
            start = self._start_commit()
            if self.remote:
                if not self._push(start, self.branch, expected=None):
                    return None  # another executor created it meanwhile
            else:
                ref = f"refs/heads/{self.branch}"
                made = git("update-ref", "--no-deref", ref, start, "", cwd=self.path, check=False)
                # failed because another executor made it meanwhile: fine; for any other
                # reason (a ref lock a killed git left) say so here: every attempt failed
                # "no branch" instead, and the run with them
                if made.returncode != 0 and self._branch_head(fetch=False) is None:
                    raise GitError(("update-ref", ref), made.stderr.decode(errors="replace"))
        log_event(
            logger, "run_branch_created", branch=self.branch, repository=self.where, head=start
        )
        return None

    def _start_commit(self) -> str:
        """Where a new run branch starts: the repository's HEAD, or an empty first commit."""
        head = self._head_commit()
        if head is not None:
            return head
        refuse_unreadable(self.path)  # HEAD's commit missing, not unborn: never start empty
        return out("commit-tree", self._empty_tree(), "-m", f"start {self.branch}", cwd=self.path)

    def _starts_anew(self, commit: str) -> bool:
        """Is ``commit`` where a new run branch starts here (made so by another executor
        of the run): HEAD, or under an unborn HEAD an empty first commit (each executor
        makes its own, with its own date)?"""
        head = self._head_commit()
        if head is not None:
            return commit == head
        parents_and_tree = out("log", "-1", "--format=%P %T", commit, cwd=self.path)
        return parents_and_tree == self._empty_tree()

    def _head_commit(self) -> str | None:
        head = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=self.path, check=False)
        return head.stdout.decode().strip() if head.returncode == 0 else None

    def _empty_tree(self) -> str:
        return out("mktree", cwd=self.path)  # given no input: the empty tree

    # -- the branch -----------------------------------------------------------------------

    def _tracking(self) -> str:
        return (
            f"refs/remotes/{REMOTE}/{self.branch}" if self.remote else f"refs/heads/{self.branch}"
        )

    def fetch(self, *, attempts: bool = False) -> None:
        """Bring the remote's branch (and, with ``attempts``, every attempt ref) into the
        cache; a no-op for a local repository."""
        if not self.remote:
            return
        refspecs = [f"+refs/heads/{self.branch}:{self._tracking()}"]
        if attempts:
            refspecs.append(f"+{ATTEMPT_REFS}/*:{ATTEMPT_REFS}/*")
        with self.locked():
            try:
                git("fetch", "--quiet", REMOTE, *refspecs, cwd=self.path)
            except GitError as exc:  # a lock a killed git left in this cache: not in use
                stale = stale_git_lock(exc.message, self.common_dir())
                if stale is None:
                    raise
                stale.unlink(missing_ok=True)
                log_event(logger, "stale_lock_removed", logging.WARNING, path=stale)
                git("fetch", "--quiet", REMOTE, *refspecs, cwd=self.path)

    def _branch_head(self, *, fetch: bool) -> str | None:
        if fetch and self.remote:
            listed = out("ls-remote", REMOTE, f"refs/heads/{self.branch}", cwd=self.path)
            if not listed:
                return None
            self.fetch()
        found = git(
            "rev-parse", "--verify", "--quiet", self._tracking(), cwd=self.path, check=False
        )
        return found.stdout.decode().strip() if found.returncode == 0 else None

    def head(self) -> str:
        """The branch's head as the repository has it now (fetched first from a remote)."""
        head = self._branch_head(fetch=True)
        if head is None:
            raise GitError(("rev-parse", self.branch), f"no branch {self.branch} in {self.where}")
        return head

    def made(self, commit: str, *, parent: str, paths: list[str]) -> None:
        """``commit`` (on ``parent``, changing at most ``paths``) was just written here."""
        self._present.add(commit)
        self._changes[commit] = (parent, frozenset(paths))

    def changed(self, old: str, new: str) -> list[str]:
        """The paths that differ between ``old`` and its descendant ``new``.

        Told without git when every commit from ``new`` back to ``old`` was made here
        (an executor integrating its own attempts, the common case, one git process less
        per rebase); a path rewritten with the same content may be named (a check run
        again for nothing, never one skipped). Otherwise ``git diff``.
        """
        paths: set[str] = set()
        commit = new
        while commit != old and commit in self._changes:
            commit, changed = self._changes[commit]
            paths |= changed
        if commit == old:
            return sorted(paths)
        # --no-renames: a rename is its old path and its new one (diff.renames names only
        # the new), both paths a change made on the old commit may meet. -z: names as they
        # are; git quotes others ("\303\274.py" for ü.py), which matched no path an attempt
        # wrote, and the checks a rebase onto such a change needed were skipped.
        listed = git("diff", "--no-renames", "--name-only", "-z", old, new, cwd=self.path)
        return [name for name in listed.stdout.decode().split("\0") if name]

    def has(self, commit: str) -> bool:
        if commit not in self._present:
            found = git("cat-file", "-e", f"{commit}^{{commit}}", cwd=self.path, check=False)
            if found.returncode != 0:
                return False
            self._present.add(commit)
        return True

    def require(self, commit: str, *, again: bool = False) -> None:
        """Make sure ``commit`` is here (fetching from a remote), or say where it is missing.

        An accepted commit is on the branch, or (if its executor died before moving the
        branch) under its attempt ref, which is fetched only then. ``again``: git just
        failed on ``commit``, so what this process knew of it is asked afresh: a
        repository replaced under the drain (cloned again at its path) or pruned (``git gc
        --prune=now`` beside it) lost it, and the executor that had made or seen it failed
        every phase's attempts ``git_error`` (the run FAILED) where any other stopped."""
        self._required = commit
        known = commit in self._present
        if again:
            self._present.discard(commit)
        if not self.has(commit):
            self.fetch()
        if not self.has(commit):
            self.fetch(attempts=True)
        if self.has(commit):
            return
        if again and known:
            raise HeadElsewhere(
                ("cat-file", commit),
                f"commit {commit[:12]} of branch {self.branch} was in {self.where} and is "
                "gone from it (the repository replaced while the drain ran, or its objects "
                "pruned: `git gc --prune=now` beside a drain). This executor's phases were "
                "handed back.",
            )
        raise HeadElsewhere(
            ("cat-file", commit),
            f"commit {commit[:12]} of branch {self.branch} is not in {self.where}. "
            "Executors on several machines must share one repository: give every "
            "executor the same --repo URL (or the run file's `repository`). This "
            "executor's phases were handed back.",
        )

    def advance(self, to: str, *, on: str | None = None) -> None:
        """Move the branch forward to ``to`` (a descendant of its head), by compare-and-swap.

        Idempotent: a branch already at ``to``, or past it, is left alone. Whoever syncs
        first does the work; the others find it done. ``on`` is a commit ``to`` is known
        to be made on (the base of the attempt that made it): when this process last left
        the branch there, one compare-and-swap from it is the whole work (one git process
        instead of five); if the branch moved meanwhile, the swap fails and the full
        check follows.
        """
        if to == self._reached:  # the branch only moves forward: it holds ``to`` already
            self.waiting = None
            return
        try:
            if on is not None and on == self._reached:
                with self.locked():
                    if self._swap(on, to):
                        log_event(logger, "branch_advanced", branch=self.branch, old=on, new=to)
                        self._reached, self.waiting = to, None
                        return
            self.require(to)
            with self.locked():
                self._reached, self.waiting = self._advance(to), None
        except BranchCheckedOut as exc:  # the branch waits; the work is safe (checkouts.py)
            self.waiting = exc.message
            log_event(logger, "branch_waits", logging.WARNING, reason=exc.message)
        except GitError as exc:  # behind too: what the summary says instead of "at HEAD"
            self.waiting = exc.message
            raise

    def reset_command(self, to: str, old: str) -> str:
        """The command a person runs to put the branch, now at ``old``, at ``to``."""
        ref = f"refs/heads/{self.branch}"
        if self.remote:
            return (
                f"`git push --force-with-lease={ref}:{old} {self.where} {to}:{ref}` from a "
                "clone holding it"
            )
        return f"`git -C {self.path} update-ref {ref} {to} {old}`"

    def past(self, accepted: str) -> str | None:
        """The branch's head when it is past ``accepted`` (a descendant of it, not it), else
        None. :meth:`advance` leaves such a branch alone (another executor may have moved
        it to a later accepted head); whoever knows the latest accepted head judges it."""
        try:
            head = self.head()
        except GitError:
            return None
        if head == accepted or not self.is_ancestor(accepted, head):
            return None
        return head

    def moved_elsewhere(self) -> None:
        """The branch was moved by something other than this process (a check's move, put
        back): the next :meth:`advance` looks at it again instead of trusting that it is
        still where this process left it."""
        self._reached = None

    def _advance(self, to: str) -> str:
        """Advance to ``to``; the branch's head afterwards (``to``, or a head past it)."""
        for _ in range(ADVANCE_TRIES):
            old = self._branch_head(fetch=True)
            if old == to or (old is not None and self.is_ancestor(to, old)):
                return old
            if old is not None and not self.is_ancestor(old, to):
                raise GitError(
                    ("merge-base", "--is-ancestor", old, to),
                    f"branch {self.branch} in {self.where} is at {old[:12]}, which the "
                    f"accepted head {to[:12]} does not contain: the branch was changed "
                    f"outside Autopack, and is left as it is. {self.reset_command(to, old)} "
                    "puts it at the accepted head; `autopack run export` writes the "
                    "accepted code out.",
                )
            if self._swap(old, to):
                log_event(logger, "branch_advanced", branch=self.branch, old=old, new=to)
                return to
        raise GitError(("update-ref", self.branch), "the branch kept moving; try again")

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        key = (ancestor, descendant)
        if key not in self._ancestry:
            result = git(
                "merge-base", "--is-ancestor", ancestor, descendant, cwd=self.path, check=False
            )
            if result.returncode not in (0, 1):  # 1: not an ancestor; else git failed
                return False
            self._ancestry[key] = result.returncode == 0
        return self._ancestry[key]

    def _swap(self, old: str | None, new: str) -> bool:
        if self.remote:
            return self._push(new, self.branch, expected=old)
        if old is not None:  # a person's checkout of the branch moves with it, or nothing does
            carry(self.common_dir(), self.path, self.branch, old, new)
        # --no-deref: the branch made a symbolic ref (a check's doing) is replaced, never
        # written through: git moved the ref it named (a person's ``main``) instead.
        ref = f"refs/heads/{self.branch}"
        result = git("update-ref", "--no-deref", ref, new, old or "", cwd=self.path, check=False)
        said = result.stderr.decode(errors="replace")
        if result.returncode != 0 and "File exists" in said:  # a lock a killed git left
            raise GitError(("update-ref", ref), said)
        return result.returncode == 0

    def _push(self, commit: str, branch: str, *, expected: str | None) -> bool:
        lease = f"--force-with-lease=refs/heads/{branch}:{expected or ''}"
        pushed = git(
            "push",
            "--quiet",
            lease,
            REMOTE,
            f"{commit}:refs/heads/{branch}",
            cwd=self.path,
            check=False,
        )
        if pushed.returncode == 0:
            git("update-ref", f"refs/remotes/{REMOTE}/{branch}", commit, cwd=self.path)
            return True
        message = pushed.stderr.decode(errors="replace")
        if "checked out" in message:  # a non-bare remote refuses (receive.denyCurrentBranch)
            raise BranchCheckedOut(
                ("push", REMOTE, f"{commit[:12]}:refs/heads/{branch}"),
                f"branch {branch} is checked out in the repository {self.where}, which "
                "refuses to move it under that checkout: check out another branch there "
                "(or set receive.denyCurrentBranch=updateInstead); the branch follows then",
            )
        if "File exists" in message:  # a lock a killed git left in the remote: not a move
            raise GitError(("push", REMOTE, f"{commit[:12]}:refs/heads/{branch}"), message)
        if refused_by_remote(message):
            raise GitError(
                ("push", REMOTE, f"{commit[:12]}:refs/heads/{branch}"),
                f"the repository {self.where} refused the push (a hook or rule of its own, "
                f"which no retry changes): {message}",
            )
        if "stale info" in message or "rejected" in message or "fetch first" in message:
            return False  # the remote moved: read it again and retry
        raise GitError(("push", REMOTE, f"{commit}:refs/heads/{branch}"), message)

    def publish(self, commit: str, ref: str) -> None:
        """Make ``commit`` durable under ``ref`` (pushed to the remote) before it is reported."""
        with self.locked():
            if self.remote:
                git("push", "--quiet", "--force", REMOTE, f"{commit}:{ref}", cwd=self.path)
            # --no-deref: an attempt ref a check made symbolic (before its attempt published
            # under it) is replaced; written through, it moved the ref it named
            git("update-ref", "--no-deref", ref, commit, cwd=self.path)

    # -- reading the branch -----------------------------------------------------------------

    def export(self, commit: str, target: Path) -> int:
        """Write the files of ``commit`` into ``target`` (new or empty); how many."""
        self.require(commit)
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{target} is not a directory: export the run's code into a new one")
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"{target} is not empty: export the run's code into a new directory")
        _refuse_a_git_directory(target)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file on the way (file/sub), no permission
            raise ConfigError(f"cannot create {target}: {exc.strerror or exc}") from None
        # A remote's cache clone is bare: checkout-index needs a work tree, and this is it.
        # The index lives outside it: inside, a file of that name on the branch was
        # written over it and then removed with it.
        with tempfile.TemporaryDirectory(prefix="autopack-export-") as scratch:
            env = {"GIT_INDEX_FILE": str(Path(scratch, "index")), "GIT_WORK_TREE": str(target)}
            git("read-tree", commit, cwd=self.path, env=env)
            git("checkout-index", "--all", cwd=self.path, env=env)
        return len(out("ls-tree", "-r", "--name-only", commit, cwd=self.path).splitlines())


def _refuse_a_git_directory(target: Path) -> None:
    """Refuse a ``target`` inside a git directory (a repository's ``.git``, a bare
    repository): the run's files written into ``.git/refs/heads/out`` were each a broken
    branch of that repository, and every git command there warned of them."""
    existing = next(place for place in (target, *target.parents) if place.is_dir())
    inside = git("rev-parse", "--is-inside-git-dir", cwd=existing, check=False)
    if inside.returncode == 0 and inside.stdout.decode().strip() == "true":
        raise ConfigError(
            f"{target} is inside a git repository's own directory ({existing}), where "
            "git keeps its records: export the run's code into a new directory elsewhere"
        )
