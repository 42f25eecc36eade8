"""The run's repository and worktrees with real git: branches, compare-and-swap, caches.

Everything the executor relies on for "the run's code is a git branch": a repository is
created or refused clearly, the branch only moves forward by compare-and-swap (locally
and through a remote), commits survive in attempt refs, worktrees hold exactly their base,
and a conflict is named.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autopack.errors import ConfigError
from autopack.executor import repolock
from autopack.executor.git import GitError, git
from autopack.executor.integration import Integrator
from autopack.executor.repository import (
    IntegrationConflict,
    RunRepository,
    attempt_ref,
    run_branch,
)
from autopack.executor.source import RepoSource
from autopack.executor.worktrees import Worktrees

BRANCH = run_branch("r1")


def sh(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def project(path: Path, files: dict[str, str]) -> Path:
    """A git repository with one commit holding ``files``."""
    path.mkdir(parents=True)
    sh("init", "-q", "-b", "main", cwd=path)
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    sh("add", "-A", cwd=path)
    sh("commit", "-q", "-m", "start", cwd=path)
    return path


def local(path: Path, cache: Path) -> RunRepository:
    return RunRepository.open(RepoSource(workspace=path), branch=BRANCH, cache_dir=cache)


def checkouts(tmp_path: Path, files: dict[str, str]) -> tuple[Path, RunRepository, Worktrees]:
    """A project holding ``files``, its run repository and a pool of checkouts of it."""
    repo = project(tmp_path / "proj", files)
    repository = local(repo, tmp_path / "cache")
    return (
        repo,
        repository,
        Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60),
    )


def test_a_missing_workspace_becomes_a_repository_with_the_run_branch(tmp_path: Path) -> None:
    repository = local(tmp_path / "ws", tmp_path / "cache")
    head = repository.head()
    assert sh("rev-parse", f"refs/heads/{BRANCH}", cwd=tmp_path / "ws") == head
    assert sh("ls-tree", head, cwd=tmp_path / "ws") == "", "it starts empty"


def test_the_branch_starts_at_the_projects_head(tmp_path: Path) -> None:
    repo = project(tmp_path / "proj", {"README.md": "hello\n"})
    repository = local(repo, tmp_path / "cache")
    assert repository.head() == sh("rev-parse", "main", cwd=repo)
    assert sh("rev-parse", "--abbrev-ref", "HEAD", cwd=repo) == "main", "checkout untouched"


def test_a_directory_with_files_that_is_no_repository_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws/notes.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match="not a git repository"):
        local(tmp_path / "ws", tmp_path / "cache")
    assert (tmp_path / "ws/notes.txt").read_text() == "mine\n"
    assert not (tmp_path / "ws/.git").exists()


def test_a_directory_inside_a_repository_never_makes_it_the_runs_repository(
    tmp_path: Path,
) -> None:
    """An empty autopack-workspaces/RUN inside a project (left by an earlier try) made the
    project's own repository the run's: its branch and commits went there. An empty one
    becomes a repository of the run's own; one holding files is refused, naming the root."""
    repo = project(tmp_path / "proj", {"README.md": "hello\n", "src/a.py": "A = 1\n"})
    empty = repo / "autopack-workspaces" / "r1"
    empty.mkdir(parents=True)
    repository = local(empty, tmp_path / "cache")
    assert repository.path == empty and (empty / ".git").exists()
    assert sh("branch", "--list", BRANCH, cwd=repo) == "", "the project got no run branch"
    with pytest.raises(ConfigError, match=f"inside the git repository {repo}, not its root"):
        local(repo / "src", tmp_path / "cache")


