"""A check (the LLM's code) against Autopack's own git: real drains, real git.

Each test is one way a check got a command of its choosing run by Autopack's git, or
changed the repository every later attempt uses, past the guard of
:mod:`autopack.executor.config_guard`.
"""

from __future__ import annotations

import json
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    drain,
    env_for,
    files,
    git,
    line,
    on_branch,
    phase,
    phase_row,
    repository,
    run_file,
)

RUN = "exec-run"


def _args(ws: Path, tape: Path, *extra: str) -> list[str]:
    return [
        *("run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)),
        *("--workspace", str(ws), *extra),
    ]


def _hook(tmp_path: Path) -> tuple[Path, Path]:
    leak = tmp_path / "leak"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nenv >> {leak}\n")
    hook.chmod(0o755)
    return hook, leak


def test_a_check_run_again_after_a_rebase_cannot_configure_git(tmp_path: Path) -> None:
    """With ``recheck_after_rebase``, the checks ran a second time after the rebase, and
    that run was not guarded: the configuration it wrote stayed, for every later git."""
    hook, leak = _hook(tmp_path)
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    ran = tmp_path / "ran-once"
    waits = tmp_path / "wait_for_a.py"
    waits.write_text(
        f"import sqlite3, time\ndb = sqlite3.connect({str(tmp_path / 'autopack.db')!r})\n"
        "while not db.execute(\"SELECT 1 FROM phases WHERE phase_id = 'a' AND state = "
        "'COMPLETE'\").fetchone():\n    time.sleep(0.05)\n"
    )
    again = f"git config core.fsmonitor {hook}"
    check = f"if [ -e {ran} ]; then {again}; else touch {ran}; python {waits}; fi"
    phases = [
        phase("a", ["pkg/a.py"]),
        phase("b", ["pkg/b.py"], checks=[check], max_attempts=1),
        phase("c", ["pkg/c.py"]),
    ]
    create_run(run_file(tmp_path, phases, policy={"recheck_after_rebase": "always"}), env, tmp_path)
    tape = cassette(
        tmp_path,
        [
            line("a", 1, files(a_py="A = 1\n")),
            line("b", 1, files(b_py="B = 1\n")),
            line("c", 1, files(c_py="C = 1\n")),
        ],
    )
    done = drain(*_args(ws, tape, "--concurrency", "2"), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert ran.exists()
    assert "fsmonitor" not in git("config", "--list", "--local", cwd=ws)
    assert not leak.exists(), "a command a check configured ran in Autopack's git"
    [b] = attempts(url, "b")
    assert (b["outcome"], b["stop_reason"]) == ("FAILED", "git_config_changed_by_checks")
    assert on_branch(ws, "pkg/b.py") is None


COMMON = "$(git rev-parse --path-format=absolute --git-common-dir)"
BORROW = f"echo {COMMON}/objects > {{evil}}/objects/info/alternates"
ELSEWHERE = {
    "git file": "echo 'gitdir: {evil}' > .git",
    "commondir": "echo {evil} > $(git rev-parse --git-dir)/commondir",
    "shared commondir": f"echo {{evil}} > {COMMON}/commondir",
    "git directory": "rm .git && cp -r {evil} .git",
}


@pytest.mark.parametrize("how", sorted(ELSEWHERE))
def test_a_check_that_points_the_checkout_at_another_repository_runs_nothing(
    tmp_path: Path, how: str
) -> None:
    """A checkout's ``.git`` is a file naming its repository (whose ``commondir`` names
    the shared one); a check that pointed either at a repository of its own (with a
    ``core.fsmonitor``, the objects borrowed) had Autopack's commit run its command."""
    hook, leak = _hook(tmp_path)
    evil = repository(tmp_path / "evil") / ".git"
    git("config", "core.fsmonitor", str(hook), cwd=evil.parent)
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    check = f"{BORROW} && {ELSEWHERE[how]}".format(evil=evil)
    phases = [phase("a", ["pkg/a.py"], checks=[check], max_attempts=1), phase("b", ["pkg/b.py"])]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path, [line("a", 1, files(a_py="A = 1\n")), line("b", 1, files(b_py="B = 1\n"))]
    )
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not leak.exists(), "a command a check configured ran in Autopack's git"
    assert on_branch(ws, "pkg/b.py") == "B = 1\n"
    assert phase_row(url, "b")["state"] == "COMPLETE"
    [first] = attempts(url, "a")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_config_changed_by_checks")


def test_a_config_replaced_by_a_link_to_the_same_settings_is_put_back(tmp_path: Path) -> None:
    """The guard compared contents: a link to a copy (which anything may change later,
    outside any check) passed as the same configuration and stayed."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    copy = tmp_path / "copy"
    config = "$(git rev-parse --path-format=absolute --git-common-dir)/config"
    check = f"cp {config} {copy} && ln -sf {copy} {config}"
    create_run(
        run_file(tmp_path, [phase("a", ["pkg/a.py"], checks=[check], max_attempts=1)]),
        env,
        tmp_path,
    )
    tape = cassette(tmp_path, [line("a", 1, files(a_py="A = 1\n"))])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert copy.exists()
    assert not (ws / ".git" / "config").is_symlink()
    [first] = attempts(url, "a")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_config_changed_by_checks")


def test_a_check_that_replaces_a_commit_changes_no_later_commit(tmp_path: Path) -> None:
    """``git replace`` (a ref any check may write) makes git read another object in place
    of a commit: Autopack's next commit, made from the head's tree, took the check's tree,
    and a completed phase's file left the branch in a commit no one made."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    fake = "git rm -q --cached pkg/a.py && c=$(git commit-tree $(git write-tree) -m fake)"
    check = f"{fake} && git replace HEAD $c && exit 1"
    phases = [
        phase("a", ["pkg/a.py"]),
        phase("b", ["pkg/b.py"], checks=[check], max_attempts=1),
        phase("c", ["pkg/c.py"]),
    ]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(tmp_path, [line(p, 1, files(**{f"{p}_py": f"{p} = 1\n"})) for p in "abc"])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert phase_row(url, "c")["state"] == "COMPLETE"
    real = git("--no-replace-objects", "ls-tree", "-r", "--name-only", f"autopack/{RUN}", cwd=ws)
    assert real.splitlines() == ["pkg/a.py", "pkg/c.py", "pkg/keep.py"]


def test_a_passing_checks_index_flags_leave_no_file_to_the_next_attempt(tmp_path: Path) -> None:
    """A completed attempt's checkout is reused. A check that changed a file it did not
    write and hid the change from git (``--skip-worktree``) had it survive the switch
    to the next base: the next phase's edit of that file committed the check's lines."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    hide = "echo 'STOLEN = 1' >> pkg/keep.py && git update-index --skip-worktree pkg/keep.py"
    phases = [
        phase("a", ["pkg/a.py"], checks=[hide]),
        phase("b", ["pkg/keep.py"]),
    ]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    edit = {"path": "pkg/keep.py", "search": "K = 1\n", "replace": "K = 2\n"}
    answer = json.dumps({"files": [], "edits": [edit], "summary": "edit"})
    tape = cassette(tmp_path, [line("a", 1, files(a_py="A = 1\n")), line("b", 1, answer)])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert phase_row(url, "a")["state"] == "COMPLETE"
    assert on_branch(ws, "pkg/keep.py") == "K = 2\n"


def test_grafts_a_check_writes_are_put_back(tmp_path: Path) -> None:
    """``info/grafts`` (a file any check may write) rewrites parents: grafting the branch's
    new head under the attempt's base made the rebase of every attempt fail as an
    ``integration_conflict`` ("unknown files"), for as long as the file stayed; and every
    git of the user's read the rewritten history."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    waits = tmp_path / "wait_for_a.py"
    waits.write_text(
        f"import sqlite3, time\ndb = sqlite3.connect({str(tmp_path / 'autopack.db')!r})\n"
        "while not db.execute(\"SELECT 1 FROM phases WHERE phase_id = 'a' AND state = "
        "'COMPLETE'\").fetchone():\n    time.sleep(0.05)\n"
    )
    graft = f'echo "$(git rev-parse HEAD) $(git rev-parse autopack/{RUN})" > {COMMON}/info/grafts'
    once = tmp_path / "grafted"
    check = (
        f"[ -e {once} ] || {{ touch {once}; python {waits} && mkdir -p {COMMON}/info && {graft}; }}"
    )
    phases = [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"], checks=[check])]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [
            line("a", 1, files(a_py="a = 1\n")),
            *(line("b", n, files(b_py="b = 1\n")) for n in (1, 2)),
        ],
    )
    done = drain(*_args(ws, tape, "--concurrency", "2"), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    first = attempts(url, "b")[0]
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_config_changed_by_checks")
    assert not (ws / ".git" / "info" / "grafts").exists()
    assert on_branch(ws, "pkg/a.py") == "a = 1\n"
    assert on_branch(ws, "pkg/b.py") == "b = 1\n"


def test_autopacks_git_reads_no_grafts(tmp_path: Path) -> None:
    """While a check's grafts are in place (until its checks end), the attempts beside it
    run Autopack's git: which must read the real parents, not the grafted ones."""
    from autopack.executor.git import out

    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    first = git("rev-parse", "HEAD", cwd=ws)
    git("commit", "-q", "--allow-empty", "-m", "second", cwd=ws)
    second = git("rev-parse", "HEAD", cwd=ws)
    (ws / ".git" / "info").mkdir(exist_ok=True)
    (ws / ".git" / "info" / "grafts").write_text(f"{second}\n")  # as if it had no parent
    assert git("rev-list", "--count", "HEAD", cwd=ws) == "1"  # git as the user runs it
    assert out("rev-list", "HEAD", cwd=ws).split() == [second, first]


_EVIL = "c=$(git -c user.name=x -c user.email=x@x commit-tree HEAD^{tree} -p {parent} -m evil)"


def test_a_check_that_moves_the_run_branch_lands_nothing_on_it(tmp_path: Path) -> None:
    """A check could move a local workspace's run branch to a commit of its own, made on
    the accepted head: Autopack found the branch "past" the head it was asked to reach and
    left it there, so the branch carried a commit the control plane never accepted (no
    Builder, no audit), and every later phase's commit was made beside it, not on it."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    branch = f"refs/heads/autopack/{RUN}"
    move = _EVIL.replace("{parent}", branch) + f" && git update-ref {branch} $c"
    phases = [
        phase("a", ["pkg/a.py"]),
        phase("b", ["pkg/b.py"], checks=[move]),
        phase("c", ["pkg/c.py"]),
    ]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [
            line("a", 1, files(a_py="A = 1\n")),
            line("b", 1, files(b_py="B = 1\n")),
            line("b", 2, files(b_py="B = 2\n")),
            line("c", 1, files(c_py="C = 1\n")),
        ],
    )
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    first = attempts(url, "b")[0]
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert f"autopack/{RUN}" in first["feedback"]
    log = git("log", "--format=%s", f"autopack/{RUN}", cwd=ws)
    assert "evil" not in log
    assert phase_row(url, "c")["state"] == "COMPLETE"
    assert on_branch(ws, "pkg/c.py") == "C = 1\n"


def _a_then_b(tmp_path: Path, check: str, *extra: str) -> tuple[str, Path, CompletedProcess[str]]:
    """Drain phase ``a``, then ``b`` (one attempt) whose check is ``check``: the database
    URL, the workspace and the drain's process."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    phases = [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"], checks=[check], max_attempts=1)]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path, [line("a", 1, files(a_py="A = 1\n")), line("b", 1, files(b_py="B = 1\n"))]
    )
    return url, ws, drain(*_args(ws, tape, *extra), env=env, cwd=tmp_path)


