"""Test program: a minimal worker on the typed client, logging every phase it completes.

    python -m tests.programs.claim_worker URL RUN_ID WORKER_ID LOG [drain|crash] [GO_FILE]

``drain``: claim -> heartbeat -> result until nothing is claimable, then exit 0. Each
completed phase is one JSON line in LOG: phase_id, attempt, lease_token, worker, and the
worker's own monotonic-free wall times of claim and result (for overlap checks).
``crash``: claim one phase, heartbeat once, write a ``ready`` line, then hang until killed.
With GO_FILE the worker waits for that file to exist before its first claim (a fair start).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from autopack.client import ApiClient
from autopack.contract import ClaimIn, HeartbeatIn, ResultIn
from autopack.states import PhaseState


def main(argv: list[str]) -> int:
    url, run_id, worker_id, log_path = argv[1:5]
    mode = argv[5] if len(argv) > 5 else "drain"
    go_file = Path(argv[6]) if len(argv) > 6 else None
    while go_file is not None and not go_file.exists():
        time.sleep(0.01)
    lines: list[str] = []
    with ApiClient(url) as client:
        while True:
            request = ClaimIn(
                worker_id=worker_id, lease_seconds=60 if mode == "drain" else 5, run_id=run_id
            )
            claim = client.claim(request)
            if claim is None:
                break
            claimed_at = time.time()
            phase_id, token = claim.phase_id, claim.lease_token
            client.heartbeat(
                run_id, phase_id, HeartbeatIn(lease_token=token, lease_seconds=claim.lease_seconds)
            )
            record: dict[str, object] = {
                "phase_id": phase_id,
                "attempt": claim.attempt,
                "lease_token": token,
                "worker": worker_id,
                "claimed_at": claimed_at,
            }
            if mode == "crash":
                Path(log_path).write_text(json.dumps({"ready": True, **record}) + "\n")
                time.sleep(3600)  # killed with SIGKILL by the test
            answer = client.post_result(
                run_id,
                phase_id,
                ResultIn(lease_token=token, outcome=PhaseState.COMPLETE, stop_reason="done"),
                idempotency_key=claim.idempotency_key,
            )
            record.update(completed_at=time.time(), phase_state=str(answer.phase_state))
            lines.append(json.dumps(record))
    Path(log_path).write_text("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