def test_a_workspace_that_cannot_be_made_is_refused_naming_it(tmp_path: Path) -> None:
    """--workspace FILE/ws ended in a NotADirectoryError traceback; --workspace FIFO was
    called "a file"."""
    (tmp_path / "afile").write_text("mine\n")
    os.mkfifo(tmp_path / "pipe")
    refused = {
        tmp_path
        / "afile"
        / "ws": r"afile/ws cannot be made a directory: .*afile above it is a file",
        tmp_path / "afile": r"afile is a file, not a directory",
        tmp_path / "pipe": r"pipe is a FIFO \(named pipe\), not a directory",
        tmp_path / ("x" * 300): r"x{300} cannot be resolved: .*File name too long",
    }
    for workspace, said in refused.items():
        with pytest.raises(ConfigError, match=f"--workspace .*{said}"):
            local(workspace, tmp_path / "cache")
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_a_bare_repository_as_workspace_is_refused_naming_repo(tmp_path: Path) -> None:
    """--workspace BARE.git ended in "git rev-parse --show-toplevel: must be run in a work
    tree" (exit 1): it is named, with the flag that takes it."""
    bare = tmp_path / "code.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    with pytest.raises(ConfigError, match=f"is a bare repository .*--repo {bare}"):
        local(bare, tmp_path / "cache")
    assert sh("for-each-ref", cwd=bare) == "", "nothing was made in it"


def test_a_run_branch_that_cannot_be_made_is_named_with_gits_reason(tmp_path: Path) -> None:
    """A ref lock a killed git left where the run's branch goes: the branch was silently
    not made, and every attempt failed "no branch autopack/r1" (the run with them)."""
    repo = project(tmp_path / "proj", {"a.txt": "a\n"})
    lock = repo / ".git" / "refs" / "heads" / f"{BRANCH}.lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    with pytest.raises(GitError, match=f"update-ref refs/heads/{BRANCH}: .*{lock.name}"):
        local(repo, tmp_path / "cache")
    lock.unlink()
    assert local(repo, tmp_path / "cache").head() == sh("rev-parse", "HEAD", cwd=repo)


def test_advance_moves_forward_by_compare_and_swap_and_refuses_divergence(
    tmp_path: Path,
) -> None:
    repo = project(tmp_path / "proj", {"a.txt": "a\n"})
    repository = local(repo, tmp_path / "cache")
    start = repository.head()
    sh("checkout", "-q", "-b", "work", cwd=repo)
    (repo / "b.txt").write_text("b\n")
    sh("add", "b.txt", cwd=repo)
    sh("commit", "-q", "-m", "b", cwd=repo)
    ahead = sh("rev-parse", "HEAD", cwd=repo)
    repository.advance(ahead)
    assert repository.head() == ahead
    repository.advance(ahead)  # idempotent
    repository.advance(start)  # already past it: left alone
    assert repository.head() == ahead
    sh("checkout", "-q", "--detach", start, cwd=repo)
    (repo / "c.txt").write_text("c\n")
    sh("add", "c.txt", cwd=repo)
    sh("commit", "-q", "-m", "c", cwd=repo)
    elsewhere = sh("rev-parse", "HEAD", cwd=repo)
    with pytest.raises(GitError, match="changed outside Autopack"):
        repository.advance(elsewhere)
    assert repository.head() == ahead


def test_worktrees_hold_exactly_their_base_and_failed_ones_are_kept_then_removed(
    tmp_path: Path,
) -> None:
    repo = project(tmp_path / "proj", {"a.txt": "a\n", ".gitignore": "*.log\n"})
    repository = local(repo, tmp_path / "cache")
    base = repository.head()
    pool = Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
    with pool.checkout(base, "r1-p1-1") as tree:
        assert (tree.path / "a.txt").read_text() == "a\n"
        (tree.path / "junk.log").write_text("ignored junk")
        (tree.path / "untracked.txt").write_text("left over")
        first = tree.path
    with pool.checkout(base, "r1-p2-1") as tree:
        assert tree.path == first, "a clean slot is reused"
        assert sorted(p.name for p in tree.path.iterdir() if p.name != ".git") == [
            ".gitignore",
            "a.txt",
        ], "nothing of the previous attempt is left"
    with pytest.raises(RuntimeError), pool.checkout(base, "r1-p3-1") as tree:
        (tree.path / "a.txt").write_text("half-done\n")
        raise RuntimeError("the attempt failed")
    kept = pool.kept / "r1-p3-1"
    assert (kept / "a.txt").read_text() == "half-done\n", "kept for inspection"
    assert (repo / "a.txt").read_text() == "a\n", "the project's checkout is untouched"
    old = time.time() - 2 * 3600
    os.utime(kept, (old, old))
    Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
    assert not kept.exists(), "removed once older than the configured time"


