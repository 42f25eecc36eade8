"""Executor concurrency: wall time of ``autopack drain run --concurrency K`` against the ideal.

    .venv/bin/python -m bench.executor_concurrency [--phases 32] [--latency-ms 1000]
        [--concurrency 1,4,16] [--backends sqlite,postgresql] [--pg-url URL] [--json FILE]

LLM calls dominate a real drain, so this is where wall time is won or lost. Each
measurement creates a fresh database with one run of ``--phases`` independent phases (one
deliverable each, one tier, auditor ``rules``) and drains it with the real CLI in a
subprocess (it spawns its own API server, as a user's drain does), answering from a
cassette whose every Builder call takes ``--latency-ms`` (replay speed 1). The ideal wall
time at concurrency K is ``ceil(phases / K) * latency``: what a drain would take if
claiming, writing files, committing and reporting cost nothing. Reported: the drain's own
``wall_seconds`` (first claim to last result), the ideal, efficiency = ideal / wall, and
speed-up against K = 1.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.executor_support import cassette, create_run, drain, env_for, files, line, phase
from tests.executor_support import run_file as write_run_file

from bench.control_plane import DEFAULT_PG, _drop_pg, _pg_database

RUN_ID = "bench-concurrency"


def measure(database_url: str, phases: int, latency_ms: float, concurrency: int) -> dict[str, Any]:
    """Drain one fresh run at ``concurrency``; the drain's wall time and the ideal one."""
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as scratch:
        directory = Path(scratch)
        url = database_url or f"sqlite:///{directory / 'autopack.db'}"
        env = env_for(url, AUTOPACK_REPLAY_SPEED="1")
        definition = [phase(f"p{i}", [f"pkg/m{i}.py"]) for i in range(phases)]
        create_run(write_run_file(directory, definition, run_id=RUN_ID), env, directory)
        tape = cassette(
            directory,
            [
                line(
                    f"p{i}",
                    1,
                    files(**{f"m{i}_py": f"VALUE = {i}\n"}),
                    latency_ms=latency_ms,
                    run_id=RUN_ID,
                )
                for i in range(phases)
            ],
        )
        started = time.perf_counter()
        result = drain(
            "run",
            "--run-id",
            RUN_ID,
            "--concurrency",
            str(concurrency),
            "--auditor",
            "rules",
            "--cassette",
            str(tape),
            "--workspace",
            str(directory / "ws"),
            env=env,
            cwd=directory,
            timeout=phases * latency_ms / 1000 * 3 + 120,
        )
        command_seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"drain failed at concurrency {concurrency}:\n{result.stderr[-3000:]}")
    summary = json.loads(result.stdout)
    ideal = math.ceil(phases / concurrency) * latency_ms / 1000
    return {
        "concurrency": concurrency,
        "phases": phases,
        "latency_ms": latency_ms,
        "wall_seconds": round(summary["wall_seconds"], 2),
        "command_seconds": round(command_seconds, 2),
        "ideal_seconds": round(ideal, 2),
        "efficiency": round(ideal / summary["wall_seconds"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=1000.0)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    print(f"# {platform.node()} · Python {platform.python_version()}")
    print("| backend | K | phases | latency ms | wall s | ideal s | efficiency | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for backend in args.backends.split(","):
        baseline = None
        for k in (int(v) for v in args.concurrency.split(",")):
            if backend == "postgresql":
                url, name = _pg_database(args.pg_url)
                try:
                    row = measure(url, args.phases, args.latency_ms, k)
                finally:
                    _drop_pg(args.pg_url, name)
            else:
                row = measure("", args.phases, args.latency_ms, k)
            baseline = baseline or row["wall_seconds"]
            row.update(backend=backend, speedup=round(baseline / row["wall_seconds"], 2))
            rows.append(row)
            print(
                f"| {backend} | {k} | {row['phases']} | {row['latency_ms']:.0f} | "
                f"{row['wall_seconds']} | {row['ideal_seconds']} | {row['efficiency']:.0%} | "
                f"{row['speedup']}× |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
