"""A phase's move back to EXECUTING once its checks passed survives an API blip.

The move is a lease renewal (``state=EXECUTING``); one the API did not answer was
dropped (a renewal that cannot reach the server only logs), so the phase stayed
CI_RUNNING on the server for the rest of the attempt: an operator's Ctrl-C or a
provider's refusal during the auditor's call was then recorded as a stop while the
phase's checks ran, and spent a retry after two. The executor's next renewal carries it.

Real parts: a SQLite database, the API under uvicorn (stopped and started again on its
port), the executor's client and lease, its hand-back.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from autopack.config import Settings
from autopack.connect import connect
from autopack.contract import ClaimIn
from autopack.executor.lease import Lease
from autopack.executor.stopping import hand_back
from autopack.runfile import load_run_file
from autopack.states import PhaseState
from tests.executor_support import rows
from tests.support import Server, clean_env, cli
from tests.test_one_path import RUN_FILE


def test_a_move_to_executing_the_api_missed_is_made_by_the_next_renewal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    env = clean_env(DATABASE_URL=url)
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "r1.yaml").write_text(RUN_FILE)
    with Server(env, cwd=tmp_path) as first:
        settings = Settings(autopack_api_url=first.url)
        with connect(settings, None, own="thread") as connection:
            client = connection.client
            client.create_run(load_run_file(tmp_path / "r1.yaml"))
            claim = client.claim(ClaimIn(worker_id="w", run_id="r1"))
            assert claim is not None
            lease = Lease(client, claim, lease_seconds=600)  # no background beat meanwhile
            lease.renew(state=PhaseState.CI_RUNNING)  # the checks start
            first.stop()
            lease.renew(state=PhaseState.EXECUTING)  # they passed; the API is down
            lease.check()  # not lost: the lease has long to run
            with Server(env, cwd=tmp_path, port=first.port):
                lease.renew()  # the heartbeat's next beat
                [phase] = rows(url, "SELECT state FROM phases WHERE phase_id = 'a'")
                assert phase["state"] == PhaseState.EXECUTING
                handed = hand_back(client, claim, signal.SIGINT)  # Ctrl-C in the audit
                assert handed is not None and handed.stop_reason == "interrupted"
    [attempt] = rows(url, "SELECT details FROM phase_attempts WHERE phase_id = 'a'")
    details = attempt["details"]
    assert json.loads(details)["stopped_in"] == PhaseState.EXECUTING
    [phase] = rows(url, "SELECT state, retry_window_start FROM phases WHERE phase_id = 'a'")
    assert phase == {"state": PhaseState.QUEUED, "retry_window_start": 1}, "no retry spent"
