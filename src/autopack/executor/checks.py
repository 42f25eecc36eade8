"""Running a phase's checks (e.g. ``python -m pytest -q tests/x``) in its workspace.

Each command runs in a shell with the workspace as working directory, a timeout that kills
its whole process group, and ``python``/``pytest`` resolving to the executor's own
interpreter. Credentials are removed from the environment: a check runs code the LLM wrote.
An executor can refuse checks outside an allow-list
(:class:`~autopack.executor.check_policy.CheckPolicy`) before any work starts on the phase.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from autopack.contract import CheckResult

DEFAULT_TIMEOUT_SECONDS = 300.0
TAIL_CHARS = 4000
_SECRET_VARIABLES = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DATABASE_URL")


def _check_env(scratch: Path) -> dict[str, str]:
    """The executor's environment minus credentials, with caches kept out of the workspace
    (a git workspace must only ever change by the phase's own files)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _SECRET_VARIABLES and k not in ("AUTOPACK_API_TOKEN", "AUTOPACK_WORKER_TOKEN")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    env["PYTEST_ADDOPTS"] = f"-p no:cacheprovider {env.get('PYTEST_ADDOPTS', '')}".strip()
    env.pop("PYTHONPATH", None)
    return env


def run_check(command: str, workspace: Path, timeout: float) -> CheckResult:
    with tempfile.TemporaryDirectory(prefix="autopack-check-") as scratch:
        return _run(command, workspace, timeout, _check_env(Path(scratch)))


def _run(command: str, workspace: Path, timeout: float, env: dict[str, str]) -> CheckResult:
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        shell=True,
        cwd=workspace,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    timed_out = False
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n[autopack] check timed out after {timeout:g}s and was killed"
    return CheckResult(
        command=command,
        exit_code=None if timed_out else process.returncode,
        passed=not timed_out and process.returncode == 0,
        timed_out=timed_out,
        duration_s=round(time.monotonic() - started, 3),
        output_tail=output[-TAIL_CHARS:].replace("\x00", "\\x00"),  # text columns hold no NUL
    )


def run_checks(
    commands: Sequence[str], workspace: Path, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> list[CheckResult]:
    """Run every check (all of them, so the Builder gets all the feedback at once)."""
    return [run_check(command, workspace, timeout) for command in commands]
