"""Helpers for the executor tests: small runs, hand-written cassettes, the real drain CLI.

A cassette line is an Anthropic Messages API response in its wire format, exactly what
the replay provider parses with the live provider's code; only the model is fake.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from autopack.control import runs
from autopack.db import open_database
from autopack.dburl import resolve_database_url
from autopack.runfile import load_run_file
from tests.support import clean_env, cli, free_port

RUN_ID = "exec-run"


def run_file(
    directory: Path,
    phases: Iterable[Mapping[str, Any]],
    *,
    run_id: str = RUN_ID,
    policy: Mapping[str, Any] | None = None,
    budgets: Mapping[str, Any] | None = None,
) -> Path:
    """A one-tier run definition (JSON) with ``phases``; backoff 0 so retries are prompt."""
    body = {
        "run_id": run_id,
        "policy": {"retry_backoff_seconds": 0.0, **(policy or {})},
        "budgets": dict(budgets or {}),
        "tiers": [{"tier_id": "T1", "name": "tier", "phases": list(phases)}],
    }
    path = directory / f"{run_id}.json"
    path.write_text(json.dumps(body))
    return path


def phase(
    phase_id: str,
    deliverables: list[str],
    *,
    checks: list[str] | None = None,
    max_attempts: int = 3,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "phase_id": phase_id,
        "name": phase_id,
        "description": f"Write {', '.join(deliverables)}.",
        "task_category": "implementation",
        "complexity": "low",
        "scope": {"paths": ["pkg/"], "deliverables": deliverables},
        "checks": checks or [],
        "max_attempts": max_attempts,
        **extra,
    }


def files(**contents: str) -> str:
    """A Builder answer writing ``pkg/<name>`` files: ``files(a_py="x = 1")``."""
    return json.dumps(
        {
            "files": [
                {"path": f"pkg/{name.replace('_py', '.py')}", "content": body}
                for name, body in contents.items()
            ],
            "summary": "wrote files",
        }
    )


def line(
    phase_id: str,
    attempt: int,
    text_answer: str,
    *,
    role: str = "builder",
    stop_reason: str = "end_turn",
    output_tokens: int | None = None,
    latency_ms: float = 0.0,
    run_id: str = RUN_ID,
) -> dict[str, Any]:
    return {
        "match": {"run_id": run_id, "phase_id": phase_id, "attempt": attempt, "role": role},
        "provider": "anthropic",
        "model": "claude-sonnet-5-5",
        "latency_ms": latency_ms,
        "response": {
            "id": f"msg_{phase_id}_{attempt}_{role}",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-5-5",
            "content": [{"type": "text", "text": text_answer}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 500,
                "output_tokens": output_tokens or max(1, len(text_answer) // 4),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
    }


def cassette(directory: Path, lines: Iterable[Mapping[str, Any]]) -> Path:
    path = directory / "cassette.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in lines))
    return path


def env_for(database_url: str, **extra: str) -> dict[str, str]:
    """A clean environment on ``database_url``; the default port is one nobody serves."""
    return clean_env(
        DATABASE_URL=database_url,
        AUTOPACK_DEFAULT_API_PORT=str(free_port()),
        TELEMETRY_DB_ENABLED="1",
        **extra,
    )


def create_run(path: Path, env: Mapping[str, str], cwd: Path) -> None:
    """Create the run defined in ``path`` in the database ``env`` names.

    Setup, not the subject: the control plane's own create runs in this process (a CLI
    process cost 2.4 s of CPU per test on the CI machine); ``autopack run create`` itself is
    tested through the real CLI (test_control_plane_cli, test_one_path). With
    ``AUTOPACK_API_URL`` set, the test means that server: the CLI creates it there.
    """
    if env.get("AUTOPACK_API_URL"):
        result = cli("run", "create", str(path), cwd=cwd, env=env)
        assert result.returncode == 0, result.stderr
        return
    url = resolve_database_url(env["DATABASE_URL"], cwd)
    database = open_database(url, role="test", log=False, create=True)
    try:
        runs.create_run(database, load_run_file(path))
    finally:
        database.close()


def drain(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``autopack drain ARGS --json`` (the summary is JSON on stdout)."""
    return cli("drain", *args, "--json", cwd=cwd, env=env, timeout=timeout)