def test_a_commit_keeps_ignored_deliverables_and_modes(tmp_path: Path) -> None:
    repo = project(tmp_path / "proj", {".gitignore": "*.log\n", "run.sh": "#!/bin/sh\n"})
    (repo / "run.sh").chmod(0o755)
    sh("add", "run.sh", cwd=repo)
    sh("commit", "-q", "-m", "exec", cwd=repo)
    repository = local(repo, tmp_path / "cache")
    pool = Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
    with pool.checkout(repository.head(), "r1-p1-1") as tree:
        (tree.path / "logs").mkdir()
        (tree.path / "logs/app.log").write_text("delivered\n")
        (tree.path / "run.sh").write_text("#!/bin/sh\necho new\n")
        commit = tree.make_commit(["logs/app.log", "run.sh"], "autopack: p1")
    assert sh("show", f"{commit}:logs/app.log", cwd=repo) == "delivered"
    modes = sh("ls-tree", commit, "run.sh", cwd=repo)
    assert modes.startswith("100755"), modes
    assert stat.S_IMODE((repo / "run.sh").stat().st_mode) == 0o755


def test_rebase_replays_a_commit_or_names_the_conflict(tmp_path: Path) -> None:
    repo = project(tmp_path / "proj", {"a.txt": "one\n", "b.txt": "two\n"})
    repository = local(repo, tmp_path / "cache")
    base = repository.head()
    pool = Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
    with pool.checkout(base, "first") as tree:
        (tree.path / "a.txt").write_text("one, first\n")
        moved = tree.make_commit(["a.txt"], "first")
    repository.advance(moved)
    with pool.checkout(base, "second") as tree:
        (tree.path / "b.txt").write_text("two, second\n")
        tree.make_commit(["b.txt"], "second")
        assert tree.rebase(moved) == ["a.txt"]
        rebased = tree.commit
        assert rebased is not None and tree.base == moved
        assert (tree.path / "a.txt").read_text() == "one\n", "rebased on trees, not here"
        tree.sync()
        assert (tree.path / "a.txt").read_text() == "one, first\n"
    assert sh("show", f"{rebased}:a.txt", cwd=repo) == "one, first"
    assert sh("show", f"{rebased}:b.txt", cwd=repo) == "two, second"
    with pool.checkout(base, "third") as tree:
        (tree.path / "a.txt").write_text("one, third\n")
        mine = tree.make_commit(["a.txt"], "third")
        with pytest.raises(IntegrationConflict, match=r"a\.txt"):
            tree.rebase(moved)
        assert tree.commit == mine and tree.base == base, "left as it was"


