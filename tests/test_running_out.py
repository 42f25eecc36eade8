"""A drain on a machine that runs out of disk space: not the phase's failure.

A full filesystem under the attempts' worktrees or the run's repository failed every
attempt the same way (``executor_error``, ``git_error``), spending each phase's tries
until the run was SKIPPED or FAILED. The drain stops instead (exit 2), naming what ran
out and where, with the phase handed back: QUEUED, no try spent, nothing committed.
The filesystem is a 2 MB tmpfs, so these tests need root (skipped otherwise).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    drain,
    env_for,
    line,
    on_branch,
    phase,
    phase_row,
    repository,
    rows,
    run_file,
)
from tests.support import cli


@contextmanager
def mounted(at: Path, *how: str) -> Iterator[Path]:
    """``mount HOW AT`` for the test (skipped without root), unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    done = subprocess.run(["mount", *how, str(at)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB filesystem."""
    (tmp_path / "tiny").mkdir()
    with mounted(tmp_path / "tiny", "-t", "tmpfs", "-o", "size=2m", "tmpfs") as mount:
        yield mount


def _answer(files: int) -> str:
    """``files`` files of 200 KB each (under the per-file limit), none compressible."""
    content = [
        {
            "path": f"pkg/m{k}.py",
            "content": f"x = '{base64.b64encode(os.urandom(150_000)).decode()}'\n",
        }
        for k in range(files)
    ]
    return json.dumps({"files": content, "summary": "wrote files"})


@pytest.mark.parametrize("full", ["worktrees", "repository"])
def test_a_full_disk_stops_the_drain_and_hands_the_phase_back(
    tmp_path: Path, tiny_disk: Path, full: str
) -> None:
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    cache = tiny_disk / "cache" if full == "worktrees" else tmp_path / "cache"
    workspace = tiny_disk / "ws" if full == "repository" else tmp_path / "ws"
    env = env_for(url, AUTOPACK_CACHE_DIR=str(cache))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/m0.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", n, _answer(16)) for n in (1, 2, 3)])

    result = drain(
        *("run", "--run-id", "exec-run", "--cassette", str(tape), "--auditor", "rules"),
        *("--workspace", str(workspace)),
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.split())
    assert "ran out of disk space (No space left on device" in said
    assert f"{workspace if full == 'repository' else cache / 'worktrees'}" in said
    assert "handed back" in said and "Traceback" not in result.stderr
    assert phase_row(url, "p1")["state"] == "QUEUED"
    [attempt] = attempts(url, "p1")
    assert attempt["stop_reason"] == "interrupted"
    assert "ran out of disk space" in attempt["error"]
    assert on_branch(workspace, "pkg/m0.py") is None


def test_a_database_with_no_room_left_is_named_with_the_room_left(
    tmp_path: Path, tiny_disk: Path
) -> None:
    """SQLite's ``database or disk is full`` was a 503 saying "the database connection
    failed 5 times in a row … try again shortly", retried ten seconds by every write of
    the drain (over a minute here): the full disk was nowhere. Now a 507, not retried."""
    database = tiny_disk / "autopack.db"
    url = f"sqlite:///{database}"
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    phases = [phase(f"p{n}", [f"pkg/m{n}.py"]) for n in range(12)]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    answers = [line(f"p{n}", 1, _answer(1).replace("m0", f"m{n}")) for n in range(12)]
    tape = cassette(tmp_path, answers)
    (tiny_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(tiny_disk).free - 150_000))

    result = drain(
        *("run", "--run-id", "exec-run", "--cassette", str(tape), "--auditor", "rules"),
        *("--workspace", str(tmp_path / "ws"), "-k", "2"),
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.split())
    assert f"the SQLite database {database} (0 bytes free in {tiny_disk})" in said
    assert "has no room to write (database or disk is full)" in said
    assert said.count("DatabaseFull:") == 1 and "Traceback" not in said
    (tiny_disk / "filler").unlink()
    assert "FAILED" not in {row["state"] for row in rows(url, "SELECT state FROM phases")}


def test_a_database_sqlite_cannot_write_beside_says_why(tmp_path: Path, tiny_disk: Path) -> None:
    """SQLite writes a journal beside the database even to read: on a read-only
    filesystem it said "unable to open database file", on a full one "disk I/O error"."""
    folder = tmp_path / "db"
    folder.mkdir()
    for where in (folder, tiny_disk):
        env = env_for(f"sqlite:///{where / 'autopack.db'}")
        create_run(run_file(tmp_path, [phase("p1", ["pkg/m0.py"])]), env, tmp_path)
    (tiny_disk / "filler").write_bytes(b"\0" * shutil.disk_usage(tiny_disk).free)
    with mounted(folder, "--bind", folder.as_posix()):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        listed = cli(
            "run", "list", cwd=tmp_path, env=env_for(f"sqlite:///{folder / 'autopack.db'}")
        )
    assert listed.returncode == 2
    assert f"({folder} is on a read-only filesystem;" in listed.stderr
    drained = drain("run", "--run-id", "exec-run", env=env, cwd=tmp_path)
    assert drained.returncode == 2
    assert f"(only 0 bytes free in {tiny_disk})" in drained.stderr


def test_a_read_only_workspace_is_named_without_a_traceback(tmp_path: Path) -> None:
    """Opening Autopack's lock file in the repository's git directory was an ``OSError``
    traceback (exit 1) before anything was claimed."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, AUTOPACK_CACHE_DIR=str(tmp_path / "cache"))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/m0.py"])]), env, tmp_path)
    workspace = repository(tmp_path / "ws")
    tape = cassette(tmp_path, [line("p1", 1, _answer(1))])
    with mounted(workspace, "--bind", workspace.as_posix()):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(workspace)], check=True)
        result = drain(
            *("run", "--run-id", "exec-run", "--cassette", str(tape), "--auditor", "rules"),
            *("--workspace", str(workspace)),
            env=env,
            cwd=tmp_path,
        )
    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.split())
    assert f"{workspace}/.git/autopack.lock: Read-only file system" in said
    assert "Traceback" not in said
    assert phase_row(url, "p1")["state"] == "QUEUED"
