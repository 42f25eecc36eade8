"""The benchmark command in BENCHMARKS.md runs from a clean checkout (tiny sizes).

Only that it works and drains every phase is checked here: its numbers are
measurements, recorded in BENCHMARKS.md, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, clean_env

REPO = Path(__file__).resolve().parents[1]


def _bench(tmp_path: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
    """Run ``python -m bench.control_plane ARGS`` with 3 phases per worker: (stdout, rows)."""
    rows_file = tmp_path / "rows.json"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.control_plane",
            "--phases-per-worker",
            "3",
            "--json",
            str(rows_file),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows: list[dict[str, Any]] = json.loads(rows_file.read_text())
    return finished.stdout, rows


@pytest.mark.postgres
def test_control_plane_benchmark_drains_every_phase_on_both_backends_and_the_floor(
    pg_admin: str, tmp_path: Path
) -> None:
    stdout, rows = _bench(
        tmp_path,
        "--backends",
        "sqlite,postgresql",
        "--workers",
        "2",
        "--floor",
        "--db-layer",
        "--pg-url",
        pg_admin,
    )
    shapes = sorted((row["backend"], row.get("layer", "http")) for row in rows)
    assert shapes == [
        ("floor", "http"),
        ("floor+threads", "http"),
        ("postgresql", "db"),
        ("postgresql", "http"),
        ("sqlite", "db"),
        ("sqlite", "http"),
    ]
    assert all(row["phases"] == 6 and row["phases_per_second"] > 0 for row in rows)
    assert "| floor+threads | 1 | 2 | 6 |" in stdout


def test_control_plane_benchmark_drives_a_server_running_elsewhere(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    server = Server(clean_env(DATABASE_URL=database_url), tmp_path, autopack_args=["serve"])
    try:
        server.wait_healthy()
        _, rows = _bench(tmp_path, "--backends", "", "--api-url", server.url, "--workers", "1,2")
    finally:
        server.stop()
    assert [(row["backend"], row["phases"]) for row in rows] == [
        (f"{backend} at {server.url}", 3),
        (f"{backend} at {server.url}", 6),
    ]
    assert all(row["cpu_ms_per_phase"]["server"] is None for row in rows)
    assert all(row["cpu_ms_per_phase"]["clients"] > 0 for row in rows)


def test_cli_startup_benchmark_times_every_command(tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.json"
    finished = subprocess.run(
        [sys.executable, "-m", "bench.cli_startup", "--runs", "1", "--json", str(rows_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**clean_env(), "TMPDIR": str(tmp_path)},
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows: list[dict[str, Any]] = json.loads(rows_file.read_text())
    assert [row["command"] for row in rows] == [
        "python -c pass",
        "import typer",
        "--version",
        "--help",
        "drain run --help",
        "run list --help",
        "db --help",
    ]
    assert all(row["min_s"] > 0 for row in rows)
    assert list(tmp_path.iterdir()) == [rows_file], "help and version touch no database"