def cli_drain(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``autopack drain ARGS`` as a person runs it (the summary as tables)."""
    return cli("drain", *args, cwd=cwd, env=env, timeout=timeout)


_STARTED: list[subprocess.Popen[str]] = []


def drain_process(*args: str, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[str]:
    """``autopack drain ARGS`` in the background; killed after the test if still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "autopack", "drain", *args],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _STARTED.append(process)
    return process


def stop_drains() -> None:
    """Kill the drains a test left running (an assertion failed before it waited): each
    kept its lease and, collected in a later test, failed that one with a ResourceWarning."""
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def git(*args: str, cwd: Path) -> str:
    """``git ARGS`` in ``cwd``; its output."""
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def repository(path: Path, files: Mapping[str, str] | None = None) -> Path:
    """A git repository at ``path`` whose first commit holds ``files``."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", cwd=path)
    for name, content in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    git("add", "-A", cwd=path)
    git("commit", "-q", "--allow-empty", "-m", "start", cwd=path)
    return path


BREAKAGES = ["empty .git file", "gitdir to nowhere", "corrupt HEAD", "missing objects"]
"""Ways a repository's ``.git`` is there but git cannot read it (:func:`break_repository`)."""


def break_repository(root: Path, how: str) -> str:
    """Damage the git repository at ``root`` one of the :data:`BREAKAGES` ways; git's words
    for it."""
    git_dir = root / ".git"
    if how in ("empty .git file", "gitdir to nowhere"):
        shutil.rmtree(git_dir)
        git_dir.write_text("" if how == "empty .git file" else f"gitdir: {root / 'gone'}\n")
        return "invalid gitfile format" if how == "empty .git file" else "not a git repository"
    if how == "corrupt HEAD":
        (git_dir / "HEAD").write_text("garbage\n")
        return "not a git repository"
    git("commit", "-q", "--allow-empty", "-m", "lost", cwd=root)
    for objects in (git_dir / "objects").glob("??"):
        shutil.rmtree(objects)
    return "bad object HEAD"


def on_branch(repo: Path, path: str, run_id: str = RUN_ID) -> str | None:
    """A file's content on the run's branch, or None when the branch does not have it."""
    found = subprocess.run(
        ["git", "show", f"autopack/{run_id}:{path}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout if found.returncode == 0 else None


def branch_files(repo: Path, run_id: str = RUN_ID) -> list[str]:
    """Every file on the run's branch."""
    return git("ls-tree", "-r", "--name-only", f"autopack/{run_id}", cwd=repo).splitlines()


def branch_log(repo: Path, run_id: str = RUN_ID) -> list[str]:
    """The run branch's commit subjects, newest first."""
    return git("log", "--format=%s", f"autopack/{run_id}", cwd=repo).splitlines()


def rows(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Read rows straight from the database (what a user would check with sqlite3/psql)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


JSON_COLUMNS = ("files_written", "check_results", "audit_verdict", "details")


def attempts(database_url: str, phase_id: str, run_id: str = RUN_ID) -> list[dict[str, Any]]:
    """The phase's attempt history (JSON columns decoded, as SQLite returns them as text)."""
    found = rows(
        database_url,
        "SELECT * FROM phase_attempts WHERE run_id = :r AND phase_id = :p ORDER BY attempt",
        r=run_id,
        p=phase_id,
    )
    for row in found:
        for column in JSON_COLUMNS:
            if isinstance(row[column], str):
                row[column] = json.loads(row[column])
    return found


def phase_row(database_url: str, phase_id: str, run_id: str = RUN_ID) -> dict[str, Any]:
    [row] = rows(
        database_url,
        "SELECT * FROM phases WHERE run_id = :r AND phase_id = :p",
        r=run_id,
        p=phase_id,
    )
    return row
