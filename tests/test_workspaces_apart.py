"""An executor whose repository lacks the run's accepted head stops; it fails no phase.

Executors must share the run's repository. One given a local ``--workspace`` of its own
(on another machine, or another directory of the same one) passes the start-up check
while the run has no accepted commit yet; once another executor's commit is accepted,
every attempt it claimed failed ``git_error`` ("not in this repository"), spending the
phase's tries until the phase FAILED and the run with it, while the executor in the
run's repository could have done the work. Like a repository removed under it, that is
the executor's problem, not the phase's: it stops, hands the phase back and says why.

Real parts: PostgreSQL, ``autopack serve`` behind both tokens, executors holding the
worker token, real git, the replay cassette for the LLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    drain,
    drain_process,
    files,
    line,
    on_branch,
    phase,
    phase_row,
    repository,
    run_file,
)
from tests.support import Server, wait_for
from tests.test_stopped_attempts_hand_on import _clients, _held_check, served  # noqa: F401

pytestmark = pytest.mark.postgres


def test_an_executor_without_the_accepted_head_hands_its_phase_back_instead_of_failing_it(
    served: tuple[str, Server],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    url, server = served
    operator, worker = _clients(url, server)
    marker = tmp_path / "hold-the-check"
    marker.touch()
    spec = [
        phase("p1", ["pkg/one.py"], checks=[_held_check(marker)]),
        phase("p2", ["pkg/two.py"], depends_on=["p1"]),
    ]
    create_run(run_file(tmp_path, spec), operator, tmp_path)
    tape = cassette(
        tmp_path,
        [line("p1", 1, files(one_py="ONE = 1\n")), line("p2", 1, files(two_py="TWO = 2\n"))],
    )
    shared = repository(tmp_path / "shared", {"README": ""})
    apart = repository(tmp_path / "apart", {"README": ""})

    def args(*extra: str, ws: Path) -> list[str]:
        common = ["--run-id", "exec-run", "--auditor", "rules", "--cassette", str(tape)]
        return [*extra, *common, "--workspace", str(ws)]

    first = drain_process(*args("phase", "--phase-id", "p1", ws=shared), env=worker, cwd=tmp_path)
    wait_for(lambda: phase_row(url, "p1")["state"] == "CI_RUNNING", timeout=90)
    # an executor in another repository joins while the run has no accepted commit yet
    elsewhere = drain_process(*args("run", ws=apart), env=worker, cwd=tmp_path)
    wait_for(lambda: on_branch(apart, "README") == "", timeout=90)  # it made the branch there
    marker.unlink()
    _, said = first.communicate(timeout=120)
    assert first.returncode == 0, said[-3000:]
    _, said = elsewhere.communicate(timeout=120)

    assert elsewhere.returncode != 0, said[-3000:]
    assert f"is not in {apart}" in " ".join(said.split()), said[-3000:]
    assert [(a["outcome"], a["stop_reason"]) for a in attempts(url, "p2")] == [
        ("FAILED", "interrupted")
    ], said[-3000:]
    assert phase_row(url, "p2")["state"] == "QUEUED"

    done = drain(*args("run", ws=shared), env=worker, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["run_state"] == "DONE_SUCCESS"
    assert on_branch(shared, "pkg/one.py") == "ONE = 1\n"
    assert on_branch(shared, "pkg/two.py") == "TWO = 2\n"
