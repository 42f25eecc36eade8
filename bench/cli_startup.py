"""CLI start-up: wall time of ``autopack --version``, ``--help`` and a few commands' help.

    .venv/bin/python -m bench.cli_startup [--runs 20] [--src DIR ...] [--json FILE]

A person types these first; the legacy-free CLI once took ~1 s for ``--version`` and up to
2.6 s for ``--help`` because the Typer app imported every command module (SQLAlchemy,
FastAPI, numpy, the LLM SDKs) before parsing anything. Each measurement is one fresh
``python -m autopack ARGS`` subprocess (output to /dev/null, no database touched: help and
version never open one), run ``--runs`` times, interleaved across the trees and commands
so that a busy moment of a shared machine hits all of them alike; reported min / median /
max in seconds. ``--src`` measures other source trees with the same interpreter (e.g. an
export of an older commit: ``git archive REV src | tar -x -C /tmp/old``), for same-hour
comparisons. Two floors put the numbers in context: the bare interpreter
(``python -c pass``) and ``import typer``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMMANDS: list[list[str]] = [
    ["--version"],
    ["--help"],
    ["drain", "run", "--help"],
    ["run", "list", "--help"],
    ["db", "--help"],
]
FLOORS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import typer": ["-c", "import typer"],
}


def _once(argv: list[str], src: Path | None, cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def measure(runs: int, trees: list[Path | None], cwd: Path) -> list[dict[str, Any]]:
    """min/median/max seconds per (tree, command), the floors first."""
    cases: list[tuple[str, str, list[str], Path | None]] = [
        ("-", name, argv, None) for name, argv in FLOORS.items()
    ]
    for tree in trees:
        label = str(tree) if tree is not None else "installed"
        cases += [(label, " ".join(args), ["-m", "autopack", *args], tree) for args in COMMANDS]
    samples: dict[tuple[str, str], list[float]] = {(t, c): [] for t, c, _, _ in cases}
    for _ in range(runs):
        for tree_label, command, argv, tree in cases:
            samples[(tree_label, command)].append(_once(argv, tree, cwd))
    return [
        {
            "tree": tree_label,
            "command": command,
            "runs": runs,
            "min_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
        }
        for (tree_label, command), times in samples.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="Runs per command and tree.")
    parser.add_argument(
        "--src",
        action="append",
        type=Path,
        help="A source tree's src/ directory to measure (repeatable; default: this one).",
    )
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args(argv)
    trees: list[Path | None] = [p.resolve() for p in args.src] if args.src else [REPO / "src"]
    cwd = Path(os.environ.get("TMPDIR", "/tmp"))
    rows = measure(args.runs, trees, cwd)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {platform.node()} · "
        f"{os.cpu_count()} CPU · Python {platform.python_version()} · "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print("| tree | command | runs | min s | median s | max s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['tree']} | `{row['command']}` | {row['runs']} | {row['min_s']} | "
            f"{row['median_s']} | {row['max_s']} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
