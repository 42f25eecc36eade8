"""What an attempt's commit may hold: only paths git keeps in this repository, and the
change's paths as the checks leave them (a deleted path a check brought back is not
committed).

Real drains, real approvals (a deletion needs one), real git.
"""

from __future__ import annotations

import json
import time
import unicodedata
from pathlib import Path

import pytest

from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    drain,
    drain_process,
    env_for,
    files,
    git,
    line,
    on_branch,
    phase,
    phase_row,
    repository,
    rows,
    run_file,
)
from tests.support import cli

RUN = "exec-run"


def _args(tape: Path) -> list[str]:
    return ["--run-id", RUN, "--phase-id", "p1", "--auditor", "rules", "--cassette", str(tape)]


def _drain_approved(tmp_path: Path, url: str, env: dict[str, str], tape: Path, ws: Path) -> None:
    """Drain phase p1 of ``tape`` in ``ws``, approving the change it asks approval for."""
    waiting = drain_process("phase", *_args(tape), "--workspace", str(ws), env=env, cwd=tmp_path)
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
    _drain_approved(tmp_path, url, env, tape, ws)
    applied = attempts(url, "p1")[-1]
    assert (applied["outcome"], applied["stop_reason"]) == ("FAILED", "files_replaced_by_checks")
    assert "pkg/old.py" in applied["feedback"]
    assert applied["commit_sha"] is None
    tree = git("ls-tree", "-r", f"autopack/{RUN}", cwd=ws)
    assert "pkg/mod.py" not in tree and "100644 blob" in tree, tree