def test_the_paths_a_branch_changed_are_gits_whoever_made_the_commits(tmp_path: Path) -> None:
    """What a rebase reports the branch changed meanwhile (the recheck decision) is told
    from the commits this process made without git, and must be what ``git diff`` says:
    edits, new files and deletions, along a chain of commits, one of them rebased."""
    repo, repository, pool = checkouts(
        tmp_path, {"a.txt": "a\n", "gone.txt": "x\n", "keep.txt": "k\n"}
    )
    base = repository.head()
    with pool.checkout(base, "one") as tree:
        (tree.path / "a.txt").write_text("a, one\n")
        (tree.path / "gone.txt").unlink()
        first = tree.make_commit(["a.txt", "gone.txt"], "one")
    with pool.checkout(base, "two") as tree:
        (tree.path / "sub").mkdir()
        (tree.path / "sub/new.txt").write_text("new\n")
        tree.make_commit(["sub/new.txt"], "two")
        tree.rebase(first)
        second = tree.commit
    assert second is not None
    told = repository.changed(base, second)
    assert told == sh("diff", "--name-only", base, second, cwd=repo).splitlines()
    assert told == ["a.txt", "gone.txt", "sub/new.txt"]
    fresh = local(repo, tmp_path / "cache")  # knows none of them: asks git
    assert fresh.changed(base, second) == told
    sh("checkout", "-q", "--detach", second, cwd=repo)  # a commit made elsewhere
    (repo / "keep.txt").write_text("k, elsewhere\n")
    sh("commit", "-q", "-am", "elsewhere", cwd=repo)
    elsewhere = sh("rev-parse", "HEAD", cwd=repo)
    assert repository.changed(base, elsewhere) == sorted([*told, "keep.txt"])
    assert repository.changed(first, second) == ["sub/new.txt"]


def test_executors_with_their_own_caches_share_one_remote_branch(tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    one = RunRepository.open(
        RepoSource(remote=str(remote)), branch=BRANCH, cache_dir=tmp_path / "c1"
    )
    two = RunRepository.open(
        RepoSource(remote=str(remote)), branch=BRANCH, cache_dir=tmp_path / "c2"
    )
    assert one.path != two.path
    start = one.head()
    assert two.head() == start, "both see the branch the first created"
    pool = Worktrees(one, tmp_path / "c1/worktrees", keep_failed_minutes=60)
    with pool.checkout(start, "p1") as tree:
        (tree.path / "x.txt").write_text("x\n")
        commit = tree.make_commit(["x.txt"], "p1")
    ref = attempt_ref("r1", "p1", 1)
    one.publish(commit, ref)
    assert sh("rev-parse", ref, cwd=remote) == commit, "durable on the remote before it is used"
    two.advance(commit)  # the other executor integrates it: fetched from the attempt ref
    assert sh("rev-parse", f"refs/heads/{BRANCH}", cwd=remote) == commit
    assert one.head() == commit
    two.advance(commit)  # idempotent


def test_a_commit_holds_the_attempts_files_and_nothing_its_checks_did(tmp_path: Path) -> None:
    """A check may create, stage or even commit things in the checkout: the attempt's
    commit is its base plus exactly its own paths (deleted ones included)."""
    repo, repository, pool = checkouts(tmp_path, {"a.txt": "a\n", "gone.txt": "bye\n"})
    base = repository.head()
    with pool.checkout(base, "p1") as tree:
        (tree.path / "a.txt").write_text("changed\n")
        (tree.path / "gone.txt").unlink()
        (tree.path / "stray.txt").write_text("a check's leftover\n")
        sh("add", "stray.txt", cwd=tree.path)
        sh("commit", "-q", "-m", "a check that commits", cwd=tree.path)
        commit = tree.make_commit(["a.txt", "gone.txt", "never-there.txt"], "autopack: p1")
    assert sh("rev-parse", f"{commit}^", cwd=repo) == base
    assert sh("ls-tree", "-r", "--name-only", commit, cwd=repo).splitlines() == ["a.txt"]
    assert sh("show", f"{commit}:a.txt", cwd=repo) == "changed"


def test_attempts_integrating_at_once_leave_the_branch_at_the_last_accepted_head(
    tmp_path: Path,
) -> None:
    """The branch follows the accepted head without a final sync: the attempts that find
    another one moving the branch leave their head to it, and none is left behind."""
    from bench.worktrees import Acceptor, phase

    repo = project(tmp_path / "proj", {"README.md": "hello\n"})
    repository = local(repo, tmp_path / "cache")
    pool = Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=0)
    integrator = Integrator(repository)
    acceptor = Acceptor(repository.head())
    indexes = iter(range(24))
    taking = threading.Lock()

    def worker() -> None:
        while True:
            with taking:
                index = next(indexes, None)
            if index is None:
                return
            phase(pool, integrator, acceptor, index)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool.close()
    assert sh("rev-parse", f"refs/heads/{BRANCH}", cwd=repo) == acceptor.head
    files = sh("ls-tree", "-r", "--name-only", BRANCH, "out", cwd=repo).splitlines()
    assert sorted(files) == sorted(f"out/p{i}.txt" for i in range(24))
    assert sh("rev-list", "--count", f"main..{BRANCH}", cwd=repo) == "24", "one commit each"


