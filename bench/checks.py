"""What running one check costs the executor, beyond the check's own work.

    .venv/bin/python -m bench.checks [--checks 60] [--command true] [--json FILE]

Runs ``--command`` (default ``true``: a check that does nothing) ``--checks`` times
through :func:`autopack.executor.checks.run_checks`, the executor's own path (a scratch
directory, the environment without credentials, the check's shell in a session of its
own, the wait, the kill of what it left, the output's tail), after three runs not
counted. Reported: wall milliseconds per check (p50, p90) and the CPU milliseconds per
check of this process and its children together (``getrusage``), which is what a check
takes from the other work of a 2-core machine.

Run it from another checkout's ``src`` (``PYTHONPATH=OTHER/src``) to compare commits in
the same hour.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from autopack.executor.checks import run_checks


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(command: str, checks: int) -> dict[str, float]:
    """Per-check wall (p50, p90) and CPU milliseconds of ``checks`` runs of ``command``."""
    with tempfile.TemporaryDirectory(prefix="bench-checks-") as workspace:
        for _ in range(3):
            run_checks([command], Path(workspace))
        walls = []
        cpu_before = _cpu_seconds()
        for _ in range(checks):
            started = time.perf_counter()
            (result,) = run_checks([command], Path(workspace))
            walls.append(time.perf_counter() - started)
            if not result.passed:
                raise SystemExit(f"the check failed: {result.output_tail}")
        cpu = _cpu_seconds() - cpu_before
    walls.sort()
    return {
        "wall_ms_p50": round(1000 * statistics.median(walls), 1),
        "wall_ms_p90": round(1000 * walls[int(0.9 * (len(walls) - 1))], 1),
        "cpu_ms_per_check": round(1000 * cpu / checks, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=60)
    parser.add_argument("--command", default="true")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = {"machine": platform.machine(), **measure(args.command, args.checks)}
    print(json.dumps(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
