"""The suite's ``cli()`` forks commands from a process with the libraries imported
(:mod:`tests.forked_cli`); what a command sees and does must be what a new
``python -m autopack`` sees and does, or every CLI test would test something else."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import (
    REPO,
    clean_env,
    cli,
    fresh_python,
    gone,
    running,
    script,
    wait_for,
    written_pid,
)


def test_a_forked_command_sees_its_own_environment_directory_and_arguments(
    tmp_path: Path,
) -> None:
    """Settings come from the environment, the working directory's ``.env`` and the flags;
    output is piped (never wrapped, even at 100,000 columns); errors exit 2 on stderr."""
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / ".env").write_text("DATABASE_URL=sqlite:///from-env-file.db\n")
    env = clean_env(AUTOPACK_LLM_TIMEOUT_SECONDS="77", COLUMNS="61")
    for args in (
        ("config", "show", "--json"),
        ("--database-url", "sqlite:///flag.db", "config", "show", "--json"),
        ("config", "show"),
        ("run", "show", "nope", "--database-url", "sqlite:///nowhere.db"),
    ):
        forked = cli(*args, cwd=project / "sub", env=env)
        fresh = fresh_python(["-m", "autopack", *args], cwd=project / "sub", env=env)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            fresh.returncode,
            fresh.stdout,
            fresh.stderr,
        ), args
    shown = json.loads(cli("config", "show", "--json", cwd=project / "sub", env=env).stdout)
    assert str(project / "from-env-file.db") in json.dumps(shown)
    assert "77" in json.dumps(shown)


def test_a_forked_script_answers_as_a_new_interpreter_does(tmp_path: Path) -> None:
    """``python scripts/NAME.py ARGS``: the same output and exit status either way."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}")
    for args in ((), ("--run-id", "r", "--phase-id", "p", "--no-such-flag")):
        argv = [str(REPO / "scripts" / "drain_one_phase.py"), *args]
        forked = script("drain_one_phase.py", *args, cwd=tmp_path, env=env)
        fresh = fresh_python(argv, cwd=tmp_path, env=env)
        assert forked.returncode == fresh.returncode == 2
        assert (forked.stdout, forked.stderr) == (fresh.stdout, fresh.stderr)
        assert "Usage: autopack drain phase" in forked.stderr


def _carrying(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if running(pid)]


def test_a_forked_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    """A server that accepts and never answers: the command waits on it past the test's
    timeout, which kills it, as ``subprocess.run(timeout=…)`` does."""
    marker = f"FORKED_CLI_TIMEOUT_{tmp_path.name}"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = clean_env(AUTOPACK_API_URL=url, AUTOPACK_API_WAIT_SECONDS="0", **{marker: "1"})
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            cli("run", "list", cwd=tmp_path, env=env, timeout=3)
        # Left alone, the command would wait 30 s (the client's read timeout) for an answer.
        assert time.monotonic() - started < 20
    assert wait_for(lambda: not _carrying(marker), timeout=10)


def test_the_fork_server_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A pytest worker killed (not exiting): its fork server must not outlive it."""
    pid_file = tmp_path / "server.pid"
    program = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests import support\n"
        f"support.cli('--version', cwd=support.REPO)\n"
        f"open({str(pid_file)!r}, 'w').write(str(support._FORK_SERVER.pid))\n"
        "os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", program], env=clean_env(), timeout=120, check=False)
    assert gone(written_pid(pid_file), timeout=10)