def test_a_change_merged_through_a_rename_is_told_under_the_new_name(tmp_path: Path) -> None:
    """A rebase merges an attempt's edit of a file the branch renamed meanwhile into the
    new name (merge-tree follows renames): the rebased commit changes that name, so a
    later rebase over it must report it (else an attempt touching it skips its recheck)."""
    body = "".join(f"line {n}\n" for n in range(40))
    repo, repository, pool = checkouts(tmp_path, {"old.py": body})
    base = repository.head()
    with pool.checkout(base, "rename") as tree:
        (tree.path / "old.py").rename(tree.path / "new.py")
        renamed = tree.make_commit(["old.py", "new.py"], "rename")
    with pool.checkout(base, "edit") as tree:
        (tree.path / "old.py").write_text(body.replace("line 3\n", "line three\n"))
        tree.make_commit(["old.py"], "edit")
        tree.rebase(renamed)
        edited = tree.commit
    assert edited is not None
    assert "line three" in sh("show", f"{edited}:new.py", cwd=repo), "merged into new.py"
    assert repository.changed(renamed, edited) == ["new.py"]
    fresh = local(repo, tmp_path / "cache")  # knows none of them: asks git
    assert fresh.changed(renamed, edited) == ["new.py"]
    assert fresh.changed(base, renamed) == ["new.py", "old.py"], "both names of a rename"
    assert repository.changed(base, renamed) == ["new.py", "old.py"]


