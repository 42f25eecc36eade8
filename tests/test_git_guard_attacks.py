"""A check (the LLM's code) against Autopack's own git: real drains, real git.

Each test is one way a check got a command of its choosing run by Autopack's git, or
changed the repository every later attempt uses, past the guard of
:mod:`autopack.executor.config_guard`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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


@pytest.mark.parametrize("where", ["shallow", "info/grafts"])
def test_a_fifo_a_check_puts_among_gits_files_never_stops_the_executor(
    tmp_path: Path, where: str
) -> None:
    """A check that made ``shallow`` (or ``info/grafts``) a FIFO: the guard reading it after
    the checks waited for a writer for ever, holding the lock every attempt's checks take,
    and the drain never ended. It is removed now, and the attempt fails saying so."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    fifo = f"mkdir -p {COMMON}/info && mkfifo {COMMON}/{where}"
    phases = [phase("b", ["pkg/b.py"], checks=[fifo], max_attempts=1), phase("c", ["pkg/c.py"])]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(tmp_path, [line(p, 1, files(**{f"{p}_py": f"{p} = 1\n"})) for p in "bc"])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path, timeout=90)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_config_changed_by_checks")
    assert "a FIFO (named pipe)" in json.dumps(first), first
    assert not (ws / ".git" / where).exists()
    assert on_branch(ws, "pkg/c.py") == "c = 1\n"


@pytest.mark.parametrize("target", ["workspace", "worktree"])
def test_a_check_that_replaces_its_checkout_by_a_link_to_a_persons_tree_leaves_it_whole(
    tmp_path: Path, target: str
) -> None:
    """A check moved its checkout away and put a link to the person's work tree (the
    workspace itself, or a ``git worktree`` of theirs) in its place. The guard, putting
    the checkout's ``.git`` file back, removed the workspace's whole ``.git`` directory
    (the repository, the run's branch and every accepted commit), or pointed the person's
    worktree at Autopack's checkout (their branch, HEAD and index gone)."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {".gitignore": "*.local\n", "README": "start\n"})
    person = ws
    if target == "worktree":
        person = tmp_path / "view"
        git("worktree", "add", "-q", str(person), "-b", "mine", cwd=ws)
    (person / "README").write_text("the person's edit\n")
    (person / "mine.local").write_text("ignored, the person's\n")
    dot_git = (person / ".git").read_bytes() if target == "worktree" else None
    swap = f'd=$PWD; cd .. && mv "$d" "$d.moved" && ln -s {person} "$d"'
    create_run(
        run_file(tmp_path, [phase("a", ["pkg/a.py"], checks=[swap], max_attempts=1)]),
        env,
        tmp_path,
    )
    tape = cassette(tmp_path, [line("a", 1, files(a_py="A = 1\n"))])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert (ws / ".git").is_dir(), "the workspace's repository was removed"
    if dot_git is not None:
        assert (person / ".git").read_bytes() == dot_git
    assert git("symbolic-ref", "HEAD", cwd=person) == f"refs/heads/{'mine' if dot_git else 'main'}"
    assert (person / "README").read_text() == "the person's edit\n"
    assert (person / "mine.local").read_text() == "ignored, the person's\n"
    [attempt] = attempts(url, "a")
    assert (attempt["outcome"], attempt["stop_reason"]) == ("FAILED", "checkout_replaced_by_checks")
    assert attempt["commit_sha"] is None
    assert on_branch(ws, "pkg/a.py") is None


@pytest.mark.parametrize("kind", ["a symbolic link", "a FIFO (named pipe)", "a directory"])
def test_autopacks_lock_file_is_never_written_through_what_replaced_it(
    tmp_path: Path, kind: str
) -> None:
    """Every executor writes its pid into ``autopack.lock`` in the repository's git
    directory, which a check can write: a symlink put there had the file it led to
    truncated and overwritten by the next drain; a FIFO or a directory failed it with a
    traceback."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    lock = ws / ".git" / "autopack.lock"
    if kind == "a symbolic link":
        lock.symlink_to(precious)
    elif kind == "a directory":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    create_run(run_file(tmp_path, [phase("a", ["pkg/a.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("a", 1, files(a_py="a = 1\n"))])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path, timeout=90)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, said[-3000:]
    assert f"{lock} is {kind}" in said and "Traceback" not in said, said[-3000:]
    assert precious.read_text() == "keep me\n"
    assert phase_row(url, "a")["state"] == "QUEUED" and attempts(url, "a") == []
