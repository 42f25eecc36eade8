"""The run's code is a git branch: real drains, real git, real processes.

Each test reproduces one way the shared-workspace design lost work or let it leak, and
checks what a user would check on the branch: the completed phase's files are there, a
stale executor's are not, a failed attempt never touched anyone else's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.executor_support import (
    BREAKAGES,
    attempts,
    branch_files,
    branch_log,
    break_repository,
    cassette,
    cli_drain,
    create_run,
    drain,
    drain_process,
    env_for,
    files,
    git,
    line,
    on_branch,
    phase,
    phase_row,
    repository,
    rows,
    run_file,
)
from tests.support import cli
from tests.test_stopped_attempts_hand_on import _held_check

RUN = "exec-run"


def _args(ws: Path, tape: Path, *extra: str, phase_id: str | None = None) -> list[str]:
    which = ["phase", "--phase-id", phase_id] if phase_id else ["run"]
    return [
        *which,
        *("--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)),
        *("--workspace", str(ws), *extra),
    ]


def _wait_for(check: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _answer(**contents: str) -> str:
    """A Builder answer writing ``pkg/NAME`` files: ``_answer(out_txt="x")`` -> pkg/out.txt."""
    written = [
        {"path": "pkg/" + name.replace("_", ".", 1), "content": body}
        for name, body in contents.items()
    ]
    return json.dumps({"files": written, "summary": "wrote files"})


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'autopack.db'}"


def _remote_run(tmp_path: Path, spec: list[dict[str, Any]], env: dict[str, str]) -> Path:
    """A bare remote at ``remote.git`` and the run of ``spec`` created to keep its code
    there (the run file's ``repository``): the remote a fleet's machines share."""
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    body = json.loads(run_file(tmp_path, spec).read_text())
    body["repository"] = str(remote)
    (tmp_path / "remote-run.json").write_text(json.dumps(body))
    create_run(tmp_path / "remote-run.json", env, tmp_path)
    return remote


def test_a_gitignored_deliverable_is_committed_and_the_phase_completes(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws", {".gitignore": "*.log\n"})
    create_run(run_file(tmp_path, [phase("p1", ["pkg/app.log"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, _answer(app_log="delivered\n"))])
    done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert on_branch(ws, "pkg/app.log") == "delivered\n"
    assert json.loads(done.stdout)["run_state"] == "DONE_SUCCESS"
    [attempt] = attempts(url, "p1")
    assert attempt["files_written"] == ["pkg/app.log"]
    assert attempt["commit_sha"] == git("rev-parse", f"autopack/{RUN}", cwd=ws)


def test_a_drain_never_reads_the_terminal_it_runs_in(tmp_path: Path) -> None:
    """A new workspace's first commit came from `git mktree`, which read the drain's
    standard input: at a terminal the drain waited for Ctrl-D, and failed with git_error
    "input format error" on whatever had been typed."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/out.txt"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, _answer(out_txt="done\n"))])
    done = subprocess.run(
        [sys.executable, "-m", "autopack", "drain", *_args(tmp_path / "new-ws", tape), "--json"],
        input="typed at the terminal meanwhile\n",
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert on_branch(tmp_path / "new-ws", "pkg/out.txt") == "done\n"


def test_a_stale_executor_never_deletes_or_replaces_completed_work(tmp_path: Path) -> None:
    """A is stopped past its lease mid-check; B redoes and completes the phase; A resumes."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws")
    # A's check ends once B has completed the phase (a fixed sleep could end before A was
    # stopped, on a loaded machine); B's own check passes at once.
    released = tmp_path / "B-done"
    slow = f"grep -q B pkg/out.txt || while [ ! -e {released} ]; do sleep 0.05; done"
    create_run(run_file(tmp_path, [phase("p1", ["pkg/out.txt"], checks=[slow])]), env, tmp_path)
    tapes = {}
    for name in ("A", "B"):  # each process answers its first call from its own cassette
        (tmp_path / name).mkdir()
        tapes[name] = cassette(tmp_path / name, [line("p1", 1, _answer(out_txt=f"from {name}\n"))])
    a = drain_process(
        *_args(ws, tapes["A"], "--lease-seconds", "5", phase_id="p1"), env=env, cwd=tmp_path
    )
    _wait_for(lambda: phase_row(url, "p1")["state"] == "CI_RUNNING", "A's checks")
    a.send_signal(signal.SIGSTOP)
    try:
        b = drain(
            *_args(ws, tapes["B"], "--lease-seconds", "5", phase_id="p1"), env=env, cwd=tmp_path
        )
        assert b.returncode == 0, b.stderr[-3000:]
        assert on_branch(ws, "pkg/out.txt") == "from B\n"
    finally:
        released.touch()
        a.send_signal(signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=120)
    assert "lease_lost" in a_err
    # A's summary says what the database recorded of its attempt (it said ``lease_lost``),
    # once (not "lease_expired: lease_expired: worker ...").
    assert "lease_lost" not in a_out and "lease_expired: worker" in a_out, a_out
    assert "lease_expired: lease_expired" not in a_out, a_out
    assert on_branch(ws, "pkg/out.txt") == "from B\n", "the stale executor changed nothing"
    history = attempts(url, "p1")
    assert [h["outcome"] for h in history] == ["LOST", "COMPLETE"]
    head = git("rev-parse", f"autopack/{RUN}", cwd=ws)
    assert history[1]["commit_sha"] == head
    first = git("log", "--format=%H", f"autopack/{RUN}", cwd=ws).splitlines()
    stale = git(
        "for-each-ref", "--format=%(objectname)", f"refs/autopack/attempts/{RUN}/p1/1", cwd=ws
    )
    assert not stale or stale not in first, "A's commit never reaches the branch"


def test_a_symlink_inside_the_workspace_cannot_carry_a_write_out_of_scope(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"secret/keep.txt": "k\n"})
    (ws / "pkg").mkdir()
    (ws / "pkg/link_in").symlink_to("../secret")
    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "a link inside the workspace", cwd=ws)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    evil = json.dumps(
        {
            "files": [
                {"path": "pkg/mod.py", "content": "x = 1\n"},
                {"path": "pkg/link_in/pwn.txt", "content": "owned\n"},
            ]
        }
    )
    tape = cassette(tmp_path, [line("p1", 1, evil), line("p1", 2, files(mod_py="x = 1\n"))])
    done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first = attempts(url, "p1")[0]
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "unsafe_path")
    assert "secret/pwn.txt" not in branch_files(ws)
    assert not (ws / "secret/pwn.txt").exists()


def test_a_sparse_checkout_of_the_workspace_leaves_attempts_every_file(tmp_path: Path) -> None:
    """`git worktree add` copies the person's sparse checkout into each attempt's: its
    files outside the cone were missing (the check below failed on a file the branch
    holds) and `git add` refused every deliverable outside it (git_error, run failed)."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    ws = repository(tmp_path / "ws", {"docs/d.md": "d\n", "pkg/base.txt": "base\n"})
    git("sparse-checkout", "set", "docs", cwd=ws)
    assert not (ws / "pkg").exists()
    check = "test -f pkg/base.txt && test -f pkg/mod.py"
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], checks=[check])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="x = 1\n"))])
    done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [attempt] = attempts(url, "p1")
    assert (attempt["outcome"], attempt["error"]) == ("COMPLETE", None)
    assert on_branch(ws, "pkg/mod.py") == "x = 1\n"
    assert not (ws / "pkg").exists(), "the person's own checkout stays sparse"


def _drain_one_phase(tmp_path: Path, url: str, env: dict[str, str], ws: Path) -> None:
    """Create a run of one phase writing ``pkg/mod.py``, drain it into ``ws`` and check it
    completed, without error, on the run's branch."""
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="x = 1\n"))])
    done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [attempt] = attempts(url, "p1")
    assert (attempt["outcome"], attempt["error"]) == ("COMPLETE", None)
    assert on_branch(ws, "pkg/mod.py") == "x = 1\n"


