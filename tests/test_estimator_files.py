"""A hand-edited estimator file (AUTOPACK_ESTIMATOR_FILE) through the real drain.

Whatever the file says, a drain either refuses it before claiming anything (exit 2 naming
the file and the field) or every Builder call gets a budget in 1..model max and its
estimation row is stored: a file the loader accepted must never crash an attempt after
the model answered (that failed every phase, spending its tokens).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from autopack.estimation.estimator import TokenEstimator
from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    drain,
    env_for,
    files,
    line,
    phase,
    rows,
    run_file,
)

GOOD = files(mod_py="def answer() -> int:\n    return 42\n")


def _packaged(**changes: Any) -> dict[str, Any]:
    doc = TokenEstimator.load().to_json()
    doc.update(changes)
    return doc


def _huge_overheads() -> dict[str, Any]:
    doc = _packaged()
    for row in doc["overhead"].values():
        for complexity in row:
            row[complexity] = 1e10
    return doc


def _huge_spread() -> dict[str, Any]:
    """Schema 2 within every per-field range, but exp() of its 98th percentile overflows."""
    cell = {"intercept": 50, "slope": 0, "sigma": 10, "log_sigma_var": 100, "cov": [1e6] * 10}
    fit = {
        "phases": 1,
        "censored": 0,
        "global": {**cell, "phases": 1, "slope_var": 0},
        "size": {"modified_share": 0, "existing_kb": 0},
        "categories": {},
        "cells": {},
        "strata": {},
        "model_offsets": {},
    }
    spreads = ("cell", "shift", "category_slope", "cell_slope", "model", "cell_sigma")
    return {
        "schema": 2,
        "version": "wide",
        "target_truncation": 0.02,
        "floor": 1,
        "margin_sd": 5,
        "log_n_centre": 0,
        "fallback_sd": dict.fromkeys(spreads, 5),
        "pooled": fit,
        "models": {},
    }


def _drain_with(tmp_path: Path, doc: dict[str, Any] | str) -> tuple[Any, str]:
    """Drain phase p1 with ``doc`` (or that text) as the estimator file."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    estimator = tmp_path / "estimator.json"
    estimator.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    env = env_for(url, AUTOPACK_ESTIMATOR_FILE=str(estimator))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, GOOD)])
    done = drain(
        *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    return done, url


@pytest.mark.parametrize(
    "doc",
    [_huge_overheads(), _packaged(margin=1e308), _huge_spread()],
    ids=["p50-above-int32", "p50-infinite", "schema2-exp-overflow"],
)
def test_a_file_predicting_absurd_sizes_still_gives_a_bounded_budget(
    tmp_path: Path, doc: dict[str, Any]
) -> None:
    done, url = _drain_with(tmp_path, doc)
    assert done.returncode == 0, done.stderr
    assert [a["outcome"] for a in attempts(url, "p1")] == ["COMPLETE"]
    [row] = rows(
        url,
        "SELECT predicted_output_tokens, predicted_p90_tokens, selected_budget, "
        "max_tokens_sent, budget_decided_by, estimator_version FROM token_estimation_v2_events",
    )
    assert 1 <= row["predicted_output_tokens"] <= row["predicted_p90_tokens"] <= 2**31 - 1
    assert 1 <= row["max_tokens_sent"] == row["selected_budget"] < 2**31 - 1
    assert row["budget_decided_by"] == "ceiling"
    assert row["estimator_version"] == doc["version"]


@pytest.mark.parametrize("version", ["v\x00x", "v1\n", "v\x1b[2J"])
def test_a_version_no_row_can_store_is_refused_before_anything_is_claimed(
    tmp_path: Path, version: str
) -> None:
    done, url = _drain_with(tmp_path, _packaged(version=version))
    assert done.returncode == 2, done.stderr
    assert "estimator.json" in done.stderr and "version" in done.stderr
    assert "Traceback" not in done.stderr
    assert attempts(url, "p1") == []


def test_a_number_of_5000_digits_in_it_is_exit_2_before_anything_is_claimed(
    tmp_path: Path,
) -> None:
    """Python refuses to convert it (``ValueError``, not a ``JSONDecodeError``): the drain
    died with a traceback."""
    text = json.dumps(_packaged())[:-1] + ', "extra": ' + "9" * 5000 + "}"
    done, url = _drain_with(tmp_path, text)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "is not valid JSON: a number has more than 4300 digits" in done.stderr, done.stderr
    assert attempts(url, "p1") == []


@pytest.mark.parametrize("setting", ["AUTOPACK_ESTIMATOR_FILE", "AUTOPACK_PRICE_TABLE"])
@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_setting_naming_a_fifo_or_device_is_exit_2_not_a_hang(
    tmp_path: Path, setting: str, special: str
) -> None:
    """Opening a FIFO blocked the drain forever; /dev/zero read until memory ran out."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, **{setting: str(path) if special == "fifo" else special})
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, GOOD)])
    done = drain(
        *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "not a regular file" in done.stderr and "Traceback" not in done.stderr
    assert attempts(url, "p1") == []
