"""The runs behind docs/ESTIMATOR_BENCHMARK.md: sizes x seeds, plus the verbosity shift.

    python -m bench.estimator_suite [--sizes 30 100 500] [--seeds 1 2 3] [--json OUT]

Each run is ``bench.estimator.run`` (telemetry through the project's writer, calibrate,
score on fresh phases). The table prints the mean over seeds of each overall measure;
"worst" is the mean over seeds of the worst stratum's truncation (strata with >= 30 scored
phases) and ">4 %" the mean number of such strata above 4 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autopack.estimation.build import DEFAULT_MARGIN_SD
from bench.estimator import at_least, check_truth_file, margin_sd, run

HERE = Path(__file__).resolve().parent
MEASURES = (
    ("truncation", "trunc", 100, "%"),
    ("over_p90", ">p90", 100, "%"),
    ("reserved_per_needed", "reserved", 1, "×"),
    ("waste_off", "waste off", 100, "%"),
    ("waste_on", "waste on", 100, "%"),
    ("smape", "SMAPE", 1, ""),
    ("strata_at_or_below_2pct", "≤2 %", 1, ""),
    ("worst_stratum_truncation", "worst", 100, "%"),
    ("strata_above_4pct", ">4 %", 1, ""),
)


def _mean(runs: list[dict[str, Any]], name: str, key: str, group: str = "overall") -> float:
    values = [float(r[name][group][key] if group == "overall" else r[name][key]) for r in runs]
    return statistics.fmean(values)


def table(title: str, runs: list[dict[str, Any]], names: Sequence[str]) -> list[str]:
    lines = [f"#### {title}", ""]
    header = "| estimator | " + " | ".join(label for _, label, _, _ in MEASURES) + " |"
    lines += [header, "|" + "---|" * (len(MEASURES) + 1)]
    for name in names:
        cells = []
        for key, _, scale, unit in MEASURES:
            value = _mean(runs, name, key) * scale
            digits = 2 if unit == "×" or key == "waste_on" else 1
            cells.append(f"{value:.{digits}f}{unit}" if unit else f"{value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    verdicts = "; ".join(r["meta"]["verdict"].split(" — ")[0] for r in runs)
    seconds = max(r["meta"]["calibrate_seconds"] for r in runs)
    lines += ["", f"calibrate verdicts per seed: {verdicts} (calibrate ≤ {seconds:.2f} s)", ""]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.estimator_suite")
    parser.add_argument("--truth", type=Path, default=HERE / "estimator_truth.json")
    parser.add_argument("--shift-truth", type=Path, default=HERE / "estimator_truth_shift.json")
    parser.add_argument("--sizes", type=at_least(1), nargs="+", default=[30, 100, 500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--score-phases", type=at_least(1), default=20_000)
    parser.add_argument("--margin-sd", type=margin_sd, default=DEFAULT_MARGIN_SD)
    parser.add_argument("--no-shift", action="store_true", help="Skip the verbosity shift.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    check_truth_file(parser, args.truth)  # both before the first run: it takes minutes
    if args.shift_truth.exists() and not args.no_shift:
        check_truth_file(parser, args.shift_truth)
    everything: dict[str, Any] = {}
    lines: list[str] = []
    for size in args.sizes:
        runs = [
            run(args.truth, size, s, score_phases=args.score_phases, margin_sd=args.margin_sd)
            for s in args.seeds
        ]
        everything[f"{size}"] = runs
        lines += table(
            f"{size} phases (mean of seeds {args.seeds})", runs, ("default", "calibrated", "oracle")
        )
    if args.shift_truth.exists() and not args.no_shift:
        runs = [
            run(args.shift_truth, 550, s, score_phases=args.score_phases, margin_sd=args.margin_sd)
            for s in args.seeds
        ]
        everything["shift"] = runs
        lines += table(
            "verbosity shift: 400 phases of model-a, then 150 of model-b (2× verbose); "
            "scored on model-b",
            runs,
            ("default", "calibrated", "oracle"),
        )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