def test_a_relative_cache_directory_means_the_working_directory(tmp_path: Path) -> None:
    """AUTOPACK_CACHE_DIR=cache reached `git worktree add`, run in the workspace, as a
    relative path: the attempts' worktrees were made inside the person's workspace while
    the executor wrote into an empty `cache/` here, and every attempt failed git_error."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR="cache")
    ws = repository(tmp_path / "ws")
    _drain_one_phase(tmp_path, url, env, ws)
    assert git("status", "--porcelain", "--ignored", cwd=ws) == "", "the workspace is untouched"
    assert (tmp_path / "cache" / "worktrees").is_dir()


@pytest.mark.parametrize("where", ["a file", "below a file", "a FIFO", "a name too long"])
def test_a_cache_directory_that_can_be_no_directory_is_an_invalid_setting(
    tmp_path: Path, where: str
) -> None:
    """AUTOPACK_CACHE_DIR naming a file, a FIFO, a path below a file or a name longer than
    the file system holds: the drain raised OSError with a traceback (exit 1) making its
    worktrees' directory. It is an invalid setting now, exit 2 naming it, the phase still
    queued."""
    url = _sqlite(tmp_path)
    blocker = tmp_path / "blocker"
    if where == "a FIFO":
        os.mkfifo(blocker)
    else:
        blocker.write_text("not a directory\n")
    cache = {
        "a file": blocker,
        "below a file": blocker / "cache",
        "a FIFO": blocker,
        "a name too long": tmp_path / ("c" * 300),
    }[where]
    env = env_for(url, AUTOPACK_CACHE_DIR=str(cache))
    ws = repository(tmp_path / "ws")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="x = 1\n"))])
    done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, said[-3000:]
    assert "Traceback" not in said
    assert "invalid setting: AUTOPACK_CACHE_DIR" in said, said[-3000:]
    assert phase_row(url, "p1")["state"] == "QUEUED"
    assert attempts(url, "p1") == []


@pytest.mark.parametrize("inside", ["worktrees", "repos", "kept"])
def test_a_file_where_the_cache_keeps_a_directory_is_named_not_a_traceback(
    tmp_path: Path, inside: str
) -> None:
    """A file where the cache keeps the attempts' worktrees (``CACHE/worktrees``), or its
    clones of a ``--repo`` (``CACHE/repos``): the drain raised NotADirectoryError or
    FileExistsError with a traceback (exit 1); where it keeps failed attempts' worktrees
    (``kept``), once an attempt had failed. Now exit 2 naming the path and
    AUTOPACK_CACHE_DIR before anything is claimed, the phase still queued."""
    url = _sqlite(tmp_path)
    cache = tmp_path / "cache"
    ws = tmp_path / "ws"
    if inside == "kept":  # the pool of the workspace's worktrees (Worktrees.root) holds it
        inside = f"worktrees/ws-{hashlib.sha256(str(ws).encode()).hexdigest()[:8]}/kept"
    (cache / inside).parent.mkdir(parents=True)
    (cache / inside).write_text("not a directory\n")
    env = env_for(url, AUTOPACK_CACHE_DIR=str(cache))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="x = 1\n"))])
    args = _args(repository(ws), tape, phase_id="p1")
    if inside == "repos":
        subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], check=True)
        args = [*args[: args.index("--workspace")], "--repo", str(tmp_path / "remote.git")]
    done = drain(*args, env=env, cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, said[-3000:]
    assert "Traceback" not in said
    assert "the cache cannot keep" in said and f"{cache / inside} " in said, said[-3000:]
    assert "is a file" in said and "AUTOPACK_CACHE_DIR" in said
    assert phase_row(url, "p1")["state"] == "QUEUED"


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_what_stands_where_the_cache_remembers_workspaces_neither_hangs_nor_is_written_through(
    tmp_path: Path, kind: str
) -> None:
    """A FIFO where the cache remembers a run's workspaces (``CACHE/workspaces/RUN``):
    reading it waited for a writer, so the drain hung before its first attempt. A symlink
    there (a check can write the cache): the drain appended its workspace's path to the
    file it led to (a shell's start-up file ran it as a command). What the cache cannot
    tell is only a convenience lost: the drain completes, that file left alone."""
    url = _sqlite(tmp_path)
    cache = tmp_path / "cache"
    (cache / "workspaces").mkdir(parents=True)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    record = cache / "workspaces" / "exec-run"
    if kind == "fifo":
        os.mkfifo(record)
    else:
        record.symlink_to(precious)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(cache))
    ws = repository(tmp_path / "ws")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="x = 1\n"))])
    done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert on_branch(ws, "pkg/mod.py") == "x = 1\n"
    assert precious.read_text() == "keep me\n"


@pytest.mark.parametrize("check", ["rm pkg/mod.py", "ln -sf /etc/passwd pkg/mod.py"])
def test_a_check_that_removes_or_links_a_written_file_commits_neither(
    tmp_path: Path, check: str
) -> None:
    """The commit records the written paths as the checks left them: a check removing one
    deleted completed work (an earlier phase's file) without the approval a deletion
    needs, and one linking it to /etc/passwd put that link on the run's branch."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/mod.py": "KEPT = 1\n"})
    body = [phase("p1", ["pkg/mod.py"], checks=[check], max_attempts=1)]
    create_run(run_file(tmp_path, body), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="NEW = 1\n"))])
    done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [attempt] = attempts(url, "p1")
    assert (attempt["outcome"], attempt["stop_reason"]) == ("FAILED", "files_replaced_by_checks")
    assert "pkg/mod.py" in attempt["feedback"]
    assert attempt["commit_sha"] is None
    assert git("ls-tree", f"autopack/{RUN}", "pkg/mod.py", cwd=ws).startswith("100644 blob")
    assert on_branch(ws, "pkg/mod.py") == "KEPT = 1\n"


def test_an_overwritten_executable_keeps_its_mode_and_its_check_passes(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/run.sh": "#!/bin/sh\nexit 1\n"})
    (ws / "pkg/run.sh").chmod(0o755)
    git("add", "pkg/run.sh", cwd=ws)
    git("commit", "-q", "-m", "executable", cwd=ws)
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/run.sh"], checks=["./pkg/run.sh"])]), env, tmp_path
    )
    answer = json.dumps({"files": [{"path": "pkg/run.sh", "content": "#!/bin/sh\nexit 0\n"}]})
    tape = cassette(tmp_path, [line("p1", 1, answer)])
    done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [attempt] = attempts(url, "p1")
    assert attempt["check_results"][0]["passed"] is True
    assert git("ls-tree", f"autopack/{RUN}", "pkg/run.sh", cwd=ws).startswith("100755")