def test_a_check_that_deletes_the_runs_refs_has_them_put_back(tmp_path: Path) -> None:
    """A check deleting the run's branch and a completed attempt's ref (``git update-ref
    -d``) left the completed commits reachable from nothing in a local workspace: the
    next ``git gc`` of the user's repository deleted the run's work."""
    drop = (
        f"git update-ref -d refs/heads/autopack/{RUN} && "
        f"git update-ref -d refs/autopack/attempts/{RUN}/a/1"
    )
    url, ws, done = _a_then_b(tmp_path, drop)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert f"refs/autopack/attempts/{RUN}/a/1" in first["feedback"]
    assert on_branch(ws, "pkg/a.py") == "A = 1\n"
    assert git("rev-parse", f"refs/autopack/attempts/{RUN}/a/1", cwd=ws) == git(
        "rev-parse", f"autopack/{RUN}", cwd=ws
    )


def test_the_branch_moving_on_while_checks_run_is_not_the_checks_doing(tmp_path: Path) -> None:
    """Attempts beside one whose checks run integrate meanwhile: the branch moving to the
    head the control plane accepted is Autopack's own move, not put back (a guard that
    put back every move failed each attempt that ran checks beside another)."""
    branch = f"refs/heads/autopack/{RUN}"
    wait = f"for i in $(seq 600); do git cat-file -e {branch}:pkg/a.py && exit 0; sleep 0.05; done"
    url, ws, done = _a_then_b(tmp_path, wait + "; exit 1", "--concurrency", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [a["stop_reason"] for a in attempts(url, "b")] == ["completed"]
    assert on_branch(ws, "pkg/a.py") == "A = 1\n"
    assert on_branch(ws, "pkg/b.py") == "B = 1\n"


def test_a_branch_a_check_deleted_and_blocked_is_named_not_silently_lost(tmp_path: Path) -> None:
    """A check that deleted the branch and left a ref in its way (``BRANCH/x``: git keeps
    refs as files, and the branch's would be their directory) keeps it from being put
    back: the attempt's feedback says so, with git's reason, and the run goes on from the
    accepted head (the control plane's, not the missing branch's)."""
    branch = f"refs/heads/autopack/{RUN}"
    drop = f"git update-ref -d {branch} && git update-ref {branch}/x HEAD"
    url, _, done = _a_then_b(tmp_path, drop)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert "deleted (not put back:" in first["feedback"] and f"{branch}/x" in first["feedback"]
    assert phase_row(url, "a")["state"] == "COMPLETE"


def _remote_a_then_b(
    tmp_path: Path, check: str, *extra: str
) -> tuple[str, Path, CompletedProcess[str]]:
    """:func:`_a_then_b` for a run kept in a bare remote (``--repo``): the database URL,
    the remote and the drain's process."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(remote), cwd=tmp_path)
    phases = [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"], checks=[check], max_attempts=1)]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path, [line("a", 1, files(a_py="A = 1\n")), line("b", 1, files(b_py="B = 1\n"))]
    )
    args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    return url, remote, drain(*args, "--repo", str(remote), *extra, env=env, cwd=tmp_path)


def test_a_check_that_pushes_over_a_remote_runs_branch_lands_nothing_on_it(
    tmp_path: Path,
) -> None:
    """The remote's credentials are the executor user's, so the check's too: a check
    pushing a commit of its own over the run's branch on the remote (``git push origin``
    from its checkout of the cache) had it stay there, "past" the accepted head."""
    branch = f"refs/heads/autopack/{RUN}"
    push = _EVIL.replace("{parent}", "HEAD") + f" && git push -q -f origin $c:{branch}"
    url, remote, done = _remote_a_then_b(tmp_path, push)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert "evil" not in git("log", "--format=%s", branch, cwd=remote)
    assert on_branch(remote, "pkg/a.py") == "A = 1\n"


def test_a_check_that_deletes_a_remote_runs_refs_has_them_pushed_back(tmp_path: Path) -> None:
    """Deleting the run's branch and a completed attempt's ref on the remote left the
    run's completed commit reachable from no ref there."""
    drop = f"git push -q origin :refs/heads/autopack/{RUN} :refs/autopack/attempts/{RUN}/a/1"
    url, remote, done = _remote_a_then_b(tmp_path, drop)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert f"refs/autopack/attempts/{RUN}/a/1 deleted" in first["feedback"]
    assert on_branch(remote, "pkg/a.py") == "A = 1\n"
    assert git("rev-parse", f"refs/autopack/attempts/{RUN}/a/1", cwd=remote) == git(
        "rev-parse", f"autopack/{RUN}", cwd=remote
    )


