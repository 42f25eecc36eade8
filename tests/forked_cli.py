"""``python -m autopack ARGS`` (or ``python scripts/NAME.py ARGS``) as a real child process,
forked from one that has already imported the libraries every command loads.

Why: the suite runs the CLI about 800 times, and each fresh ``python -m autopack`` spent
0.75-1 CPU-second importing FastAPI, SQLAlchemy, pydantic and the API before doing
anything (a process trace of one run: the CLI was 900 of the suite's 2,300 CPU-seconds).
Forked from a process that imported them once, a command starts in a few milliseconds.

The child is still a process of its own, started the way ``python -m autopack`` starts
one: its own argv, environment (``os.environ`` replaced before any module that reads it
is imported), working directory (also ``sys.path[0]``, as ``-m`` puts it), stdin
``/dev/null``, stdout and stderr into files the caller reads, exit status (``-N`` for a
signal) and children. What it shares with the server is only what modules did at import:
the server imports nothing that reads the environment or the terminal then
(``autopack.cli`` makes its consoles at import, Typer reads ``TERMINAL_WIDTH`` and
``FORCE_COLOR``: those load in the child). Anything Python itself reads at start-up
(``PYTHON*``, the locale) set differently by a test gets a fresh interpreter instead.

The server runs as ``python -m tests.forked_cli SOCKET`` until its stdin closes (its
parent, a pytest worker, is gone); :class:`ForkServer` is the worker's side.
"""

from __future__ import annotations

import atexit
import gc
import json
import locale
import os
import runpy
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO

PRELOAD = (
    "autopack.main",
    "autopack.client",
    "autopack.connect",
    "autopack.executor.executor",
    "alembic.command",
    "uvicorn.server",
    "uvicorn.config",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.lifespan.on",
    "uvicorn.loops.uvloop",
    "rich.console",
    "rich.table",
    "rich.progress",
    "rich.live",
    # The providers' SDKs: a drain on Anthropic spent 2.6 CPU-seconds importing
    # `anthropic` (OpenAI: 0.8) in every forked command that made a call. Each reads its
    # log level (and OpenAI its Azure defaults) at import: STARTUP_VARIABLES lists them.
    "autopack.llm.anthropic_provider",
    "autopack.llm.openai_provider",
)
"""Modules that read no environment at import but :data:`STARTUP_VARIABLES` (see the
module's docstring)."""

STARTUP_VARIABLES = (
    "PYTHON",
    "LC_",
    "LANG",
    "TZ",
    "TMPDIR",
    "ANTHROPIC_LOG",
    "OPENAI_LOG",
    "OPENAI_API_TYPE",
    "OPENAI_API_VERSION",
    "AZURE_OPENAI_ENDPOINT",
)
"""Environment variables read once, as the interpreter starts or a module is imported
(``sys.path``, the locale, ``time.tzname``, ``tempfile.gettempdir()``, the SDKs' log
levels and OpenAI's module-level Azure client defaults)."""


def startup_differs(env: Mapping[str, str], server: Mapping[str, str]) -> bool:
    """Would an interpreter started with ``env`` differ from the server's at start-up?"""

    def startup(environ: Mapping[str, str]) -> dict[str, str]:
        return {k: v for k, v in environ.items() if k.startswith(STARTUP_VARIABLES)}

    return startup(env) != startup(server)


def _become(request: dict[str, object], out: int, err: int) -> None:
    """In the command's process: its streams, directory, environment and argv."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((devnull, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    cwd = str(request["cwd"])
    os.chdir(cwd)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    argv = request["argv"]
    assert isinstance(argv, list)
    if argv[0] == "-m":  # -m autopack ARGS
        sys.argv = ["-m", *argv[2:]]
        sys.path[0] = cwd
    else:  # a script: its own directory comes first
        sys.argv = argv
        sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))


def _supervise(connection: socket.socket) -> bool:
    """In a child of the server: receive one command, fork its process, report that
    process's pid and then its exit status. Returns (True) only in the command's process,
    which then runs it at the top level, so it exits as ``python -m autopack`` does."""
    pid = -1
    try:
        message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 2)
        request = json.loads(message)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # waitpid below; the command's own waits
        pid = os.fork()
        if pid == 0:
            connection.close()
            _become(request, *fds)
            return True
        for fd in fds:
            os.close(fd)
        connection.sendall(f"{pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    finally:
        if pid != 0:
            os._exit(0)
    return False


def serve(path: str) -> bool:
    """Fork a command for each connection to ``path``; False when the parent is gone, True
    in a command's process."""
    for module in PRELOAD:
        __import__(module)
    gc.freeze()  # the collector never touches these objects: their pages stay shared
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the supervisors are reaped by the kernel
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:  # the pytest worker is gone
                listener.close()
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
                return False
            connection, _ = listener.accept()
            if os.fork() == 0:
                selector.close()
                listener.close()
                return _supervise(connection)
            connection.close()


class ForkServer:
    """A pytest worker's side: the server started (with ``env``) on first use, it ends
    when the worker does (its stdin closes)."""

    def __init__(self, env: dict[str, str]) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._socket = ""
        self.env = env

    def _address(self) -> str:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._socket = str(Path(tempfile.mkdtemp(prefix="cli-fork-")) / "fork.sock")
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "tests.forked_cli", self._socket],
                    cwd=Path(__file__).parents[1],
                    env=self.env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                assert self._process.stdout is not None
                ready = self._process.stdout.readline()
                assert ready == b"ready\n", f"the CLI fork server did not start: {ready!r}"
                atexit.register(self._stop, self._process)
            return self._socket

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @staticmethod
    def _stop(process: subprocess.Popen[bytes]) -> None:
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        process.wait(timeout=30)

    def run(
        self, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """``python ARGV`` (``-m autopack ARGS``, or a script and its arguments)."""
        command = [sys.executable, *argv]
        request = json.dumps({"argv": argv, "cwd": str(cwd), "env": env}).encode()
        with (
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
            socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection,
        ):
            connection.connect(self._address())
            socket.send_fds(connection, [request], [out.fileno(), err.fileno()])
            connection.settimeout(30)
            pid = _number(connection)
            connection.settimeout(timeout)
            try:
                code = _number(connection)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                connection.settimeout(30)
                connection.recv(64)
                raise subprocess.TimeoutExpired(command, timeout, _read(out), _read(err)) from None
            return subprocess.CompletedProcess(command, code, _text(_read(out)), _text(_read(err)))


def _number(connection: socket.socket) -> int:
    """The next number the supervisor sends (a pid, then an exit status)."""
    message = connection.recv(64)
    if not message:
        raise RuntimeError("the CLI fork server's supervisor ended without an answer")
    return int(message)


def _read(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read()


def _text(data: bytes) -> str:
    """As ``subprocess.run(text=True)`` decodes a child's output."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__" and serve(sys.argv[1]):
    if sys.argv[0] == "-m":
        runpy.run_module("autopack", run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")