def test_concurrent_phases_never_see_each_others_work(tmp_path: Path) -> None:
    """A writes its file, then its check fails (slowly); B's check looks for A's file."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws")
    fails = 'python -c "import time; time.sleep(2); raise SystemExit(1)"'
    blind = (
        'python -c "import os, time; time.sleep(1); '
        "assert not os.path.exists('pkg/a.py'), 'saw A'\""
    )
    phases = [
        phase("a", ["pkg/a.py"], checks=[fails], max_attempts=1),
        phase("b", ["pkg/b.py"], checks=[blind]),
    ]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path, [line("a", 1, files(a_py="A = 1\n")), line("b", 1, files(b_py="B = 1\n"))]
    )
    done = drain(*_args(ws, tape, "--concurrency", "2"), env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert phase_row(url, "a")["state"] == "FAILED"
    assert phase_row(url, "b")["state"] == "COMPLETE"
    assert branch_files(ws) == ["pkg/b.py"]
    [b_attempt] = attempts(url, "b")
    assert b_attempt["check_results"][0]["passed"] is True


def test_two_phases_editing_one_file_conflict_and_the_loser_retries_on_the_new_head(
    tmp_path: Path,
) -> None:
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/common.py": "VALUE = 0\n"})
    # b's check ends once a is COMPLETE (a fixed sleep let b finish first on a loaded machine)
    waits = tmp_path / "wait_for_a.py"
    waits.write_text(
        f"import sqlite3, time\ndb = sqlite3.connect({str(tmp_path / 'autopack.db')!r})\n"
        "while not db.execute(\"SELECT 1 FROM phases WHERE phase_id = 'a' AND state = "
        "'COMPLETE'\").fetchone():\n    time.sleep(0.05)\n"
    )
    phases = [
        phase("a", ["pkg/common.py"]),
        phase("b", ["pkg/common.py"], checks=[f"python {waits}"]),
    ]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [
            line("a", 1, files(common_py="VALUE = 1\n")),
            line("b", 1, files(common_py="VALUE = 2\n")),
            line("b", 2, files(common_py="VALUE = 1\nOTHER = 2\n")),
        ],
    )
    done = drain(*_args(ws, tape, "--concurrency", "2"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    history = attempts(url, "b")
    assert [(h["outcome"], h["stop_reason"]) for h in history] == [
        ("FAILED", "integration_conflict"),
        ("COMPLETE", "completed"),
    ]
    assert "pkg/common.py" in history[0]["error"]
    assert on_branch(ws, "pkg/common.py") == "VALUE = 1\nOTHER = 2\n"
    a_commit = attempts(url, "a")[0]["commit_sha"]
    branch = git("log", "--format=%H", f"autopack/{RUN}", cwd=ws).splitlines()
    assert branch[0] == history[1]["commit_sha"] and a_commit in branch


def test_a_commit_accepted_just_before_a_kill_still_reaches_the_branch(tmp_path: Path) -> None:
    """kill -9 right after the result is accepted, while the branch ref cannot move (a
    lock file holds it): the next command to come along integrates the commit."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="KEPT = 1\n"))])
    branch_ref = ws / ".git/refs/heads/autopack" / RUN
    git("branch", f"autopack/{RUN}", cwd=ws)  # the run branch, as a drain creates it
    lock = branch_ref.with_name(f"{RUN}.lock")
    lock.write_text("held\n")
    process = drain_process(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    _wait_for(lambda: phase_row(url, "p1")["state"] == "COMPLETE", "the accepted result")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    accepted = rows(url, "SELECT branch_head FROM runs")[0]["branch_head"]
    assert accepted and on_branch(ws, "pkg/mod.py") is None, "the branch is behind"
    lock.unlink()
    exported = cli(
        "run", "export", RUN, str(tmp_path / "code"), "--workspace", str(ws), cwd=tmp_path, env=env
    )
    assert exported.returncode == 0, exported.stderr
    assert git("rev-parse", f"autopack/{RUN}", cwd=ws) == accepted
    assert on_branch(ws, "pkg/mod.py") == "KEPT = 1\n"
    assert (tmp_path / "code/pkg/mod.py").read_text() == "KEPT = 1\n"


def _one_phase_drained(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """A run on a local workspace whose one phase completed (``pkg/mod.py`` = KEPT = 1):
    the environment, the workspace and the cassette that answered."""
    env = env_for(_sqlite(tmp_path))
    ws = repository(tmp_path / "ws")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="KEPT = 1\n"))])
    assert drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path).returncode == 0
    return env, ws, tape


def test_export_into_a_file_is_refused_naming_it(tmp_path: Path) -> None:
    """`run export RUN FILE` (or FILE/sub) ended in a NotADirectoryError traceback."""
    env, ws, _ = _one_phase_drained(tmp_path)
    (tmp_path / "afile").write_text("mine\n")
    for target in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        exported = cli(
            "run", "export", RUN, str(target), "--workspace", str(ws), cwd=tmp_path, env=env
        )
        assert exported.returncode == 2, exported.stderr
        assert "Traceback" not in exported.stderr and str(target) in exported.stderr
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_export_into_a_git_directory_is_refused_and_writes_nothing_there(
    tmp_path: Path,
) -> None:
    """`run export RUN WS/.git/refs/heads/out` wrote the run's files there: each one a
    broken branch of the repository, warned of by every git command in it."""
    env, ws, _ = _one_phase_drained(tmp_path)
    before = sorted(p.relative_to(ws).as_posix() for p in (ws / ".git").rglob("*"))
    for target in (ws / ".git/refs/heads/out", ws / ".git/out", ws / ".git" / "objects"):
        exported = cli(
            "run", "export", RUN, str(target), "--workspace", str(ws), cwd=tmp_path, env=env
        )
        said = " ".join(exported.stderr.split())
        assert exported.returncode == 2, said[-2000:]
        assert f"{target} " in said and "Traceback" not in said, said[-2000:]
    assert not (ws / ".git/refs/heads/out").exists() and not (ws / ".git/out").exists()
    after = sorted(p.relative_to(ws).as_posix() for p in (ws / ".git").rglob("*"))
    assert [p for p in after if p not in before and "/objects/" not in p] == []
    listed = subprocess.run(
        ["git", "for-each-ref"], cwd=ws, capture_output=True, text=True, check=True
    )
    assert "warning" not in listed.stderr, listed.stderr