@pytest.mark.parametrize("mark", ["--assume-unchanged", "--skip-worktree"])
def test_a_commit_holds_edits_the_checkouts_index_flags_would_hide(
    tmp_path: Path, mark: str
) -> None:
    """Flags in the checkout's index that make ``git add`` pass a file by (assume-unchanged,
    which core.ignoreStat sets on every file a checkout writes; skip-worktree) must not
    keep an attempt's edit out of its commit, in a new slot or in one a check of the
    previous attempt flagged files in. (A commit index copied from the checkout's lost
    the edit; it is made fresh from the base.)"""
    repo, repository, pool = checkouts(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    base = repository.head()
    sh("config", "core.ignoreStat", "true", cwd=repository.path)
    with pool.checkout(base, "p1") as tree:
        (tree.path / "a.txt").write_text("a, p1\n")
        first = tree.make_commit(["a.txt"], "p1")
        sh("update-index", mark, "b.txt", cwd=tree.path)  # a check's doing
    assert sh("show", f"{first}:a.txt", cwd=repo) == "a, p1"
    sh("config", "--unset", "core.ignoreStat", cwd=repository.path)
    with pool.checkout(base, "p2") as tree:  # the slot p1 left
        (tree.path / "b.txt").write_text("b, p2\n")
        second = tree.make_commit(["b.txt"], "p2")
    assert sh("show", f"{second}:b.txt", cwd=repo) == "b, p2"


@pytest.mark.parametrize("setting", ["true", "conflict", None])
def test_a_file_added_in_a_directory_the_branch_renamed_stays_where_the_attempt_wrote_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    """The deliverables contract names the path; a user's ``merge.directoryRenames`` must
    not move an added file into the directory's new name (the rebased commit would hold a
    path the attempt never named, and its recheck would miss it) nor turn it into a
    conflict that a retry under the same contract would meet again."""
    config = tmp_path / "gitconfig"
    config.write_text(f"[merge]\n\tdirectoryRenames = {setting}\n" if setting else "")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    repo, repository, pool = checkouts(tmp_path, {"a/x.py": "x = 1\n", "a/y.py": "y = 1\n"})
    base = repository.head()
    with pool.checkout(base, "rename") as tree:
        (tree.path / "a").rename(tree.path / "b")
        renamed = tree.make_commit(["a/x.py", "a/y.py", "b/x.py", "b/y.py"], "rename")
    with pool.checkout(base, "add") as tree:
        (tree.path / "a/new.py").write_text("new = 1\n")
        tree.make_commit(["a/new.py"], "add")
        tree.rebase(renamed)
        added = tree.commit
        assert tree.paths == ["a/new.py"]
    assert added is not None
    assert sh("ls-tree", "-r", "--name-only", added, cwd=repo).splitlines() == [
        "a/new.py",
        "b/x.py",
        "b/y.py",
    ]
    assert local(repo, tmp_path / "cache2").changed(renamed, added) == ["a/new.py"]


@pytest.mark.parametrize("remote", ["--upload-pack=touch pwned", "--help", "-c"])
def test_a_remote_that_looks_like_an_option_is_a_repository_name_to_git(
    remote: str, tmp_path: Path
) -> None:
    """--repo / the run file's repository went to `git clone` before `--`: git read
    '--upload-pack=…' as an option (and printed its usage for '--help')."""
    with pytest.raises(GitError) as caught:
        RunRepository.open(RepoSource(remote=remote), branch=BRANCH, cache_dir=tmp_path / "c")
    assert f"repository '{remote}' does not exist" in str(caught.value)
    assert "usage:" not in str(caught.value)


def test_a_pool_forgets_its_own_vanished_checkouts_and_never_a_persons(tmp_path: Path) -> None:
    """``git worktree prune`` at every pool's start also forgot a person's worktree whose
    directory was away for now (an unmounted drive): its index (staged work) and HEAD were
    deleted, and the directory was no repository when it came back."""
    repo, repository, pool = checkouts(tmp_path, {"a.txt": "a\n"})
    with pool.checkout(repository.head(), "r1-p1-1") as tree:
        slot = tree.path
    pool.close()
    sh("worktree", "add", "-q", "-b", "feature", str(tmp_path / "usb/feature"), cwd=repo)
    (tmp_path / "usb/feature/wip.txt").write_text("staged work\n")
    sh("add", "wip.txt", cwd=tmp_path / "usb/feature")
    (tmp_path / "usb").rename(tmp_path / "unmounted")
    left = Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
    with left.checkout(repository.head(), "r1-p2-1") as tree:  # a slot of ours vanishes
        vanished = tree.path
    shutil.rmtree(vanished)
    Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
    (tmp_path / "unmounted").rename(tmp_path / "usb")
    assert sh("status", "--porcelain", cwd=tmp_path / "usb/feature") == "A  wip.txt"
    listed = sh("worktree", "list", "--porcelain", cwd=repo)
    assert str(vanished) not in listed and str(slot) not in listed


def _lock_holder(lock: Path) -> subprocess.Popen[str]:
    """Another executor's process holding the repository lock, as the lock says it."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from autopack.executor.repolock import RepositoryLock; "
            "lock = RepositoryLock(lambda: Path(sys.argv[1])); held = lock.held(); "
            "held.__enter__(); print('held', flush=True); sys.stdin.readline()",
            str(lock.parent),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _end(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait()
    holder.stdin.close()  # type: ignore[union-attr]
    holder.stdout.close()  # type: ignore[union-attr]


def test_a_stopped_lock_holder_is_waited_for_a_while_not_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An executor stopped (SIGSTOP, Ctrl-Z) during a git step kept the repository lock:
    every other executor on the machine waited for it, leases renewed, until it resumed."""
    monkeypatch.setattr(repolock, "PATIENCE_SECONDS", 0.5)
    _, repository, _ = checkouts(tmp_path, {"a.txt": "a\n"})
    holder = _lock_holder(repository.common_dir() / "autopack.lock")
    try:
        holder.send_signal(signal.SIGSTOP)
        moved = threading.Thread(target=lambda: repository.advance(repository.head()))
        moved.start()
        moved.join(timeout=20)
        assert not moved.is_alive(), "waited for the stopped holder"
    finally:
        _end(holder)


def test_a_stopped_lock_holder_is_waited_for_once_not_at_every_git_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Gone on without after the patience, a holder still stopped was waited for again at
    the next git step, and the next: a minute per step (a drain's attempt takes several)
    for every executor on the machine, for as long as it stayed stopped."""
    monkeypatch.setattr(repolock, "PATIENCE_SECONDS", 0.5)
    _, repository, _ = checkouts(tmp_path, {"a.txt": "a\n"})
    holder = _lock_holder(repository.common_dir() / "autopack.lock")
    try:
        holder.send_signal(signal.SIGSTOP)
        with caplog.at_level(logging.WARNING, logger="autopack.executor.repository"):
            for _ in range(3):  # three git steps
                with repository.locked():
                    repository.head()
        waits = [r for r in caplog.records if "repository_lock_skipped" in r.getMessage()]
        assert len(waits) == 1, [r.getMessage() for r in waits]
    finally:
        _end(holder)


def test_a_running_lock_holder_is_waited_for_past_the_patience(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder that runs (a long fetch) keeps the lock: going on beside it after the
    patience ran out would turn its slow git step into another's git_error."""
    monkeypatch.setattr(repolock, "PATIENCE_SECONDS", 0.2)
    _, repository, _ = checkouts(tmp_path, {"a.txt": "a\n"})
    holder = _lock_holder(repository.common_dir() / "autopack.lock")
    try:
        moved = threading.Thread(target=lambda: repository.advance(repository.head()))
        moved.start()
        moved.join(timeout=2)  # ten patiences
        assert moved.is_alive(), "went on beside a running holder"
        holder.stdin.write("\n")  # type: ignore[union-attr]
        holder.stdin.flush()  # type: ignore[union-attr]
        assert holder.wait(timeout=20) == 0
        moved.join(timeout=20)
        assert not moved.is_alive(), "the lock was freed, yet still waited"
    finally:
        _end(holder)


def test_the_paths_a_branch_changed_are_named_as_written_not_as_git_quotes_them(
    tmp_path: Path,
) -> None:
    """``git diff --name-only`` quotes a name outside ASCII (``"\\303\\274.py"``): the
    branch's changes then matched no path an attempt wrote, so a rebase onto another
    phase's change of the same file skipped the checks ``overlap`` asked for."""
    repo, repository, pool = checkouts(tmp_path, {"ü.py": "u = 1\n", "tab\tname.py": "t\n"})
    base = repository.head()
    with pool.checkout(base, "one") as tree:
        (tree.path / "ü.py").write_text("u = 2\n")
        (tree.path / "tab\tname.py").write_text("t = 2\n")
        changed = tree.make_commit(["ü.py", "tab\tname.py"], "one")
    fresh = local(repo, tmp_path / "cache")  # made none of the commits: asks git
    assert fresh.changed(base, changed) == ["tab\tname.py", "ü.py"]


def test_a_commit_is_made_past_an_index_lock_a_killed_git_left_in_the_slot(
    tmp_path: Path,
) -> None:
    """A git step of a commit killed at its timeout leaves the slot's private index
    locked, and every later commit made in the slot failed ``git_error``."""
    _, repository, pool = checkouts(tmp_path, {"a.txt": "a\n"})
    with pool.checkout(repository.head(), "r1-p1-1") as tree:
        (tree.path.parent / f".{tree.path.name}.autopack-index.lock").touch()
        (tree.path / "a.txt").write_text("b\n")
        commit = tree.make_commit(["a.txt"], "one")
    assert sh("show", f"{commit}:a.txt", cwd=repository.path) == "b"


def test_pools_of_processes_with_one_pid_never_take_each_others_slots(tmp_path: Path) -> None:
    """Executors in containers sharing a cache volume are all pid 1: a slot named by the
    pid was each one's "leftover of an earlier process with this pid", removed under the
    other's running attempt. Slots of a pool whose process ended are still removed."""
    _, repository, first = checkouts(tmp_path, {"a.txt": "a\n"})
    base = repository.head()
    with first.checkout(base, "r1-p1-1") as mine:
        (mine.path / "a.txt").write_text("half-written by the first executor\n")
        second = Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
        with second.checkout(base, "r1-p2-1") as theirs:
            assert theirs.path != mine.path
        assert (mine.path / "a.txt").read_text() == "half-written by the first executor\n"
        slot = mine.path
    os.close(first._alive)  # the first executor's process ends
    Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
    assert not slot.exists(), "a dead pool's slot is removed"


def test_a_pool_starting_while_another_sweeps_is_never_taken_for_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drains started together on one cache: a pool's sign of life was created, then
    locked. Another pool's sweep landing between the two found it unlocked, took its owner
    for dead and deleted it; from then on every pool starting on that cache (a restarted
    executor) removed the live pool's slots under its running attempts."""
    _, repository, sweeper = checkouts(tmp_path, {"a.txt": "a\n"})
    real_open = os.open
    swept: list[str] = []

    def open_then_sweep(path: str | Path, flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)
        if flags & os.O_CREAT and Path(path).parent == sweeper.root and not swept:
            swept.append(str(path))
            sweeper._sweep()  # another executor's start, between this pool's two steps
        return fd

    monkeypatch.setattr(os, "open", open_then_sweep)
    starting = Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
    monkeypatch.undo()
    assert swept, "the other pool swept while this one started"
    with starting.checkout(repository.head(), "r1-p1-1") as tree:
        (tree.path / "a.txt").write_text("half-written\n")
        Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60)
        assert (tree.path / "a.txt").read_text() == "half-written\n"


def test_a_closed_pool_lets_go_of_its_descriptor(tmp_path: Path) -> None:
    """Each pool holds a lock on a file while it is open (other executors sharing the cache
    tell it alive by that): a closed one kept the descriptor until the process ended."""
    _, repository, pool = checkouts(tmp_path, {"a.txt": "a\n"})
    pool.close()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        Worktrees(repository, tmp_path / "cache/worktrees", keep_failed_minutes=60).close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_git_in_a_removed_directory_names_it_not_a_missing_git(tmp_path: Path) -> None:
    """An executor's cache removed under a drain (a tmp cleaner, ``rm -rf ~/.cache``) failed
    every attempt saying "git is not installed (no `git` on PATH)": subprocess raises the
    same FileNotFoundError for a missing working directory as for a missing program."""
    gone = tmp_path / "cache" / "repos" / "clone.git"
    with pytest.raises(GitError) as failed:
        git("rev-parse", "--git-dir", cwd=gone)
    assert str(gone) in failed.value.message and "not installed" not in failed.value.message


def test_a_fifo_among_gits_records_of_work_trees_is_passed_over(tmp_path: Path) -> None:
    """A check that made a work tree's ``HEAD`` (or ``gitdir``) record a FIFO: the executor
    looking for checkouts of the run's branch read it, and waited for a writer for ever."""
    from autopack.executor.checkouts import checkouts as checked_out

    repo = project(tmp_path / "proj", {"a.txt": "a\n"})
    for name in ("one", "two"):
        sh("worktree", "add", "-q", "-b", name, str(tmp_path / name), cwd=repo)
    records = repo / ".git" / "worktrees"
    for record in (records / "one" / "HEAD", records / "two" / "gitdir"):
        record.unlink()
        os.mkfifo(record)
    found: list[list[Path]] = []
    looking = threading.Thread(
        target=lambda: found.append(checked_out(repo / ".git", repo, "main")), daemon=True
    )
    looking.start()
    looking.join(timeout=30)
    assert found == [[repo]], "the look ended, finding the main work tree's checkout"
