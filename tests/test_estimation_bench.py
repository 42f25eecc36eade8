"""The estimator benchmark runs from a clean checkout (tiny sizes) and takes any truth file.

Its numbers are measurements recorded in docs/ESTIMATOR_BENCHMARK.md, never asserted here:
only the shape of the output, the trip through the real telemetry writer, and (one
sanity line) that the oracle, which knows the truth, sits near the target.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.estimator import Truth, run, simulate, write_and_read

from autopack.estimation.estimator import TokenEstimator
from tests.support import clean_env

REPO = Path(__file__).resolve().parents[1]
MEASURES = {"truncation", "over_p90", "reserved_per_needed", "waste_off", "waste_on", "smape"}


def bench_estimator(
    *args: str, module: str = "bench.estimator"
) -> subprocess.CompletedProcess[str]:
    """``python -m bench.estimator ARGS`` (or ``module``) from the repository, as its docs
    say to run it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_command_writes_scores_for_default_calibrated_and_oracle(tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    finished = bench_estimator(
        *("--truth", "bench/estimator_truth.json", "--phases", "30", "--seed", "1"),
        *("--score-phases", "400", "--json", str(out)),
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "calibrate: " in finished.stdout and "oracle" in finished.stdout
    scores: dict[str, Any] = json.loads(out.read_text())
    for name in ("default", "calibrated", "oracle"):
        assert set(scores[name]["overall"]) >= MEASURES
        assert scores[name]["overall"]["n"] == 400
        assert sum(s["n"] for s in scores[name]["strata"].values()) == 400
        for stratum in scores[name]["strata"].values():
            assert set(stratum) >= MEASURES
    assert scores["meta"]["phases"] == 30 and scores["meta"]["verdict"]


def test_rows_go_through_the_projects_telemetry_writer(tmp_path: Path) -> None:
    truth = Truth(json.loads((REPO / "bench/estimator_truth.json").read_text()))
    events = simulate(truth, TokenEstimator.load(), 20, seed=3)
    rows = write_and_read(events, tmp_path)
    assert (tmp_path / "estimator-bench.db").exists()
    assert len(rows) == len(events) > 20  # some phases were retried
    assert all(isinstance(r["id"], int) and r["features"]["deliverables"] for r in rows)
    assert {r["phase_outcome"] for r in rows} <= {"COMPLETE", "FAILED"}


def test_any_truth_file_of_the_same_shape(tmp_path: Path) -> None:
    """One cell, two models, a consecutive schedule and a scoring mix: all optional keys."""
    truth = {
        "name": "tiny",
        "strata": {
            "docs/low": {"median": 800, "sigma": 0.5, "deliverable_exponent": 0.9},
        },
        "categories": {"docs": {"kinds": {"doc": 1.0}, "new_share": 0.7}},
        "models": {
            "m1": {"verbosity": 1.0, "max_output_tokens": 128_000},
            "m2": {"verbosity": 3.0, "max_output_tokens": 128_000},
        },
        "train": [{"model": "m1", "phases": 40}, {"model": "m2", "phases": 20}],
        "score": {"m2": 1.0},
    }
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(truth))
    scores = run(path, 60, 2, score_phases=2000, workdir=tmp_path)
    assert set(scores["calibrated"]["models"]) == {"m2"}
    assert set(scores["oracle"]["strata"]) <= {"docs/low/1", "docs/low/2-5", "docs/low/6+"}
    assert abs(scores["oracle"]["overall"]["truncation"] - 0.02) < 0.015
    assert scores["meta"]["models"] == {
        "m1": "pooled + model offset",
        "m2": "pooled + model offset",
    }


def test_bad_arguments_and_truth_files_are_exit_2_naming_them(tmp_path: Path) -> None:
    (tmp_path / "latin1.json").write_bytes(b'{"name": "\xff"}')
    (tmp_path / "shape.json").write_text('{"strata": {"a/b": {"median": "x", "sigma": 1}}}')
    (tmp_path / "list.json").write_text("[]")
    truth = ("--truth", "bench/estimator_truth.json")
    cases = [
        (("--truth", str(tmp_path / "missing.json"), "--phases", "5"), "missing.json"),
        (("--truth", str(tmp_path / "latin1.json"), "--phases", "5"), "latin1.json"),
        (("--truth", str(tmp_path / "shape.json"), "--phases", "5"), "shape.json"),
        (("--truth", str(tmp_path / "list.json"), "--phases", "5"), "list.json"),
        ((*truth, "--phases", "-5"), "--phases"),
        ((*truth, "--phases", "5", "--score-phases", "0"), "--score-phases"),
        ((*truth, "--phases", "5", "--margin-sd", "nan"), "--margin-sd"),
    ]
    for args, named in cases:
        finished = bench_estimator(*args)
        assert finished.returncode == 2, (args, finished.stderr[-2000:])
        assert named in finished.stderr and "Traceback" not in finished.stderr, args


def _truth(**changes: Any) -> dict[str, Any]:
    """The shipped truth file with top-level keys replaced; ``cell`` changes its first cell."""
    doc: dict[str, Any] = json.loads((REPO / "bench/estimator_truth.json").read_text())
    cell = changes.pop("cell", {})
    first = next(iter(doc["strata"]))
    doc["strata"][first] = {k: v for k, v in (doc["strata"][first] | cell).items() if v != "-"}
    return doc | changes


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (_truth(cell={"sigma": 0}), "strata.implementation/low.sigma"),
        (_truth(cell={"sigma": -0.5}), "strata.implementation/low.sigma"),
        (_truth(cell={"sigma": float("nan")}), "strata.implementation/low.sigma"),
        (_truth(cell={"sigma": 1e6}), "strata.implementation/low.sigma"),
        (_truth(cell={"median": 1e300}), "strata.implementation/low.median"),
        (_truth(cell={"median": float("inf")}), "strata.implementation/low.median"),
        (_truth(cell={"median": "-"}), "strata.implementation/low.median"),
        (_truth(cell={"weight": -1}), "strata.implementation/low.weight"),
        (_truth(strata={}), "strata"),
        (_truth(max_attempts=0), "max_attempts"),
        (_truth(escalation_factor=float("nan")), "escalation_factor"),
        (_truth(existing_kb={"low": 0, "high": 1}), "existing_kb.low"),
        (_truth(deliverables={"1": 0, "2-5": 0, "6+": 0}), "deliverables"),
        (_truth(models={"model-a": {"max_output_tokens": 0}}), "models.model-a"),
        (_truth(train=[{"model": "model-a", "share": 0}]), "train"),
        (_truth(train=[{"model": "typo", "share": 1}]), "train[0].model"),
        (_truth(categories={"tests": {"kinds": {"klingon": 1}}}), "categories.tests.kinds"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_truth_file_value_it_cannot_draw_from_is_exit_2_naming_the_field(
    tmp_path: Path, doc: dict[str, Any], field: str
) -> None:
    """Each ended in a traceback inside the run (Probabilities contain NaN, math range
    error, IndexError, cannot convert float NaN to integer) or ran on a zero spread."""
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(doc))  # Python's json writes NaN and Infinity literally
    finished = bench_estimator("--truth", str(path), "--phases", "5", "--score-phases", "10")
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr
    assert f"{path}: {field}" in finished.stderr


@pytest.mark.parametrize("which", ["--truth", "--shift-truth"])
def test_the_suite_refuses_a_truth_file_naming_the_field_before_its_first_run(
    tmp_path: Path, which: str
) -> None:
    """``bench.estimator_suite`` (what BENCHMARKS.md's table comes from) ran its truth files
    unchecked: a bad value ended in a traceback, for the shift file after minutes of runs."""
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(_truth(cell={"sigma": 0})))
    finished = bench_estimator(which, str(path), "--sizes", "5", module="bench.estimator_suite")
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr
    assert f"{path}: strata.implementation/low.sigma" in finished.stderr