def test_an_approved_file_is_committed_as_written_even_what_looks_like_a_key(
    tmp_path: Path,
) -> None:
    """The approval request was redacted whole, the change it holds too: an approved
    answer writing a test's fixture key (``sk-ant-api03-...``) was committed with
    ``[REDACTED]`` in its place, the Builder's file altered, while the same answer needing
    no approval was committed as written."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/old.py": "OLD = 1\n"})
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    fixture = 'FIXTURE_KEY = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789"\n'
    written = [{"path": "pkg/mod.py", "content": fixture}, {"path": "pkg/old.py", "content": "2"}]
    tape = cassette(tmp_path, [line("p1", 1, json.dumps({"files": written}))])
    _drain_approved(tmp_path, url, env, tape, ws)
    assert attempts(url, "p1")[-1]["outcome"] == "COMPLETE"
    assert on_branch(ws, "pkg/mod.py") == fixture
    assert on_branch(ws, "pkg/old.py") == "2"


def test_files_git_cannot_commit_as_the_answer_asks_are_feedback(tmp_path: Path) -> None:
    """An answer wrote a ``.gitattributes`` saying its ``.py`` files are UTF-16, and git
    refused to add them (no byte order mark). The attempt ended ``git_error`` with git's
    words for the log only: the next attempt's Builder was told nothing and wrote the same.
    Git's words are its feedback."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"README": "hi\n"})
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    mod = {"path": "pkg/mod.py", "content": "M = 1\n"}
    utf16 = {"path": "pkg/.gitattributes", "content": "*.py working-tree-encoding=UTF-16\n"}
    first_answer = line("p1", 1, json.dumps({"files": [utf16, mod]}))
    tape = cassette(tmp_path, [first_answer, line("p1", 2, json.dumps({"files": [mod]}))])
    done = drain("phase", *_args(tape), "--workspace", str(ws), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = attempts(url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "git_error")
    assert "working-tree-encoding" in (first["feedback"] or "")
    assert second["outcome"] == "COMPLETE"
    assert on_branch(ws, "pkg/mod.py") == "M = 1\n"


def test_a_file_written_inside_a_submodule_is_feedback_not_a_git_error(tmp_path: Path) -> None:
    """``pkg/vendor`` is a submodule of the workspace: a file the Builder wrote inside it
    passed the plan and its checks, then ``git add`` refused it ("is in submodule"), a
    ``git_error`` telling the Builder nothing, at every try. It is ``path_conflict``
    feedback before anything is written, and the retry that writes elsewhere completes."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    lib = repository(tmp_path / "lib", {"x.py": "LIB = 1\n"})
    ws = repository(tmp_path / "ws", {"pkg/__init__.py": ""})
    add = ("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "pkg/vendor")
    git(*add, cwd=ws)
    git("commit", "-qm", "a submodule", cwd=ws)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/extra.py"])]), env, tmp_path)
    inside = json.dumps(
        {
            "files": [
                {"path": "pkg/extra.py", "content": "E = 1\n"},
                {"path": "pkg/vendor/new.py", "content": "N = 1\n"},
            ]
        }
    )
    tape = cassette(tmp_path, [line("p1", 1, inside), line("p1", 2, files(extra_py="E = 1\n"))])
    done = drain("phase", *_args(tape), "--workspace", str(ws), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = attempts(url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "path_conflict")
    assert "pkg/vendor" in first["feedback"] and "submodule" in first["feedback"]
    assert second["outcome"] == "COMPLETE"
    assert on_branch(ws, "pkg/extra.py") == "E = 1\n"
    assert git("ls-tree", f"autopack/{RUN}", "pkg/vendor", cwd=ws).startswith("160000 commit")


@pytest.mark.parametrize("where", ["a directory", "in a submodule"])
def test_a_deliverable_no_answer_can_write_fails_before_any_llm_call(
    tmp_path: Path, where: str
) -> None:
    """The run file names ``pkg/data`` as a deliverable where the branch has a directory
    (or ``pkg/vendor/new.py`` inside a submodule): every answer must write it and each one
    that did was refused, so each try spent an LLM call on feedback no answer could act
    on. The attempt fails naming the deliverable, before the Builder is called."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/data/a.txt": "A\n"})
    deliverable = "pkg/data"
    if where == "in a submodule":
        lib = repository(tmp_path / "lib", {"x.py": "LIB = 1\n"})
        add = ("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib))
        git(*add, "pkg/vendor", cwd=ws)
        git("commit", "-qm", "a submodule", cwd=ws)
        deliverable = "pkg/vendor/new.py"
    create_run(run_file(tmp_path, [phase("p1", [deliverable], max_attempts=2)]), env, tmp_path)
    answer = json.dumps({"files": [{"path": deliverable, "content": "x\n"}]})
    tape = cassette(tmp_path, [line("p1", 1, answer), line("p1", 2, answer)])
    done = drain("phase", *_args(tape), "--workspace", str(ws), env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    tries = attempts(url, "p1")
    assert [t["stop_reason"] for t in tries] == ["deliverable_unwritable"] * 2
    assert deliverable in tries[0]["error"]
    assert rows(url, "SELECT id FROM llm_usage_events") == []


def test_overwriting_a_symlink_to_nothing_needs_an_approval_like_any_file(tmp_path: Path) -> None:
    """``pkg/settings`` is a symlink in the repository to a file not made yet: an answer
    writing it replaced a file of the repository that is not a deliverable, which needs
    a person's approval. Seen as a new file (the link leads nowhere), it was committed
    without one."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/__init__.py": ""})
    (ws / "pkg/settings").symlink_to("settings.local")
    git("add", "pkg/settings", cwd=ws)
    git("commit", "-qm", "a link to a file each machine makes", cwd=ws)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    answer = json.dumps(
        {
            "files": [
                {"path": "pkg/mod.py", "content": "M = 1\n"},
                {"path": "pkg/settings", "content": "replaced\n"},
            ]
        }
    )
    tape = cassette(tmp_path, [line("p1", 1, answer)])
    waiting = drain_process("phase", *_args(tape), "--workspace", str(ws), env=env, cwd=tmp_path)
    deadline = time.monotonic() + 90
    while (state := phase_row(url, "p1")["state"]) != "AWAITING_APPROVAL":
        assert state != "COMPLETE", "overwritten without an approval"
        assert time.monotonic() < deadline and waiting.poll() is None, waiting.communicate()
        time.sleep(0.05)
    waiting.terminate()  # it waits for the decision; none is made here
    waiting.communicate(timeout=60)
    [approval] = json.loads(cli("approvals", "list", "--json", cwd=tmp_path, env=env).stdout)[
        "items"
    ]
    assert "pkg/settings" in approval["reason"]
    assert git("ls-tree", f"autopack/{RUN}", "pkg/settings", cwd=ws).startswith("120000")


def test_a_path_differing_only_in_case_from_a_file_is_feedback_not_lost(tmp_path: Path) -> None:
    """The workspace's repository says ``core.ignorecase`` (made on a Mac, or living on a
    case-insensitive disk) and holds ``pkg/mod.py``. An answer writing ``pkg/Mod.py``
    completed, yet git took it for ``pkg/mod.py``: neither its file nor its content
    reached the branch. It is ``path_conflict`` feedback naming the file it meets."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/mod.py": "COMPLETED = 1\n"})
    git("config", "core.ignorecase", "true", cwd=ws)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/util.py"])]), env, tmp_path)
    util = {"path": "pkg/util.py", "content": "U = 1\n"}
    twin = json.dumps({"files": [util, {"path": "pkg/Mod.py", "content": "NEW = 2\n"}]})
    tape = cassette(tmp_path, [line("p1", 1, twin), line("p1", 2, json.dumps({"files": [util]}))])
    done = drain("phase", *_args(tape), "--workspace", str(ws), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = attempts(url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "path_conflict")
    assert "'pkg/mod.py'" in first["feedback"]
    assert second["outcome"] == "COMPLETE"
    assert on_branch(ws, "pkg/util.py") == "U = 1\n"
    assert on_branch(ws, "pkg/mod.py") == "COMPLETED = 1\n"


def test_an_answer_under_a_misspelt_field_is_feedback_not_silently_dropped(
    tmp_path: Path,
) -> None:
    """An answer wrote its deliverable and put an edit of another file under ``"edit"``
    (not ``"edits"``): unknown fields are ignored, so the phase completed without the
    edit, and nobody was told. A near miss of a field that changes files is
    ``malformed_output`` naming the field meant; a field of the model's own
    (``explanation``) is still ignored."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws", {"pkg/other.py": "X = 1\n"})
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    mod = {"path": "pkg/mod.py", "content": "M = 1\n"}
    edit = {"path": "pkg/other.py", "search": "X = 1", "replace": "X = 2"}
    misspelt = json.dumps({"files": [mod], "edit": [edit], "explanation": "x"})
    right = json.dumps({"files": [mod], "explanation": "x"})
    tape = cassette(tmp_path, [line("p1", 1, misspelt), line("p1", 2, right)])
    done = drain("phase", *_args(tape), "--workspace", str(ws), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = attempts(url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "malformed_output")
    assert "'edit' (did you mean 'edits'?)" in first["feedback"]
    assert second["outcome"] == "COMPLETE"
    assert on_branch(ws, "pkg/mod.py") == "M = 1\n"


def test_a_name_differing_only_in_unicode_form_is_feedback(tmp_path: Path) -> None:
    """The workspace holds ``pkg/café.py`` with the accent decomposed (as a Mac writes
    it); an answer writing the composed ``pkg/café.py`` put a second file on the branch,
    which a Mac's checkout holds as one: either file's content lost there."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    decomposed = unicodedata.normalize("NFD", "pkg/café.py")
    ws = repository(tmp_path / "ws", {decomposed: "FROM_A_MAC = 1\n"})
    create_run(run_file(tmp_path, [phase("p1", ["pkg/util.py"])]), env, tmp_path)
    util = {"path": "pkg/util.py", "content": "U = 1\n"}
    composed = {"path": unicodedata.normalize("NFC", "pkg/café.py"), "content": "NEW = 2\n"}
    tape = cassette(
        tmp_path,
        [
            line("p1", 1, json.dumps({"files": [util, composed]})),
            line("p1", 2, json.dumps({"files": [util]})),
        ],
    )
    done = drain("phase", *_args(tape), "--workspace", str(ws), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = attempts(url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "path_conflict")
    assert "Unicode form" in first["feedback"]
    assert second["outcome"] == "COMPLETE"
    assert git("ls-tree", "-r", "--name-only", "-z", f"autopack/{RUN}", cwd=ws).count("caf") == 1


def test_a_deliverable_written_in_another_unicode_form_is_named_so(tmp_path: Path) -> None:
    """The run file names ``pkg/café.py`` composed (NFC) and the answer writes it
    decomposed (NFD): the feedback said ``missing: 'pkg/café.py'``, which prints the same
    as what was written, so the Builder had nothing to change. Both spellings are shown
    escaped now, and the retry that writes the deliverable's spelling completes."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    ws = repository(tmp_path / "ws")
    composed = unicodedata.normalize("NFC", "pkg/café.py")
    decomposed = unicodedata.normalize("NFD", composed)
    create_run(run_file(tmp_path, [phase("p1", [composed])]), env, tmp_path)
    answers = [
        json.dumps({"files": [{"path": p, "content": "C = 1\n"}]}) for p in (decomposed, composed)
    ]
    tape = cassette(tmp_path, [line("p1", 1, answers[0]), line("p1", 2, answers[1])])
    done = drain("phase", *_args(tape), "--workspace", str(ws), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = attempts(url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "missing_deliverable")
    assert ascii(decomposed) in first["feedback"] and ascii(composed) in first["feedback"]
    assert second["outcome"] == "COMPLETE"
    assert on_branch(ws, composed) == "C = 1\n"
