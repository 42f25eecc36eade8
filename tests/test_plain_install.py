"""Issue 13 §3: ``pip install .`` in a fresh virtualenv (no dev extras, so no pytest) and
``autopack demo`` works; a run whose check needs pytest fails once, ``check_unavailable``.

Slow (a real virtualenv and a real ``pip install``, about a minute: see
BENCHMARKS.md), but part of ``make test`` and so of ``.ci/run``. pip installs
the pinned dependencies (``constraints.txt``) from the package index, as ``make install``
does; the wheel cache makes a second run faster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.executor_support import cassette, files, line, phase, rows, run_file
from tests.support import REPO, clean_env

pytestmark = pytest.mark.slow


def _plain_env() -> dict[str, str]:
    """No Autopack setting, no PYTHONPATH: only what the virtualenv itself has."""
    env = clean_env()
    env.pop("PYTHONPATH", None)
    return env


def plain_venv(root: Path) -> Path:
    """A fresh virtualenv with ``pip install <copy of this tree>`` and nothing else."""
    source = root / "source"  # a copy: building in place would leave build/ in the repo
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = subprocess.run(
        [
            str(venv / "bin/python"),
            "-m",
            "pip",
            "install",
            "-q",
            # No byte-compiling of every installed module (half of the install's time):
            # Python compiles what the demo imports as it runs.
            "--no-compile",
            "-c",
            str(REPO / "constraints.txt"),
            str(source),
        ],
        capture_output=True,
        text=True,
        env=_plain_env(),
        timeout=900,
        check=False,
    )
    assert installed.returncode == 0, "pip install . failed:\n" + installed.stderr[-3000:]
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin/autopack"), *args],
        cwd=cwd,
        env=_plain_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_a_plain_install_runs_the_demo_and_names_a_missing_pytest(tmp_path: Path) -> None:
    """One test (one virtualenv to build, whatever worker runs it)."""
    venv = plain_venv(tmp_path / "plain")
    _demo_works(venv, tmp_path / "demo-case")
    _check_needing_pytest_fails_once(venv, tmp_path / "check-case")


def _demo_works(plain_venv: Path, tmp_path: Path) -> None:
    tmp_path.mkdir()
    python = str(plain_venv / "bin/python")
    no_pytest = subprocess.run([python, "-c", "import pytest"], capture_output=True, check=False)
    assert no_pytest.returncode != 0, "the plain install must not have pytest"

    demo = _run(
        plain_venv, "demo", "--dir", str(tmp_path / "demo"), "--replay-speed", "0", cwd=tmp_path
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "run telemetry-collection-v4: DONE_SUCCESS" in demo.stdout
    url = f"sqlite:///{tmp_path / 'demo/autopack.db'}"
    assert rows(url, "SELECT state, COUNT(*) AS n FROM phases GROUP BY state") == [
        {"state": "COMPLETE", "n": 10}
    ]
    workspace = tmp_path / "demo/workspace"
    tests = sorted(
        str(p.relative_to(workspace)) for p in workspace.glob("examples/*/tests/test_*.py")
    )
    checked = subprocess.run(
        [python, "-m", "unittest", "-q", *tests],
        cwd=workspace,
        capture_output=True,
        text=True,
        env=_plain_env(),
        check=False,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]


def _check_needing_pytest_fails_once(plain_venv: Path, tmp_path: Path) -> None:
    tmp_path.mkdir()
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    body = run_file(tmp_path, [phase("p1", ["pkg/mod.py"], checks=["python -m pytest -q pkg"])])
    assert (
        _run(plain_venv, "--database-url", url, "run", "create", str(body), cwd=tmp_path).returncode
        == 0
    )
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="VALUE = 1\n"))])
    drained = _run(
        plain_venv,
        *("drain", "run", "--run-id", "exec-run", "--cassette", str(tape), "--json"),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws"), "--database-url", url),
        cwd=tmp_path,
    )
    assert drained.returncode == 1, drained.stderr[-3000:]
    summary = json.loads(drained.stdout)
    assert [(a["attempt"], a["stop_reason"]) for a in summary["attempts"]] == [
        (1, "check_unavailable")
    ]
    [attempt] = rows(url, "SELECT error FROM phase_attempts")
    assert (
        "Python module pytest" in attempt["error"] and "No module named pytest" in attempt["error"]
    )
