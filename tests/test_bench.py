"""The benchmark command in BENCHMARKS.md runs from a clean checkout (tiny sizes).

Only that it works and drains every phase is checked here: its numbers are
measurements, recorded in BENCHMARKS.md, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.postgres
def test_control_plane_benchmark_drains_every_phase_on_both_backends_and_the_floor(
    pg_admin: str, tmp_path: Path
) -> None:
    rows_file = tmp_path / "rows.json"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.control_plane",
            "--backends",
            "sqlite,postgresql",
            "--workers",
            "2",
            "--phases-per-worker",
            "3",
            "--floor",
            "--db-layer",
            "--pg-url",
            pg_admin,
            "--json",
            str(rows_file),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
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
    assert "| floor+threads | 1 | 2 | 6 |" in finished.stdout