def test_export_writes_a_file_named_like_a_scratch_file_of_its_own(tmp_path: Path) -> None:
    """`run export` kept its git index in DIR as ``.autopack-export-index``: a file of
    that name on the branch was written over it, then deleted with it (the count said
    it was written)."""
    env = env_for(_sqlite(tmp_path))
    ws = repository(tmp_path / "ws")
    name = ".autopack-export-index"
    scope = {"paths": [name, "pkg/"], "deliverables": [name, "pkg/mod.py"]}
    create_run(run_file(tmp_path, [phase("p1", [name, "pkg/mod.py"], scope=scope)]), env, tmp_path)
    answer = {
        "files": [
            {"path": name, "content": "mine\n"},
            {"path": "pkg/mod.py", "content": "KEPT = 1\n"},
        ],
        "summary": "wrote files",
    }
    tape = cassette(tmp_path, [line("p1", 1, json.dumps(answer))])
    assert drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path).returncode == 0
    target = tmp_path / "code"
    exported = cli("run", "export", RUN, str(target), "--workspace", str(ws), cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (target / name).read_text() == "mine\n"
    assert sorted(p.name for p in target.iterdir()) == sorted([name, "pkg"])


def test_export_of_a_run_kept_in_a_remote_repository_writes_its_files(tmp_path: Path) -> None:
    """A run whose code lives in a remote (``--repo``, the run file's ``repository``) is
    read through a bare cache clone, where `git checkout-index` refused to work ("must be
    run in a work tree"): `run export` of such a run always failed, leaving DIR behind."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    remote = _remote_run(tmp_path, [phase("p1", ["pkg/mod.py"])], env)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="KEPT = 1\n"))])
    args = ["phase", "--phase-id", "p1", "--run-id", RUN, "--auditor", "rules"]
    assert drain(*args, "--cassette", str(tape), env=env, cwd=tmp_path).returncode == 0
    for flags in ([], ["--repo", str(remote)]):
        target = tmp_path / f"code{len(flags)}"
        exported = cli("run", "export", RUN, str(target), *flags, cwd=tmp_path, env=env)
        assert exported.returncode == 0, exported.stderr[-2000:]
        assert (target / "pkg/mod.py").read_text() == "KEPT = 1\n"
        assert sorted(p.name for p in target.iterdir()) == ["pkg"]


def test_a_symlink_loop_given_as_a_path_is_refused_naming_it(tmp_path: Path) -> None:
    """A directory or file argument that is a symlink loop ended in a RuntimeError
    traceback (``Path.resolve``) in `run export`, `--workspace` and `calibrate --write`."""
    env, ws, tape = _one_phase_drained(tmp_path)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    commands = [
        ("run", "export", RUN, str(loop), "--workspace", str(ws)),
        ("run", "export", RUN, str(tmp_path / "code"), "--workspace", str(loop)),
        ("drain", *_args(loop, tape, phase_id="p1")),
        ("telemetry", "calibrate", "--write", str(loop)),
    ]
    for command in commands:
        result = cli(*command, cwd=tmp_path, env=env)
        assert result.returncode == 2, (command, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and f"{loop} cannot be resolved" in result.stderr
    assert not (tmp_path / "code").exists()


@pytest.mark.postgres
def test_three_executors_with_their_own_caches_drain_one_remote_branch(
    tmp_path: Path, pg_admin: str
) -> None:
    from tests.conftest import create_pg_database, drop_pg_database

    url = create_pg_database(pg_admin)
    try:
        env = env_for(url, AUTOPACK_REPLAY_SPEED="1")
        count = 30
        remote = _remote_run(
            tmp_path, [phase(f"p{i}", [f"pkg/m{i}.py"]) for i in range(count)], env
        )
        tape = cassette(
            tmp_path,
            [
                line(f"p{i}", 1, files(**{f"m{i}_py": f"VALUE = {i}\n"}), latency_ms=37 * (i % 9))
                for i in range(count)
            ],
        )
        executors = []
        for n in range(3):
            own = {**env, "AUTOPACK_CACHE_DIR": str(tmp_path / f"cache-{n}")}
            args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
            executors.append(
                drain_process(
                    *args, "--concurrency", "2", "--worker-id", f"e{n}", env=own, cwd=tmp_path
                )
            )
        outputs = [process.communicate(timeout=600)[1] for process in executors]
        for process, stderr in zip(executors, outputs, strict=True):
            assert process.returncode == 0, stderr[-3000:]
        states = rows(url, "SELECT state, commit_sha FROM phases")
        assert {s["state"] for s in states} == {"COMPLETE"}
        subjects = branch_log(remote, RUN)
        phase_commits = [s for s in subjects if s.startswith("autopack: ")]
        assert sorted(s.split()[1] for s in phase_commits) == sorted(f"p{i}" for i in range(count))
        assert len(subjects) == count + 1, "30 phase commits on the branch's first commit"
        branch = set(git("log", "--format=%H", f"autopack/{RUN}", cwd=remote).splitlines())
        assert {s["commit_sha"] for s in states} <= branch
        assert sorted(branch_files(remote, RUN)) == sorted(f"pkg/m{i}.py" for i in range(count))
        workers = {
            r["worker_id"].split("/")[0] for r in rows(url, "SELECT worker_id FROM phase_attempts")
        }
        assert len(workers) >= 2, f"the work was shared: {workers}"
    finally:
        drop_pg_database(pg_admin, url)


def _drain_and_export(tmp_path: Path, repo: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Drain one phase with ``--repo REPO``, then ``run export RUN out --repo REPO``."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], check=True)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="X = 1\n"))])
    args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    done = drain(*args, "--repo", repo, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert on_branch(tmp_path / "remote.git", "pkg/mod.py") == "X = 1\n"
    out = tmp_path / "out"
    return cli("run", "export", RUN, str(out), "--repo", repo, cwd=tmp_path, env=env), out


def test_a_relative_repo_path_means_the_directory_the_command_ran_in(tmp_path: Path) -> None:
    """``--repo remote.git`` was cloned with the cache directory as git's working
    directory: 'repository remote.git does not exist', for the drain and the export."""
    exported, out = _drain_and_export(tmp_path, "remote.git")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (out / "pkg/mod.py").read_text() == "X = 1\n"


def test_a_checkout_of_the_run_branch_follows_it_and_never_shows_the_work_undone(
    tmp_path: Path,
) -> None:
    """``git worktree add DIR autopack/RUN`` (how the README says to read the code) or a
    ``git checkout`` of it: ``update-ref`` moved the branch under that work tree, whose
    ``git status`` then showed the new phase's files as staged deletions, ready for the
    next ``git commit -a`` to put on the branch. It follows the branch now, keeping the
    person's own changes; when it cannot, the branch waits for it instead."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"notes.txt": "mine\n"})
    phases = [phase(p, [f"pkg/{p}.txt"]) for p in ("p1", "p2", "p3")]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    answers = {"p1": _answer(p1_txt="one\n"), "p2": _answer(p2_txt="two\n")}
    answers["p3"] = _answer(p3_txt="three\n")
    tape = cassette(tmp_path, [line(p, 1, text) for p, text in answers.items()])
    assert drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path).returncode == 0
    code = tmp_path / "code"
    git("worktree", "add", "-q", str(code), f"autopack/{RUN}", cwd=ws)
    (code / "notes.txt").write_text("my uncommitted edit\n")

    done = drain(*_args(ws, tape, phase_id="p2"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert on_branch(ws, "pkg/p2.txt") == "two\n"
    assert json.loads(done.stdout)["branch_waits"] is None
    assert git("status", "--porcelain", cwd=code) == "M notes.txt"
    assert (code / "pkg/p2.txt").read_text() == "two\n"

    (code / "pkg/p3.txt").write_text("an untracked file of mine\n")
    done = drain(*_args(ws, tape, phase_id="p3"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "branch_waits" in done.stderr and str(code) in done.stderr
    assert on_branch(ws, "pkg/p3.txt") is None, "the branch waits for the checkout"
    waits = json.loads(done.stdout)["branch_waits"]
    assert waits is not None and str(code) in waits, "the summary put the branch ahead"
    again = cli_drain(*_args(ws, tape, phase_id="p3"), env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the run's code: branch" not in again.stdout, "a person is told the branch is ahead"
    assert f"the branch autopack/{RUN} waits behind the run's accepted head" in again.stderr
    assert (code / "pkg/p3.txt").read_text() == "an untracked file of mine\n"
    (code / "pkg/p3.txt").unlink()
    exported = cli(
        "run", "export", RUN, str(tmp_path / "out"), "--workspace", str(ws), env=env, cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert on_branch(ws, "pkg/p3.txt") == "three\n"
    assert git("status", "--porcelain", cwd=code) == "M notes.txt"


def test_a_remote_with_the_run_branch_checked_out_is_named_not_retried_as_moving(
    tmp_path: Path,
) -> None:
    """A non-bare ``--repo`` refuses a push to its checked-out branch; that refusal was
    read as "the branch moved", pushed twenty times over and reported as "the branch kept
    moving; try again", which no retry fixes."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    ws = repository(tmp_path / "ws")
    create_run(
        run_file(tmp_path, [phase(p, [f"pkg/{p}.txt"]) for p in ("p1", "p2")]), env, tmp_path
    )
    tape = cassette(tmp_path, [line(p, 1, _answer(**{f"{p}_txt": f"{p}\n"})) for p in ("p1", "p2")])
    remote = ["phase", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    remote += ["--repo", str(ws), "--phase-id"]
    assert drain(*remote, "p1", env=env, cwd=tmp_path).returncode == 0
    git("checkout", "-q", f"autopack/{RUN}", cwd=ws)
    done = drain(*remote, "p2", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kept moving" not in done.stderr
    assert "branch_waits" in done.stderr and "is checked out in the repository" in done.stderr
    assert git("status", "--porcelain", cwd=ws) == "", "the person's checkout is untouched"


def test_a_remote_whose_hook_refuses_the_push_is_named_and_claims_nothing(
    tmp_path: Path,
) -> None:
    """A ``--repo`` whose pre-receive hook (a server's branch rule) refuses the run's
    branch: git's ``! [remote rejected] ... (pre-receive hook declined)`` was read as "the
    branch moved meanwhile", so the drain went on as if another executor had made the
    branch, and every phase failed "no branch autopack/RUN", the hook's reason nowhere."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    remote = _remote_run(tmp_path, [phase("p1", ["pkg/p1.txt"])], env)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'policy: pushes need a ticket' >&2\nexit 1\n")
    hook.chmod(0o755)
    tape = cassette(tmp_path, [line("p1", 1, _answer(p1_txt="p1\n"))])
    args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    done = drain(*args, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "pushes need a ticket" in done.stderr and "hook declined" in done.stderr
    assert "no branch" not in done.stderr
    assert attempts(url, "p1") == [], "nothing claimed: the phase waits for a usable remote"


@pytest.mark.parametrize(
    "gitconfig",
    [
        # the cache clone's remote was named "upstream": every fetch and push of "origin"
        # failed (exit 2), and a signed push was asked of a remote that supports none
        "[clone]\n\tdefaultRemoteName = upstream\n[push]\n\tgpgSign = true\n",
        # hardening against bare repositories hidden in cloned projects refused
        # Autopack's own bare clone in its cache, found from the working directory
        "[safe]\n\tbareRepository = explicit\n",
    ],
    ids=["remote-name-and-push-signing", "safe-bare-repository"],
)
def test_a_persons_global_git_settings_do_not_stop_a_remote_run(
    gitconfig: str, tmp_path: Path
) -> None:
    """Settings of a person's ``~/.gitconfig`` that stopped every ``--repo`` drain."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(gitconfig)
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"), HOME=str(home))
    remote = _remote_run(tmp_path, [phase("p1", ["pkg/p1.txt"])], env)
    tape = cassette(tmp_path, [line("p1", 1, _answer(p1_txt="p1\n"))])
    args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    done = drain(*args, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert on_branch(remote, "pkg/p1.txt") == "p1\n"


def test_a_global_submodule_recurse_leaves_every_attempt_of_a_repository_with_one_alone(
    tmp_path: Path,
) -> None:
    """``submodule.recurse=true`` in the person's ``~/.gitconfig`` and a submodule in the
    workspace: the worktree slots' checkouts recursed into it, and a reused slot's
    ``checkout --force --detach`` failed ("not a git repository: …/modules/vendor/s"),
    each such attempt ``git_error`` until its phase ran out of attempts."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[submodule]\n\trecurse = true\n")
    sub = repository(tmp_path / "sub", {"s.txt": "s\n"})
    ws = repository(tmp_path / "ws", {"docs/d.md": "d\n"})
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "vendor/s", cwd=ws)
    git("-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "sub", cwd=ws)
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"), HOME=str(home))
    names = ("p1", "p2", "p3", "p4")
    create_run(run_file(tmp_path, [phase(p, [f"pkg/{p}.txt"]) for p in names]), env, tmp_path)
    tape = cassette(tmp_path, [line(p, 1, _answer(**{f"{p}_txt": f"{p}\n"})) for p in names])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [a["stop_reason"] for p in names for a in attempts(url, p)] == ["completed"] * 4
    assert all(on_branch(ws, f"pkg/{p}.txt") == f"{p}\n" for p in names)


def test_autocrlf_with_safecrlf_still_commits_what_the_builder_wrote(tmp_path: Path) -> None:
    """``core.autocrlf=true`` with ``core.safecrlf=true`` (a Windows habit, often global):
    git refused to add every file the Builder wrote with LF endings ("LF would be replaced
    by CRLF"), so each attempt failed ``git_error`` after its checks passed, and the run
    failed. The person's own checkout is left as it was."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    ws = repository(tmp_path / "ws", {"docs/d.md": "d\n"})
    git("config", "core.autocrlf", "true", cwd=ws)
    git("config", "core.safecrlf", "true", cwd=ws)
    _drain_one_phase(tmp_path, url, env, ws)
    assert git("status", "--porcelain", cwd=ws) == ""


def test_a_ref_lock_a_killed_git_left_delays_the_branch_but_fails_no_phase(
    tmp_path: Path,
) -> None:
    """``refs/heads/autopack/RUN.lock`` left by a git killed mid-update: every later
    attempt failed ``git_error`` ("the branch kept moving; try again", after twenty
    tries) at its start, until the phases ran out of attempts. Attempts start from the
    accepted head; the branch catches up once the lock is gone."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws")
    create_run(
        run_file(tmp_path, [phase(p, [f"pkg/{p}.txt"]) for p in ("p1", "p2", "p3")]), env, tmp_path
    )
    tape = cassette(
        tmp_path, [line(p, 1, _answer(**{f"{p}_txt": f"{p}\n"})) for p in ("p1", "p2", "p3")]
    )
    assert drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path).returncode == 0
    lock = ws / f".git/refs/heads/autopack/{RUN}.lock"
    lock.touch()
    for p in ("p2", "p3"):
        done = drain(*_args(ws, tape, phase_id=p), env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "kept moving" not in done.stderr and f"{RUN}.lock" in done.stderr
    assert [a["stop_reason"] for p in ("p2", "p3") for a in attempts(url, p)] == ["completed"] * 2
    assert on_branch(ws, "pkg/p3.txt") is None
    lock.unlink()
    assert drain(*_args(ws, tape), env=env, cwd=tmp_path).returncode == 0
    assert on_branch(ws, "pkg/p2.txt") == "p2\n" and on_branch(ws, "pkg/p3.txt") == "p3\n"


def test_a_ref_lock_a_killed_push_left_in_the_remote_is_named_and_fails_no_phase(
    tmp_path: Path,
) -> None:
    """An executor killed mid-push leaves ``refs/heads/autopack/RUN.lock`` in the shared
    remote. Git's "failed to lock" was read as "the remote moved": twenty pushes, then
    "the branch kept moving" instead of git's message naming the lock. The phases still
    complete on the accepted head, and the branch catches up once the lock is gone."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    remote = _remote_run(tmp_path, [phase(p, [f"pkg/{p}.txt"]) for p in ("p1", "p2")], env)
    tape = cassette(tmp_path, [line(p, 1, _answer(**{f"{p}_txt": f"{p}\n"})) for p in ("p1", "p2")])

    def drain_phase(phase_id: str | None) -> subprocess.CompletedProcess[str]:
        which = ["phase", "--phase-id", phase_id] if phase_id else ["run"]
        args = [*which, "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
        return drain(*args, env=env, cwd=tmp_path)

    assert drain_phase("p1").returncode == 0
    lock = remote / f"refs/heads/autopack/{RUN}.lock"
    lock.touch()
    done = drain_phase("p2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kept moving" not in done.stderr and f"{RUN}.lock" in done.stderr, done.stderr
    assert [a["stop_reason"] for a in attempts(url, "p2")] == ["completed"]
    assert on_branch(remote, "pkg/p2.txt") is None and on_branch(remote, "pkg/p1.txt") == "p1\n"
    lock.unlink()
    assert drain_phase(None).returncode == 0  # nothing left to run: the branch catches up
    assert on_branch(remote, "pkg/p2.txt") == "p2\n"


def test_a_lock_a_killed_fetch_left_in_the_cache_is_removed_once_nothing_holds_it(
    tmp_path: Path,
) -> None:
    """A git killed mid-fetch (SIGKILL, the OOM killer) leaves
    ``refs/remotes/origin/autopack/RUN.lock`` in the machine's cache clone, which only
    Autopack's git writes. Each time another machine moved the branch, the next fetch
    there failed: a drain's start (exit 1), or an attempt's try (``git_error``), until
    someone found the file and removed it by hand. A lock no git step holds any more
    (older than the repository lock's patience) is removed, saying so; a fresh one is
    left to its git."""
    url = _sqlite(tmp_path)
    remote = _remote_run(
        tmp_path, [phase(p, [f"pkg/{p}.txt"]) for p in ("p1", "p2", "p3")], env_for(url)
    )
    tape = cassette(
        tmp_path, [line(p, 1, _answer(**{f"{p}_txt": f"{p}\n"})) for p in ("p1", "p2", "p3")]
    )

    def drain_phase(phase_id: str, machine: str) -> subprocess.CompletedProcess[str]:
        env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / machine))
        args = ["phase", "--phase-id", phase_id, "--run-id", RUN, "--auditor", "rules"]
        return drain(*args, "--cassette", str(tape), env=env, cwd=tmp_path)

    assert drain_phase("p1", "one").returncode == 0
    [tracking] = (tmp_path / "one").glob("repos/*.git/refs/remotes/origin/autopack")
    lock = tracking / f"{RUN}.lock"
    lock.touch()
    assert drain_phase("p2", "two").returncode == 0  # another machine moves the branch
    held = drain_phase("p3", "one")
    assert held.returncode != 0 and f"{RUN}.lock" in held.stderr, held.stderr[-3000:]
    assert lock.exists() and attempts(url, "p3") == []  # a lock in use is its git's
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    done = drain_phase("p3", "one")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stale_lock_removed" in done.stderr and not lock.exists(), done.stderr[-3000:]
    assert [a["stop_reason"] for a in attempts(url, "p3")] == ["completed"]
    assert on_branch(remote, "pkg/p3.txt") == "p3\n" and on_branch(remote, "pkg/p2.txt") == "p2\n"


def test_a_cache_wiped_mid_drain_hands_the_phase_back_and_the_next_drain_clones_again(
    tmp_path: Path,
) -> None:
    """``rm -rf`` of the executor's cache (its clone of the run's remote and its worktrees)
    mid-drain: every later attempt failed ``git_error`` until the phase had used its tries
    and the rest of the run was SKIPPED. The drain now stops saying so, the phase is handed
    back (no try spent) and the next drain clones again and completes the run."""
    url = _sqlite(tmp_path)
    cache = tmp_path / "cache"
    env = env_for(url, AUTOPACK_CACHE_DIR=str(cache))
    wiped = tmp_path / "wiped-once"
    wipe = f"[ -e {wiped} ] || {{ touch {wiped}; rm -rf {cache}; }}"
    spec = [phase("p1", ["pkg/p1.txt"], checks=[wipe]), phase("p2", ["pkg/p2.txt"])]
    remote = _remote_run(tmp_path, spec, env)
    answers = [line(p, n, _answer(**{f"{p}_txt": f"{p}\n"})) for p in ("p1", "p2") for n in (1, 2)]
    tape = cassette(tmp_path, answers)
    args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    stopped = drain(*args, env=env, cwd=tmp_path)
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    said = " ".join(stopped.stderr.split())
    assert f"the repository {cache}" in said and "run the drain again" in said, said
    assert [(a["outcome"], a["stop_reason"]) for a in attempts(url, "p1")] == [
        ("FAILED", "interrupted")
    ]
    assert [
        (r["phase_id"], r["state"]) for r in rows(url, "SELECT phase_id, state FROM phases")
    ] == [
        ("p1", "QUEUED"),
        ("p2", "QUEUED"),
    ]
    done = drain(*args, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert on_branch(remote, "pkg/p1.txt") == "p1\n" and on_branch(remote, "pkg/p2.txt") == "p2\n"


def test_a_remote_that_stops_answering_hands_the_phase_back_and_fails_none(
    tmp_path: Path,
) -> None:
    """The run's remote gone for a moment (its host down) while a phase's checks ran:
    that attempt and every one after it failed ``git_error`` at once, and in seconds
    every phase had spent its tries, the run DONE_FAILED_PHASES. The drain stops saying
    so, the phase is handed back (no try spent), and the next drain completes the run."""
    url = _sqlite(tmp_path)
    away = tmp_path / "remote-down.git"
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    marker = tmp_path / "hold-the-check"
    marker.touch()
    spec = [phase("p1", ["pkg/p1.txt"], checks=[_held_check(marker)]), phase("p2", ["pkg/p2.txt"])]
    remote = _remote_run(tmp_path, spec, env)
    answers = [line(p, n, _answer(**{f"{p}_txt": f"{p}\n"})) for p in ("p1", "p2") for n in (1, 2)]
    tape = cassette(tmp_path, answers)
    args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    running = drain_process(*args, env=env, cwd=tmp_path)
    _wait_for(lambda: phase_row(url, "p1")["state"] == "CI_RUNNING", "p1's checks")
    remote.rename(away)
    marker.unlink()
    _, said = running.communicate(timeout=120)
    said = " ".join(said.split())
    assert running.returncode == 2, said[-3000:]
    assert f"the run's repository {remote} does not answer" in said, said[-3000:]
    assert [(a["outcome"], a["stop_reason"]) for a in attempts(url, "p1")] == [
        ("FAILED", "interrupted")
    ]
    states = rows(url, "SELECT phase_id, state FROM phases ORDER BY phase_id")
    assert [(r["phase_id"], r["state"]) for r in states] == [("p1", "QUEUED"), ("p2", "QUEUED")]
    away.rename(remote)
    done = drain(*args, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert on_branch(remote, "pkg/p1.txt") == "p1\n" and on_branch(remote, "pkg/p2.txt") == "p2\n"


def test_a_workspace_cloned_again_mid_drain_hands_the_phases_back_and_fails_none(
    tmp_path: Path,
) -> None:
    """The workspace replaced by a fresh clone at its path while a drain ran (the accepted
    commits gone from it): the executor that had made them took them as still there, and
    every phase's attempts failed ``git_error`` until the run FAILED, where an executor
    starting then stopped at once. It now stops too, saying the commit is gone from the
    workspace; no phase spends a try."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    origin = repository(tmp_path / "origin", {"README": "start\n"})
    ws = tmp_path / "ws"
    git("clone", "-q", str(origin), str(ws), cwd=tmp_path)
    spec = [
        phase("p1", ["pkg/p1.txt"]),
        phase("p2", ["pkg/p2.txt"], depends_on=["p1"]),
        phase("p3", ["pkg/p3.txt"], depends_on=["p2"]),
    ]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    answers = [
        line(p, n, _answer(**{f"{p}_txt": "x\n"}), latency_ms=3000 if p == "p2" else 0)
        for p in ("p1", "p2", "p3")
        for n in (1, 2, 3)
    ]
    tape = cassette(tmp_path, answers)
    running = drain_process(*_args(ws, tape, "--replay-speed", "1"), env=env, cwd=tmp_path)
    _wait_for(lambda: phase_row(url, "p2")["state"] == "EXECUTING", "p2's Builder call")
    git("clone", "-q", str(origin), str(tmp_path / "fresh"), cwd=tmp_path)
    shutil.rmtree(ws)
    (tmp_path / "fresh").rename(ws)
    _, said = running.communicate(timeout=120)
    said = " ".join(said.split())
    assert running.returncode == 2, said[-3000:]
    assert f"was in {ws} and is gone from it" in said, said[-3000:]
    assert [(a["outcome"], a["stop_reason"]) for a in attempts(url, "p2")] == [
        ("FAILED", "interrupted")
    ]
    states = rows(url, "SELECT phase_id, state FROM phases ORDER BY phase_id")
    assert [(r["phase_id"], r["state"]) for r in states] == [
        ("p1", "COMPLETE"),
        ("p2", "QUEUED"),
        ("p3", "QUEUED"),
    ]


def test_a_stray_drain_elsewhere_never_frees_an_active_runs_branch_for_another_run(
    tmp_path: Path,
) -> None:
    """Two runs naming one branch, no repository in their files: the first drained in
    ``ws``. A drain of it given another workspace (without its work) was refused, but only
    after the server had recorded that workspace as where the run drains; a drain of the
    second run in ``ws`` then passed the branch check, and with both on one branch one
    run's commits ended on no branch. The stray drain now records nothing."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    for run_id in ("first", "second"):
        spec = [phase("p1", [f"pkg/{run_id}1.txt"]), phase("p2", [f"pkg/{run_id}2.txt"])]
        body = json.loads(run_file(tmp_path, spec, run_id=run_id).read_text())
        (tmp_path / f"{run_id}.json").write_text(json.dumps({**body, "branch": "feature"}))
        create_run(tmp_path / f"{run_id}.json", env, tmp_path)
    answers = [
        line("p1", 1, _answer(**{f"{r}1_txt": "1\n"}), run_id=r) for r in ("first", "second")
    ]
    tape = cassette(tmp_path, answers)
    ws, stray = repository(tmp_path / "ws"), repository(tmp_path / "stray")

    def drain_of(run_id: str, where: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        common = ("--auditor", "rules", "--cassette", str(tape), "--workspace", str(where))
        return drain("run", "--run-id", run_id, *common, *extra, env=env, cwd=tmp_path)

    assert drain_of("first", ws, "--max-claims", "1").returncode == 0
    assert drain_of("first", stray).returncode == 2  # its accepted head is not there
    second = drain_of("second", ws)
    said = " ".join(second.stderr.split())
    assert second.returncode == 2, said[-3000:]
    assert "run 'first' (RUNNING)" in said and "still working on branch 'feature'" in said, said
    assert attempts(url, "p1", run_id="second") == []


def test_a_repository_nothing_answers_at_stops_the_drain_before_any_phase(
    tmp_path: Path,
) -> None:
    """``--repo`` naming a repository that is not there: the drain stopped with git's
    answer and exit 1, which says a phase failed, when none had started. Exit 2, as for a
    provider the drain cannot use."""
    url = _sqlite(tmp_path)
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/p1.txt"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, _answer(p1_txt="p1\n"))])
    nowhere = (tmp_path / "nowhere.git").as_uri()
    args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    stopped = drain(*args, "--repo", nowhere, env=env, cwd=tmp_path)
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    assert "does not appear to be a git repository" in stopped.stderr, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert phase_row(url, "p1")["state"] == "QUEUED" and attempts(url, "p1") == []


def test_a_check_that_configures_git_runs_nothing_in_autopacks_git(tmp_path: Path) -> None:
    """Checks run the LLM's code (its tests). One that wrote the repository's git config
    (``core.fsmonitor``, shared by every worktree of the executor's repository) had
    Autopack's own git commands, which run with the executor's environment and its API
    keys, run a command of its choosing: in this attempt's commit, and in every later
    phase's and run's that used the repository."""
    leak = tmp_path / "leak"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nenv > {leak}\n")
    hook.chmod(0o755)
    url = _sqlite(tmp_path)
    env = env_for(url, OPENAI_API_KEY="sk-executors-own-secret")
    ws = repository(tmp_path / "ws", {"pkg/mod.py": "KEPT = 1\n"})
    body = [
        phase("p1", ["pkg/mod.py"], checks=[f"git config core.fsmonitor {hook}"], max_attempts=1),
        phase("p2", ["pkg/two.py"]),
    ]
    create_run(run_file(tmp_path, body), env, tmp_path)
    tape = cassette(
        tmp_path,
        [line("p1", 1, files(mod_py="NEW = 1\n")), line("p2", 1, files(two_py="TWO = 1\n"))],
    )
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not leak.exists(), "a command a check configured ran in Autopack's git"
    [first] = attempts(url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_config_changed_by_checks")
    assert "core.fsmonitor=" in first["feedback"]
    assert on_branch(ws, "pkg/mod.py") == "KEPT = 1\n"
    assert on_branch(ws, "pkg/two.py") == "TWO = 1\n"
    assert "fsmonitor" not in git("config", "--list", "--local", cwd=ws)


def test_commands_the_repositorys_git_config_names_run_without_the_executors_keys(
    tmp_path: Path,
) -> None:
    """The user's own repository may name commands git runs (an fsmonitor, a filter): they
    ran with the environment of the executor's git, its API keys and tokens included."""
    seen = tmp_path / "seen"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nenv >> {seen}\n")
    hook.chmod(0o755)
    url = _sqlite(tmp_path)
    env = env_for(url, OPENAI_API_KEY="sk-executors-own-secret", AUTOPACK_WORKER_TOKEN="w" * 40)
    ws = repository(tmp_path / "ws", {"pkg/mod.py": "KEPT = 1\n"})
    git("config", "core.fsmonitor", str(hook), cwd=ws)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="NEW = 1\n"))])
    done = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert on_branch(ws, "pkg/mod.py") == "NEW = 1\n"
    ran = seen.read_text()
    assert "GIT_INDEX_FILE" in ran, "the hook ran in Autopack's git"
    assert "sk-executors-own-secret" not in ran and "w" * 40 not in ran


def test_a_branch_changed_outside_autopack_is_not_reported_at_the_accepted_head(
    tmp_path: Path,
) -> None:
    """A commit someone put on the run's branch between two drains stops the branch from
    following the accepted head (Autopack never drops a commit it did not make). The
    second drain logged a warning and then ended saying "the run's code: branch B at
    ACCEPTED": the branch held the other commit, without the phase just completed."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    create_run(
        run_file(tmp_path, [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"])]), env, tmp_path
    )
    tape = cassette(
        tmp_path, [line("a", 1, files(a_py="A = 1\n")), line("b", 1, files(b_py="B = 1\n"))]
    )
    assert drain(*_args(ws, tape, phase_id="a"), env=env, cwd=tmp_path).returncode == 0
    branch = f"refs/heads/autopack/{RUN}"
    mine = git("commit-tree", f"{branch}^{{tree}}", "-p", branch, "-m", "mine", cwd=ws)
    git("update-ref", branch, mine, cwd=ws)
    done = cli_drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    accepted = git("rev-parse", f"refs/autopack/attempts/{RUN}/b/1", cwd=ws)
    assert git("rev-parse", branch, cwd=ws) == mine  # the person's commit is kept
    assert f"at {accepted[:12]}" not in done.stdout, done.stdout
    said = " ".join(done.stderr.split())
    assert f"waits behind the run's accepted head {accepted[:12]}" in said, said[-3000:]
    assert "changed outside Autopack" in said and f"update-ref {branch} {accepted}" in said


def test_a_branch_past_the_accepted_head_is_not_reported_at_it(tmp_path: Path) -> None:
    """A commit put on top of the run's branch after its last phase was accepted (by hand,
    or by a check that killed its executor before the ref guard could put the branch back)
    is one the control plane never accepted. Autopack leaves a branch past the head it is
    asked to reach (another executor may have moved it to a later accepted head), and the
    drain then ended "the run's code: branch B at ACCEPTED" while the branch held more."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "K = 1\n"})
    create_run(run_file(tmp_path, [phase("a", ["pkg/a.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("a", 1, files(a_py="A = 1\n"))])
    assert drain(*_args(ws, tape), env=env, cwd=tmp_path).returncode == 0
    branch = f"refs/heads/autopack/{RUN}"
    accepted = git("rev-parse", branch, cwd=ws)
    mine = git("commit-tree", f"{branch}^{{tree}}", "-p", branch, "-m", "mine", cwd=ws)
    git("update-ref", branch, mine, cwd=ws)
    done = cli_drain(*_args(ws, tape), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert git("rev-parse", branch, cwd=ws) == mine  # left where it is: nothing is dropped
    assert f"at {accepted[:12]} in" not in done.stdout, done.stdout
    said = " ".join(done.stderr.split())
    assert f"is past the run's accepted head {accepted[:12]}: it is at {mine[:12]}" in said, said
    assert f"update-ref {branch} {accepted} {mine}" in said
    reported = cli_drain(*_args(ws, tape), "--json", env=env, cwd=tmp_path)
    summary = json.loads(reported.stdout)
    assert (summary["branch_head"], summary["branch_past"]) == (accepted, mine)


def _p1_of_two_completed(tmp_path: Path) -> tuple[str, dict[str, str], Path, Path]:
    """A run of p1 then p2 whose p1 one drain completed in the workspace ``ws``: the
    database URL, the environment, the cassette and the workspace."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    spec = [phase("p1", ["pkg/one.txt"]), phase("p2", ["pkg/two.txt"], depends_on=["p1"])]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    tape = cassette(
        tmp_path,
        [line("p1", 1, _answer(one_txt="1\n")), line("p2", 1, _answer(two_txt="2\n"))],
    )
    ws = repository(tmp_path / "ws", {"README": ""})
    first = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    return url, env, tape, ws


@pytest.mark.parametrize("how", BREAKAGES)
def test_a_broken_workspace_repository_is_said_to_be_unreadable_not_to_lack_the_work(
    how: str, tmp_path: Path
) -> None:
    """A `--workspace` whose git repository is damaged was said to lack the run's accepted
    head: "its completed work is elsewhere", sending the user to look for another
    repository when the work may be right there. Now: exit 2 saying the repository could
    not be read, in git's words; the phase stays QUEUED with no attempt spent."""
    url, env, tape, ws = _p1_of_two_completed(tmp_path)
    said = break_repository(ws, how)

    for which in ({}, {"phase_id": "p2"}):  # drain run, drain phase
        stopped = drain(*_args(ws, tape, **which), env=env, cwd=tmp_path)
        message = " ".join(stopped.stderr.split())
        assert stopped.returncode == 2, stopped.stderr[-3000:]
        assert "Traceback" not in stopped.stderr and "elsewhere" not in message
        assert f"the git repository at {ws} could not be read" in message, message[-3000:]
        assert said in message
        assert phase_row(url, "p2")["state"] == "QUEUED"
        assert attempts(url, "p2") == []


@pytest.mark.parametrize("how", BREAKAGES)
def test_a_broken_workspace_repository_on_a_runs_first_drain_is_said_to_be_unreadable(
    how: str, tmp_path: Path
) -> None:
    """Before any phase completed, a damaged `--workspace` repository was "not a git
    repository" (make it one with `git init`, which does not repair it), or, with HEAD's
    objects missing, started the run's branch as an empty commit without the project's
    files. Now: exit 2 saying it could not be read, in git's words; the phase stays QUEUED."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/one.txt"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, _answer(one_txt="1\n"))])
    ws = repository(tmp_path / "ws", {"README": ""})
    said = break_repository(ws, how)
    stopped = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    message = " ".join(stopped.stderr.split())
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "git init" not in message
    assert f"the git repository at {ws} could not be read (fatal: {said}" in message
    assert phase_row(url, "p1")["state"] == "QUEUED"
    assert attempts(url, "p1") == []


def test_a_run_branch_whose_commit_git_lost_is_said_to_be_damaged_not_elsewhere(
    tmp_path: Path,
) -> None:
    """The run's branch names its accepted head, but that commit's object is gone (HEAD's
    are whole, so git status passes): the drain said the completed work was "elsewhere",
    sending the user to look for another repository when it is here, damaged. Now: exit 2
    naming the branch, the commit and git's words; the next phase stays QUEUED."""
    url, env, tape, ws = _p1_of_two_completed(tmp_path)
    accepted = git("rev-parse", f"refs/heads/autopack/{RUN}", cwd=ws)
    (ws / ".git" / "objects" / accepted[:2] / accepted[2:]).unlink()  # loose, as committed
    assert git("status", "--porcelain", cwd=ws) == ""  # HEAD is whole: git reads it

    stopped = drain(*_args(ws, tape), env=env, cwd=tmp_path)
    message = " ".join(stopped.stderr.split())
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "elsewhere" not in message, message[-3000:]
    assert f"the run's branch autopack/{RUN} in {ws} names its accepted head" in message
    assert accepted[:12] in message and "git fsck" in message, message[-3000:]
    assert phase_row(url, "p2")["state"] == "QUEUED"
    assert attempts(url, "p2") == []


@pytest.mark.parametrize("step", ["store the answer", "check out the base"])
def test_a_required_git_filter_this_machine_lacks_hands_the_phase_back_naming_it(
    tmp_path: Path, step: str
) -> None:
    """``filter.crypt.required`` (git-crypt, git LFS) with no driver for it here: every
    attempt paid for an answer and failed ``git_error`` (git could not store its files,
    or check out the base's), until the phase had used its tries. The drain now stops at
    the first, exit 2 naming the filter, the phase handed back; with the driver installed
    the next drain does it."""
    url = _sqlite(tmp_path)
    env = env_for(url)
    ws = repository(tmp_path / "ws")
    (ws / ".gitattributes").write_text("*.py filter=crypt\n")
    if step == "check out the base":
        (ws / "old.py").write_text("old = 1\n")
    git("add", "--all", cwd=ws)
    git("commit", "-qm", "files the filter covers", cwd=ws)
    git("config", "filter.crypt.required", "true", cwd=ws)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", n, files(mod_py="x = 1\n")) for n in (1, 2, 3)])
    stopped = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    said = " ".join(stopped.stderr.split())
    assert stopped.returncode == 2, said[-3000:]
    assert "requires the git filter 'crypt'" in said and "no driver for it" in said, said
    assert [(a["outcome"], a["stop_reason"]) for a in attempts(url, "p1")] == [
        ("FAILED", "interrupted")
    ]
    assert phase_row(url, "p1")["state"] == "QUEUED"
    git("config", "filter.crypt.clean", "cat", cwd=ws)
    git("config", "filter.crypt.smudge", "cat", cwd=ws)
    done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert on_branch(ws, "pkg/mod.py") == "x = 1\n"


def test_a_run_branch_that_existed_before_the_run_is_named_not_built_on_silently(
    tmp_path: Path,
) -> None:
    """``autopack/RUN`` already there (an earlier run of the same id in another database,
    a person's branch of that name): the run's phases built on its commits without a
    word. The drain now says so; a branch another executor of the run made (at HEAD) is
    no news."""
    said = {}
    for case in ("made at HEAD", "holding a commit of mine"):
        home = tmp_path / case.replace(" ", "-")
        home.mkdir()
        url = _sqlite(home)
        env = env_for(url)
        ws = repository(home / "ws")
        if case == "made at HEAD":
            git("branch", "autopack/exec-run", cwd=ws)
        else:
            git("checkout", "-qb", "autopack/exec-run", cwd=ws)
            (ws / "mine.txt").write_text("mine\n")
            git("add", "mine.txt", cwd=ws)
            git("commit", "-qm", "a commit of mine", cwd=ws)
            git("checkout", "-q", "-", cwd=ws)
        create_run(run_file(home, [phase("p1", ["pkg/a.py"])]), env, home)
        tape = cassette(home, [line("p1", 1, files(a_py="a = 1\n"))])
        done = drain(*_args(ws, tape, phase_id="p1"), env=env, cwd=home)
        assert done.returncode == 0, done.stderr[-3000:]
        said[case] = " ".join(done.stderr.split())
        assert on_branch(ws, "pkg/a.py") == "a = 1\n"
    assert "existed before" not in said["made at HEAD"]
    mine = said["holding a commit of mine"]
    assert "branch autopack/exec-run existed before this run" in mine, mine[-3000:]
    assert "its phases build on the commits it holds" in mine