def test_a_remote_runs_branch_moving_on_while_checks_run_is_left_there(tmp_path: Path) -> None:
    """The remote's branch moving to the accepted head while a check runs (the attempt
    beside it integrating) is Autopack's own move, on a remote as in a workspace."""
    remote, branch = tmp_path / "remote.git", f"refs/heads/autopack/{RUN}"
    seen = f"git --git-dir={remote} cat-file -e {branch}:pkg/a.py"
    wait = f"for i in $(seq 600); do {seen} && exit 0; sleep 0.05; done; exit 1"
    url, _, done = _remote_a_then_b(tmp_path, wait, "--concurrency", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [a["stop_reason"] for a in attempts(url, "b")] == ["completed"]
    assert on_branch(remote, "pkg/a.py") == "A = 1\n" and on_branch(remote, "pkg/b.py") == "B = 1\n"


_LOCKS = "$(git rev-parse --path-format=absolute --git-common-dir)/refs"
LOCKED = {
    "the branch": f"touch {_LOCKS}/heads/autopack/{RUN}.lock",
    "the branch, deleted": f"git update-ref -d refs/heads/autopack/{RUN} && "
    f"mkdir -p {_LOCKS}/heads/autopack && touch {_LOCKS}/heads/autopack/{RUN}.lock",
    "a later phase's attempt refs": f"mkdir -p {_LOCKS}/autopack/attempts/{RUN}/c && "
    f"for n in 1 2; do touch {_LOCKS}/autopack/attempts/{RUN}/c/$n.lock; done",
}


@pytest.mark.parametrize("which", sorted(LOCKED))
def test_a_lock_a_check_left_on_the_runs_refs_is_removed(tmp_path: Path, which: str) -> None:
    """git refuses to write a ref whose lock file exists. One a check left on the branch
    stopped the branch following the accepted head for the rest of the run, silently (the
    drain said it was at a head it was not); one on a later phase's attempt ref failed
    that phase ``git_error`` each time it was tried, and the run with it."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    phases = [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"], checks=[LOCKED[which]])]
    phases.append(phase("c", ["pkg/c.py"], max_attempts=2))
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [line(p, n, files(**{f"{p}_py": f"{p} = {n}\n"})) for p in "abc" for n in (1, 2)],
    )
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    first = attempts(url, "b")[0]
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert ".lock left on a ref" in first["feedback"]
    assert [a["stop_reason"] for a in attempts(url, "c")] == ["completed"]
    assert on_branch(ws, "pkg/c.py") == "c = 1\n"
    assert git("rev-parse", f"autopack/{RUN}", cwd=ws) == json.loads(done.stdout)["branch_head"]


_SYMREF = f"git symbolic-ref refs/heads/autopack/{RUN} refs/heads/main"
_AFTER_A = f"until git cat-file -e refs/heads/autopack/{RUN}:pkg/a.py; do sleep 0.05; done"
SYMBOLIC = {  # what b's check runs; how b's first attempt ends; a's answer delayed
    "the branch": (_SYMREF, "FAILED", False),
    "the branch, as a advances it": (
        f"{_SYMREF} && timeout 60 sh -c '{_AFTER_A}'",
        "COMPLETE",
        True,
    ),
    "an attempt ref to come": (
        f"for n in 1 2 3; do git symbolic-ref refs/autopack/attempts/{RUN}/b/$n refs/heads/main; "
        "done",
        "COMPLETE",
        False,
    ),
}


@pytest.mark.parametrize("which", sorted(SYMBOLIC))
def test_a_run_ref_made_symbolic_moves_no_other_branch(tmp_path: Path, which: str) -> None:
    """git writes through a symbolic ref: a check that made the run's branch (or the attempt
    ref its attempt publishes under) name the person's ``main`` had Autopack move ``main``
    to the run's commits, its checkout left behind (``git status`` there showing the run's
    files as staged deletions). Pointing at an older commit, the branch passed as "on the
    accepted line"; an attempt beside the check's advanced ``main`` while it ran."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    start = git("rev-parse", "main", cwd=ws)
    check, outcome, beside = SYMBOLIC[which]
    phases = [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"], checks=[check])]
    phases.append(phase("c", ["pkg/c.py"]))
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [
            line(p, n, files(**{f"{p}_py": f"{p} = {n}\n"}), latency_ms=1500 if p == "a" else 0)
            for p in "abc"
            for n in (1, 2)
        ],
    )
    extra = ("--concurrency", "2", "--replay-speed", "1") if beside else ()
    done = drain(*_args(ws, tape, *extra), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    first = attempts(url, "b")[0]
    assert first["outcome"] == outcome
    if outcome == "FAILED":
        assert first["stop_reason"] == "git_refs_changed_by_checks"
        assert "symbolic ref to refs/heads/main" in first["feedback"]
    assert git("rev-parse", "main", cwd=ws) == start
    assert git("status", "--porcelain", cwd=ws) == ""
    symbolic = git("for-each-ref", "--format=%(symref)", f"refs/heads/autopack/{RUN}", cwd=ws)
    assert symbolic == ""
    assert on_branch(ws, "pkg/c.py") == "c = 1\n"


def test_a_check_that_checks_out_the_branch_leaves_no_checkout_holding_it(
    tmp_path: Path,
) -> None:
    """A check ran ``git checkout autopack/RUN`` in its checkout and failed: the checkout,
    kept for inspection (an hour), had the branch checked out with the attempt's files in
    it, which refused to follow the branch (an untracked ``pkg/b.py`` in the way), so
    the branch stayed behind every later accepted head for as long."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    once = tmp_path / "once"
    check = f"[ -e {once} ] || {{ touch {once} && git checkout -q autopack/{RUN} && exit 1; }}"
    phases = [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"], checks=[check])]
    phases.append(phase("c", ["pkg/c.py"]))
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [line(p, n, files(**{f"{p}_py": f"{p} = {n}\n"})) for p in "abc" for n in (1, 2)],
    )
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    first = attempts(url, "b")[0]
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert "checked out in the attempt's checkout" in first["feedback"]
    assert json.loads(done.stdout)["branch_waits"] is None
    assert on_branch(ws, "pkg/b.py") == "b = 2\n"
    assert on_branch(ws, "pkg/c.py") == "c = 1\n"


def test_a_check_that_moves_the_branch_back_leaves_no_completed_work_off_it(
    tmp_path: Path,
) -> None:
    """An older accepted head passed as "on the accepted line": a check that moved the
    branch back to where the run started, then failed, ended the drain with the completed
    phase's commit off the branch, while its summary said the branch was at it."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    back = f"git update-ref refs/heads/autopack/{RUN} refs/heads/main; exit 1"
    phases = [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"], checks=[back], max_attempts=1)]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path, [line("a", 1, files(a_py="A = 1\n")), line("b", 1, files(b_py="B = 1\n"))]
    )
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert on_branch(ws, "pkg/a.py") == "A = 1\n"
    assert git("rev-parse", f"autopack/{RUN}", cwd=ws) == json.loads(done.stdout)["branch_head"]


def test_a_branch_put_back_while_another_attempt_advanced_it_keeps_its_commit(
    tmp_path: Path,
) -> None:
    """A check that waited for an attempt beside it to be accepted (the branch moved to
    its commit) and then moved the branch had it put back where it was before the checks:
    behind that commit, which the executor, having moved the branch there, did not look
    at again. The drain ended with the accepted phase's commit off the branch."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    branch = f"refs/heads/autopack/{RUN}"
    wait = f"until git cat-file -e {branch}:pkg/a.py; do sleep 0.05; done"
    move = _EVIL.replace("{parent}", branch) + f" && git update-ref {branch} $c"
    check = f"timeout 60 sh -c '{wait}' && {move}; exit 1"
    phases = [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"], checks=[check], max_attempts=1)]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [
            line("a", 1, files(a_py="A = 1\n"), latency_ms=1500),
            line("b", 1, files(b_py="B = 1\n")),
        ],
    )
    done = drain(
        *_args(ws, tape, "--concurrency", "2", "--replay-speed", "1"), env=env, cwd=tmp_path
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert on_branch(ws, "pkg/a.py") == "A = 1\n"
    assert "evil" not in git("log", "--format=%s", f"autopack/{RUN}", cwd=ws)
    assert git("rev-parse", f"autopack/{RUN}", cwd=ws) == json.loads(done.stdout)["branch_head"]


def test_a_branch_put_back_waits_for_a_persons_checkout_of_it(tmp_path: Path) -> None:
    """The branch a check moved is brought up to the accepted head the way Autopack moves
    it: a person's checkout of the branch, whose changes keep it from following, keeps the
    branch waiting. Written straight to the accepted head, the branch left that checkout
    behind, ``git status`` there showing the accepted phase's change reversed and staged."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    git("checkout", "-q", "-b", f"autopack/{RUN}", cwd=ws)
    (ws / "pkg" / "keep.py").write_text("K = 9\n")
    branch = f"refs/heads/autopack/{RUN}"
    move = _EVIL.replace("{parent}", branch) + f" && git update-ref {branch} $c"
    edit = {"path": "pkg/keep.py", "search": "K = 1\n", "replace": "K = 2\n"}
    phases = [phase("a", ["pkg/keep.py"]), phase("b", ["pkg/b.py"], checks=[move], max_attempts=1)]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    answer = json.dumps({"files": [], "edits": [edit], "summary": "edit"})
    tape = cassette(tmp_path, [line("a", 1, answer), line("b", 1, files(b_py="B = 1\n"))])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert git("status", "--porcelain", cwd=ws) == "M pkg/keep.py"
    assert json.loads(done.stdout)["branch_waits"]


def test_a_shallow_file_a_check_writes_is_put_back(tmp_path: Path) -> None:
    """``shallow`` (a file any check may write) cuts history at the commits it lists, for
    every git reading the repository afterwards, Autopack's too (a real shallow clone
    needs the file, so git cannot be told to ignore it): it stayed, and the user's `git
    log` of the run's branch ended at the accepted head listed there, shown as grafted."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    cut = f"git rev-parse autopack/{RUN} > {COMMON}/shallow"
    phases = [
        phase("a", ["pkg/a.py"]),
        phase("b", ["pkg/b.py"], checks=[cut], max_attempts=1),
        phase("c", ["pkg/c.py"]),
        phase("d", ["pkg/d.py"]),
    ]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(tmp_path, [line(p, 1, files(**{f"{p}_py": f"{p} = 1\n"})) for p in "abcd"])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_config_changed_by_checks")
    assert not (ws / ".git" / "shallow").exists()
    assert [on_branch(ws, f"pkg/{p}.py") for p in "acd"] == ["a = 1\n", "c = 1\n", "d = 1\n"]
