"""A person's ignored file in their checkout of the run's branch is never overwritten.

The README suggests ``git checkout autopack/RUN`` (or ``git worktree add``) to follow the
run's code, and the branch follows with ``git read-tree -m -u``, which refuses to
overwrite an untracked file but deems an ignored one expendable. A Builder's answer is
committed with ``add --force`` (a deliverable may be ignored): an answer writing
``pkg/local.cfg`` replaced the person's own ignored ``pkg/local.cfg`` with the LLM's text
when the phase completed. The branch now waits for it, as for an untracked file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tests.executor_support import (
    cassette,
    create_run,
    drain,
    env_for,
    git,
    line,
    on_branch,
    phase,
    repository,
    run_file,
)
from tests.support import cli

RUN = "exec-run"


def _args(ws: Path, tape: Path, phase_id: str) -> list[str]:
    return [
        *("phase", "--phase-id", phase_id, "--run-id", RUN, "--auditor", "off"),
        *("--cassette", str(tape), "--workspace", str(ws)),
    ]


def _answer(path: str, content: str) -> str:
    return json.dumps({"files": [{"path": path, "content": content}], "summary": "wrote it"})


def _checkout_after_p1(tmp_path: Path) -> tuple[dict[str, str], Path, Path, Path]:
    """``(env, workspace, cassette, checkout)``: p1 drained, the run's branch checked out
    in a work tree of the person's, p2 still to write their ignored ``pkg/local.cfg``."""
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}")
    ws = repository(tmp_path / "ws", {".gitignore": "*.cfg\n", "notes.txt": "mine\n"})
    phases = [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/local.cfg"])]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [
            line("p1", 1, _answer("pkg/a.py", "A = 1\n")),
            line("p2", 1, _answer("pkg/local.cfg", "written by the LLM\n")),
        ],
    )
    assert drain(*_args(ws, tape, "p1"), env=env, cwd=tmp_path).returncode == 0
    code = tmp_path / "code"
    git("worktree", "add", "-q", str(code), f"autopack/{RUN}", cwd=ws)
    return env, ws, tape, code


def test_an_ignored_file_of_the_person_is_kept_and_the_branch_waits(tmp_path: Path) -> None:
    env, ws, tape, code = _checkout_after_p1(tmp_path)
    (code / "pkg/local.cfg").write_text("MY OWN SETTINGS\n")

    done = drain(*_args(ws, tape, "p2"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (code / "pkg/local.cfg").read_text() == "MY OWN SETTINGS\n"
    waits = json.loads(done.stdout)["branch_waits"]
    assert waits is not None and "pkg/local.cfg" in waits and str(code) in waits, waits
    assert on_branch(ws, "pkg/local.cfg") is None, "the branch waits for the checkout"

    (code / "pkg/local.cfg").rename(tmp_path / "kept.cfg")  # moved away: the branch follows
    out = tmp_path / "out"
    exported = cli("run", "export", RUN, str(out), "--workspace", str(ws), env=env, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert on_branch(ws, "pkg/local.cfg") == "written by the LLM\n"
    assert (code / "pkg/local.cfg").read_text() == "written by the LLM\n"
    assert (tmp_path / "kept.cfg").read_text() == "MY OWN SETTINGS\n"


def test_what_waits_in_the_way_is_named_as_what_it_is(tmp_path: Path) -> None:
    """A FIFO of the person's where the phase writes a file was called "a file of yours"."""
    env, ws, tape, code = _checkout_after_p1(tmp_path)
    os.mkfifo(code / "pkg/local.cfg")
    done = drain(*_args(ws, tape, "p2"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    waits = json.loads(done.stdout)["branch_waits"]
    assert waits is not None and "'pkg/local.cfg', which is a FIFO (named pipe) of yours" in waits
    assert stat.S_ISFIFO((code / "pkg/local.cfg").lstat().st_mode)


def test_an_untracked_file_in_the_way_is_not_called_ignored(tmp_path: Path) -> None:
    """A file of the person's that no ``.gitignore`` matches (plain untracked) was called
    one "that git ignores": they looked for an ignore rule there is none of."""
    env, ws, tape, code = _checkout_after_p1(tmp_path)
    (code / "pkg/.gitignore").write_text("!local.cfg\n")
    (code / "pkg/local.cfg").write_text("MY OWN SETTINGS\n")
    assert "pkg/local.cfg" in git("status", "--porcelain", "--untracked-files=all", cwd=code)
    done = drain(*_args(ws, tape, "p2"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    waits = json.loads(done.stdout)["branch_waits"]
    assert waits is not None and "'pkg/local.cfg', which is a file of yours" in waits, waits
    assert "ignores" not in waits and "does not track" in waits
    assert (code / "pkg/local.cfg").read_text() == "MY OWN SETTINGS\n"
