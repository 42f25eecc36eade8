"""What a phase's checks do to the files its change deletes: a commit records the change's
paths as the checks leave them, so a deleted path a check brought back is not committed.

Real drains, a real approval (a deletion needs one), real git.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    drain_process,
    env_for,
    git,
    line,
    phase,
    phase_row,
    repository,
    run_file,
)
from tests.support import cli

RUN = "exec-run"


@pytest.mark.parametrize(
    "check", ["printf 'BROUGHT_BACK = 1\\n' > pkg/old.py", "ln -s /etc/passwd pkg/old.py"]
)
def test_a_check_that_brings_back_a_deleted_file_commits_nothing(
    tmp_path: Path, check: str
) -> None:
    """An approved answer deletes ``pkg/old.py``; its check puts a file (or a link out of
    the workspace) there again. The commit recorded that file as the phase's work: the
    deletion a person approved was never made, and the branch got what the check wrote."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/old.py": "OLD = 1\n"})
    body = [phase("p1", ["pkg/mod.py"], checks=[check], max_attempts=2)]
    create_run(run_file(tmp_path, body), env, tmp_path)
    answer = json.dumps(
        {"files": [{"path": "pkg/mod.py", "content": "NEW = 1\n"}], "delete": ["pkg/old.py"]}
    )
    tape = cassette(tmp_path, [line("p1", 1, answer)])
    args = ["--run-id", RUN, "--phase-id", "p1", "--auditor", "rules", "--cassette", str(tape)]
    waiting = drain_process("phase", *args, "--workspace", str(ws), env=env, cwd=tmp_path)
    deadline = time.monotonic() + 90
    while phase_row(url, "p1")["state"] != "AWAITING_APPROVAL":
        assert time.monotonic() < deadline and waiting.poll() is None, waiting.communicate()
        time.sleep(0.05)
    listed = cli("approvals", "list", "--json", cwd=tmp_path, env=env).stdout
    [approval] = json.loads(listed)["items"]
    decided = cli("approvals", "approve", str(approval["id"]), cwd=tmp_path, env=env)
    assert decided.returncode == 0, decided.stderr
    _, err = waiting.communicate(timeout=180)
    assert "Traceback" not in err, err[-3000:]
    applied = attempts(url, "p1")[-1]
    assert (applied["outcome"], applied["stop_reason"]) == ("FAILED", "files_replaced_by_checks")
    assert "pkg/old.py" in applied["feedback"]
    assert applied["commit_sha"] is None
    tree = git("ls-tree", "-r", f"autopack/{RUN}", cwd=ws)
    assert "pkg/mod.py" not in tree and "100644 blob" in tree, tree
