"""A check (the LLM's code) against the run's refs: real drains, real git.

Each test is one way a check moved, deleted or blocked the run's branch or attempt refs,
in a local workspace or on a remote, past the guard of :mod:`autopack.executor.ref_guard`
(or one way the guard mistook Autopack's own moves for a check's).
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
from tests.test_git_guard_attacks import RUN, _args

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


DELETES = {  # b's check, deleting the run's branch and a's attempt ref, where they live
    "workspace": f"git update-ref -d refs/heads/autopack/{RUN} && "
    f"git update-ref -d refs/autopack/attempts/{RUN}/a/1",
    "remote": f"git push -q origin :refs/heads/autopack/{RUN} :refs/autopack/attempts/{RUN}/a/1",
}


@pytest.mark.parametrize("where", sorted(DELETES))
def test_a_check_that_deletes_the_runs_refs_has_them_put_back(tmp_path: Path, where: str) -> None:
    """A check deleting the run's branch and a completed attempt's ref (``git update-ref
    -d``, or a push deleting them on the remote) left the completed commits reachable from
    nothing there: the next ``git gc`` deleted the run's work."""
    drain_a_then_b = _a_then_b if where == "workspace" else _remote_a_then_b
    url, repo, done = drain_a_then_b(tmp_path, DELETES[where])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [first] = attempts(url, "b")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert f"refs/autopack/attempts/{RUN}/a/1 deleted" in first["feedback"]
    assert on_branch(repo, "pkg/a.py") == "A = 1\n"
    assert git("rev-parse", f"refs/autopack/attempts/{RUN}/a/1", cwd=repo) == git(
        "rev-parse", f"autopack/{RUN}", cwd=repo
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


def _b_checks_before_c(
    tmp_path: Path, check: str, *extra: str
) -> tuple[str, Path, CompletedProcess[str]]:
    """Drain phases ``a``, ``b`` (its check ``check``) and ``c``, each with two answers
    (``P = N`` in ``pkg/P.py`` for attempt N): the database URL, the workspace and the
    drain's process."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    phases = [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"], checks=[check])]
    phases.append(phase("c", ["pkg/c.py"], max_attempts=2))
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [line(p, n, files(**{f"{p}_py": f"{p} = {n}\n"})) for p in "abc" for n in (1, 2)],
    )
    return url, ws, drain(*_args(ws, tape, *extra), env=env, cwd=tmp_path)


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
    url, ws, done = _b_checks_before_c(tmp_path, LOCKED[which])
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
    once = tmp_path / "once"
    check = f"[ -e {once} ] || {{ touch {once} && git checkout -q autopack/{RUN} && exit 1; }}"
    url, ws, done = _b_checks_before_c(tmp_path, check)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    first = attempts(url, "b")[0]
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert "checked out in Autopack's checkout slot-" in first["feedback"]
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


def test_a_check_that_checks_out_the_branch_in_another_attempts_checkout_holds_nothing(
    tmp_path: Path,
) -> None:
    """A check writing ``ref: refs/heads/autopack/RUN`` into the ``HEAD`` of the checkout
    beside its own (another attempt's, ``--concurrency 2``) had that attempt fail
    ``git_error``, and its kept checkout, holding its files, hold the branch back behind
    every later accepted head (the drain's summary said it waited). The check waits for
    c's estimate, made in c's checkout once it is switched to its base (c's claim comes
    first: a HEAD written before that switch was undone by it, and nothing held)."""
    waits = tmp_path / "wait_for_c.py"
    waits.write_text(
        f"import sqlite3, time\ndb = sqlite3.connect({str(tmp_path / 'autopack.db')!r})\n"
        "while not db.execute(\"SELECT 1 FROM token_estimation_v2_events WHERE phase_id = 'c'\")"
        ".fetchone():"
        "\n    time.sleep(0.05)\n"
    )
    hold = (
        "me=$(git rev-parse --absolute-git-dir); "
        "for d in $(git rev-parse --path-format=absolute --git-common-dir)/worktrees/*; do "
        f'[ "$d" = "$me" ] || echo \'ref: refs/heads/autopack/{RUN}\' > $d/HEAD; done'
    )
    once = tmp_path / "once"
    check = f"[ -e {once} ] || {{ touch {once}; python {waits}; {hold}; exit 1; }}"
    url, ws, done = _b_checks_before_c(tmp_path, check, "--concurrency", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    first = attempts(url, "b")[0]
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_refs_changed_by_checks")
    assert "checked out in Autopack's checkout slot-" in first["feedback"]
    summary = json.loads(done.stdout)
    assert summary["branch_waits"] is None
    assert git("rev-parse", f"autopack/{RUN}", cwd=ws) == summary["branch_head"]
    assert [on_branch(ws, f"pkg/{p}.py") for p in "abc"] == ["a = 1\n", "b = 2\n", "c = 1\n"]
