"""Helpers shared by the tests: real subprocesses, real servers, real databases."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from autopack.config import Settings
from tests import forked_cli

REPO = Path(__file__).resolve().parents[1]
SETTING_NAMES = [name.upper() for name in Settings.model_fields]


TERMINAL_SIZE = ("COLUMNS", "LINES")
"""Set by pytest-xdist's workers (80 columns); a piped command must not inherit them."""


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without any Autopack setting (nor a terminal size:
    the commands' output is piped, as in CI), plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES and k not in TERMINAL_SIZE}
    env["PYTHONPATH"] = str(REPO / "src")
    env.update(overrides)
    return env


PORTS_PER_WORKER = 4000
_next_port = itertools.count(random.randrange(PORTS_PER_WORKER))


def free_port() -> int:
    """A loopback port free now that no other test process is handed: each pytest-xdist
    worker takes the next of its own range below the kernel's ephemeral ports (32768 and
    up). A port the kernel picked (bind to 0) was handed to a server of one worker and,
    once closed, to another worker's or a command's own server: the second server failed
    to bind, and the first answered its requests (a 401 from a server with tokens)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = 12000 + (int(worker) % 5 if worker.isdigit() else 0) * PORTS_PER_WORKER
    while True:
        port = first + next(_next_port) % PORTS_PER_WORKER
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use, or still closing: the next one
                continue
        return port


def cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m autopack ARGS`` as a real subprocess, forked from a process that has
    the libraries imported already (:mod:`tests.forked_cli` says what that changes: nothing
    a command can see). ``AUTOPACK_TEST_FRESH_CLI=1`` in pytest's environment starts every
    one as a new interpreter instead, as does an environment Python reads differently at
    start-up."""
    return _python(["-m", "autopack", *args], cwd=cwd, env=env, timeout=timeout)


def _python(
    argv: list[str], *, cwd: Path, env: Mapping[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    env = dict(env) if env is not None else clean_env()
    if os.environ.get("AUTOPACK_TEST_FRESH_CLI") == "1" or forked_cli.startup_differs(
        env, _FORK_SERVER.env
    ):
        return fresh_python(argv, cwd=cwd, env=env, timeout=timeout)
    return _FORK_SERVER.run(argv, cwd=cwd, env=env, timeout=timeout)


def fresh_python(
    argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` in a new interpreter."""
    return subprocess.run(
        [sys.executable, *argv],
        check=False,
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_FORK_SERVER = forked_cli.ForkServer(clean_env())


def database_identity(url: str, cwd: Path) -> dict[str, Any]:
    """``db identity --json`` of the database at ``url``, set up first with ``db init``
    (a database without tables is set up only by a command that writes)."""
    env = clean_env(DATABASE_URL=url)
    initialised = cli("db", "init", cwd=cwd, env=env)
    assert initialised.returncode == 0, initialised.stderr
    result = cli("db", "identity", "--json", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def table_names(url: str) -> set[str]:
    """The tables in the database at ``url``, read without Autopack."""
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def script(
    name: str, *args: str, cwd: Path, env: Mapping[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a legacy-compatible script from ``scripts/`` as users type it (forked as
    :func:`cli` is)."""
    return _python([str(REPO / "scripts" / name), *args], cwd=cwd, env=env, timeout=timeout)


class Server:
    """``uvicorn autopack.main:app [UVICORN_ARGS]`` in a child process on a free loopback
    port; with ``autopack_args``, ``python -m autopack ARGS --port PORT`` instead."""

    def __init__(
        self,
        env: Mapping[str, str],
        cwd: Path,
        port: int | None = None,
        autopack_args: Sequence[str] = (),
        uvicorn_args: Sequence[str] = (),
        prefix: Sequence[str] = (),
    ) -> None:
        """``prefix``: a command that execs the server as its last arguments (``unshare``)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"uvicorn-{self.port}.log"
        self._log_file = self.log.open("w")
        if autopack_args:
            command = [sys.executable, "-m", "autopack", *autopack_args, "--port", str(self.port)]
        else:
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "autopack.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *uvicorn_args,
            ]
        self.process = subprocess.Popen(
            [*prefix, *command],
            cwd=cwd,
            env=dict(env),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, timeout: float = 30) -> dict[str, Any]:
        """Poll /health until it answers 200, the process dies, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: {self.output()}")
            try:
                response = httpx.get(f"{self.url}/health", timeout=2)
                if response.status_code == 200:
                    body: dict[str, Any] = response.json()
                    return body
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not healthy after {timeout}s: {self.output()}")

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()

    def __enter__(self) -> Server:
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Pid:
    """A process id, and a moment (seconds since boot) the process had started by. Pids
    wrap at 32,768 here and the suite starts thousands of processes: a killed check's pid
    was another process's seconds later, which "outlived" the check (and a test's cleanup
    killed it). A process found at ``pid`` that started after ``born_by`` is not this one."""

    pid: int
    born_by: float = math.inf


def written_pid(path: Path) -> Pid:
    """The pid a process wrote to ``path``: it had started by the time the file was."""
    since_boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return Pid(int(path.read_text()), path.stat().st_mtime - since_boot)


def alive(pid: int) -> Pid:
    """``pid``, of a process known to be running now."""
    return Pid(pid, time.clock_gettime(time.CLOCK_BOOTTIME))


def running(pid: int | Pid) -> bool:
    """``pid`` runs: it exists and is no zombie (exited, not yet reaped by its parent)."""
    known = pid if isinstance(pid, Pid) else Pid(pid)
    try:
        stat = Path(f"/proc/{known.pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:  # gone before, or while, it was read (ProcessLookupError mid-read)
        return False
    started = int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks since boot
    return stat[0] != "Z" and started <= known.born_by + 0.02  # a tick's rounding


def gone(pid: int | Pid, timeout: float = 15.0) -> bool:
    """Whether ``pid`` stops running within ``timeout`` (a killed orphan is reaped by init,
    not by us: that takes a moment)."""
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


def kill(pid: Pid) -> None:
    """SIGKILL ``pid`` if it is still that process (a test's cleanup)."""
    if running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid.pid, signal.SIGKILL)


T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll ``check`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")
