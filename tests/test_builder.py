"""Builder output parsing, the deliverables contract, safe writes, checks and the rules Auditor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from autopack.builder.auditor import audit_rules, parse_verdict
from autopack.builder.change import Change, plan_change
from autopack.builder.output import BuilderRejected, parse_builder_output
from autopack.builder.prompt import Feedback, builder_prompt
from autopack.executor.checks import run_checks
from autopack.executor.workspace import apply_change
from autopack.rundef import PhaseDefinition, Scope, TaskCategory
from tests.support import gone, written_pid

SCOPE = Scope(
    paths=["examples/utils/"],
    read_only_context=["examples/utils/base.py"],
    deliverables=["examples/utils/string_util.py"],
)


def _answer(files: list[dict[str, str]], **extra: object) -> str:
    return json.dumps({"files": files, "summary": "s", **extra})


def _plan(workspace: Path, text: str, scope: Scope = SCOPE, **kwargs: Any) -> Change:
    return plan_change(parse_builder_output(text), scope, workspace, **kwargs)


GOOD = [{"path": "examples/utils/string_util.py", "content": "def f():\n    return 1\n"}]


def test_parses_plain_fenced_and_prose_wrapped_json() -> None:
    for text in (
        _answer(GOOD),
        "```json\n" + _answer(GOOD) + "\n```",
        "Here you go:\n" + _answer(GOOD) + "\nHope this helps.",
    ):
        output = parse_builder_output(text)
        assert [f.path for f in output.files] == ["examples/utils/string_util.py"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty_output"),
        ("I cannot do that.", "malformed_output"),
        ('{"files": [{"path": "a.py", "content": "x"', "malformed_output"),
        ('{"files": "a.py"}', "malformed_output"),
        ('{"files": [], "summary": "nothing"}', "empty_files"),
    ],
)
def test_unusable_answers_are_rejected_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(BuilderRejected) as caught:
        parse_builder_output(text)
    assert caught.value.stop_reason == reason
    assert caught.value.feedback


@pytest.mark.parametrize(
    ("stop_reason", "said"),
    [
        ("tool_use", "no tools are offered"),  # Anthropic's name
        ("tool_calls", "no tools are offered"),  # OpenAI's
        ("refusal", "stopped (refusal)"),
        ("content_filter", "stopped (content_filter)"),
        ("end_turn", "Your answer was empty"),
    ],
)
def test_an_answer_without_text_is_told_why_the_model_stopped(stop_reason: str, said: str) -> None:
    with pytest.raises(BuilderRejected) as caught:
        parse_builder_output("", stop_reason)
    assert caught.value.stop_reason == "empty_output"
    assert said in caught.value.feedback


def test_empty_files_feedback_tells_the_builder_what_to_do() -> None:
    with pytest.raises(BuilderRejected, match="COMPLETE content of every deliverable"):
        parse_builder_output('{"files": []}')


@pytest.mark.parametrize(
    "path",
    [
        *("/etc/passwd", "../outside.py", "examples/utils/../../x.py", "C:/x.py", "a\\b.py"),
        "a\x00.py",
        # git never tracks a .git path: the file was reported written but not committed
        *("examples/utils/.git", "examples/utils/.GIT/hooks/post-checkout"),
        # nor one of the spellings git refuses to add (core.protectNTFS/HFS): a git_error
        *("examples/utils/.git./x", "examples/utils/GIT~1/x", "examples/utils/.git /x"),
        *("examples/utils/.git::$INDEX_ALLOCATION/x", "examples/utils/.g\u200cit/x"),
        # nor a name that drives the operator's terminal when `run phase` shows it
        *("examples/utils/x\x1b]0;PWNED\x07.py", "examples/utils/a\rb.py", "examples/utils/\x9b2K"),
    ],
)
def test_unsafe_paths_are_rejected(tmp_path: Path, path: str) -> None:
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, _answer([*GOOD, {"path": path, "content": "x"}]))
    assert caught.value.stop_reason == "unsafe_path"


def test_a_path_too_long_with_the_workspaces_own_location_is_feedback(tmp_path: Path) -> None:
    """4 000 bytes pass the path rules, but not with the worktree's path in front: the plan
    crashed on ENAMETOOLONG and the attempt ended as executor_error."""
    deep = "examples/utils/" + ("d" * 200 + "/") * 19
    deep += "x" * (4089 - len(deep) - 3) + ".py"  # 4 089 bytes: admitted by the path rules
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, _answer([*GOOD, {"path": deep, "content": "x"}]))
    assert caught.value.stop_reason == "unsafe_path" and "shorter path" in caught.value.feedback


def test_symlink_escape_is_rejected(tmp_path: Path) -> None:
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    (workspace / "examples").mkdir(parents=True)
    outside.mkdir()
    (workspace / "examples" / "utils").symlink_to(outside)
    with pytest.raises(BuilderRejected, match="leads through a symlink"):
        _plan(workspace, _answer(GOOD))


@pytest.mark.parametrize(
    ("extra", "delete", "named"),
    [
        ({"examples/utils/pkg": "x"}, [], "is a directory"),  # a file replacing a directory
        ({"examples/utils/base.py/x.py": "x"}, [], "which is a file"),
        ({"examples/utils/string_util.py/x.py": "x"}, [], "also writes"),  # its own file
        ({}, ["examples/utils/pkg"], "is a directory"),  # deleting a directory
    ],
)
def test_a_path_the_file_system_cannot_hold_is_refused_with_feedback(
    tmp_path: Path, extra: dict[str, str], delete: list[str], named: str
) -> None:
    """A file over a directory, below a file, or a directory deleted: each once passed the
    plan and failed halfway through writing (IsADirectoryError, FileExistsError) as an
    executor_error that told the Builder nothing, so every retry made the same answer."""
    (tmp_path / "examples/utils/pkg").mkdir(parents=True)
    (tmp_path / "examples/utils/pkg/m.py").write_text("M = 1\n")
    (tmp_path / "examples/utils/base.py").write_text("B = 1\n")
    files = GOOD + [{"path": path, "content": content} for path, content in extra.items()]
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, _answer(files, delete=delete))
    assert caught.value.stop_reason == "path_conflict"
    assert named in caught.value.feedback


def test_an_edit_of_a_file_that_is_not_utf8_is_refused_with_feedback(tmp_path: Path) -> None:
    """It raised UnicodeDecodeError: an executor_error that told the Builder nothing."""
    (tmp_path / "examples/utils").mkdir(parents=True)
    (tmp_path / "examples/utils/base.py").write_bytes(b"X = '\xff'\n")
    edit = {"path": "examples/utils/base.py", "search": "X", "replace": "Y"}
    with pytest.raises(BuilderRejected, match="not UTF-8") as caught:
        _plan(tmp_path, _answer(GOOD, edits=[edit]))
    assert caught.value.stop_reason == "edit_not_applicable"


def test_path_outside_scope_gets_the_prefix_hint(tmp_path: Path) -> None:
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, _answer([{"path": "string_util.py", "content": "x"}]))
    assert caught.value.stop_reason == "path_outside_scope"
    assert "Did you mean 'examples/utils/string_util.py'" in caught.value.feedback


def test_missing_deliverable_is_named(tmp_path: Path) -> None:
    scope = Scope(paths=SCOPE.paths, deliverables=[*SCOPE.deliverables, "examples/utils/b.py"])
    with pytest.raises(BuilderRejected, match=r"examples/utils/b\.py") as caught:
        _plan(tmp_path, _answer(GOOD), scope)
    assert caught.value.stop_reason == "missing_deliverable"


def test_size_limit(tmp_path: Path) -> None:
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, _answer(GOOD), max_file_bytes=5)
    assert caught.value.stop_reason == "file_too_large"


def test_edits_apply_once_and_refuse_ambiguity(tmp_path: Path) -> None:
    target = tmp_path / "examples/utils/string_util.py"
    target.parent.mkdir(parents=True)
    target.write_text("a = 1\nb = 1\n")
    edit = {"path": "examples/utils/string_util.py", "search": "a = 1", "replace": "a = 2"}
    change = _plan(tmp_path, json.dumps({"edits": [edit]}))
    assert change.writes[0].content == "a = 2\nb = 1\n"
    assert change.needs_approval == ()
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, json.dumps({"edits": [{**edit, "search": "= 1"}]}))
    assert caught.value.stop_reason == "edit_not_applicable"


def test_deleting_or_overwriting_non_deliverables_needs_approval(tmp_path: Path) -> None:
    other = tmp_path / "examples/utils/other.py"
    other.parent.mkdir(parents=True)
    other.write_text("keep\n")
    change = _plan(
        tmp_path,
        _answer(
            [*GOOD, {"path": "examples/utils/other.py", "content": "new\n"}],
            delete=["examples/utils/old.py"],
        ),
    )
    assert set(change.needs_approval) == {
        "delete examples/utils/old.py",
        "overwrite existing non-deliverable examples/utils/other.py",
    }
    assert Change.from_json(change.to_json()) == change


def test_apply_keeps_an_overwritten_files_mode_and_gives_new_files_the_umask_mode(
    tmp_path: Path,
) -> None:
    (tmp_path / "examples/utils").mkdir(parents=True)
    script = tmp_path / "examples/utils/string_util.py"
    script.write_text("#!/bin/sh\nold\n")
    script.chmod(0o755)
    new = {"path": "examples/utils/new.txt", "content": "n\n"}
    applied = apply_change(tmp_path, _plan(tmp_path, _answer([*GOOD, new])))
    assert applied.paths == ["examples/utils/string_util.py", "examples/utils/new.txt"]
    assert applied.previous == {
        "examples/utils/string_util.py": b"#!/bin/sh\nold\n",
        "examples/utils/new.txt": None,
    }
    assert script.read_text() == GOOD[0]["content"]
    assert stat.S_IMODE(script.stat().st_mode) == 0o755, "an executable stays executable"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "examples/utils/new.txt").stat().st_mode) == 0o666 & ~umask
    assert not list(tmp_path.rglob(".autopack-*")), "no temporary file is left behind"


def test_a_file_name_as_long_as_the_file_system_takes_is_written(tmp_path: Path) -> None:
    """The temporary file was named after its target plus 21 characters: a name the path
    rules admit (255 bytes) made it too long, and the attempt crashed as executor_error."""
    name = "examples/utils/" + "n" * 252 + ".py"
    applied = apply_change(
        tmp_path, _plan(tmp_path, _answer([*GOOD, {"path": name, "content": "x"}]))
    )
    assert applied.paths[-1] == name and (tmp_path / name).read_text() == "x"


def test_writing_a_file_never_changes_the_process_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the umask means setting it: between the two calls another attempt's thread,
    or a check forked then, would create its files world-writable. The kernel applies it."""
    umask = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda _mask: pytest.fail("os.umask was called"))
        (tmp_path / "examples/utils").mkdir(parents=True)
        apply_change(tmp_path, _plan(tmp_path, _answer(GOOD)))
    finally:
        monkeypatch.undo()
        os.umask(umask)
    made = tmp_path / "examples/utils/string_util.py"
    assert stat.S_IMODE(made.stat().st_mode) == 0o640


def test_an_answer_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    big = [{"path": "examples/utils/string_util.py", "content": "x" * 600}]
    more = [*big, {"path": "examples/utils/other.py", "content": "y" * 600}]
    assert _plan(tmp_path, _answer(big), max_answer_bytes=1000)
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, _answer(more), max_answer_bytes=1000)
    assert caught.value.stop_reason == "answer_too_large"
    assert "1200 bytes" in caught.value.feedback


def test_a_symlink_inside_the_workspace_cannot_carry_a_write_out_of_scope(
    tmp_path: Path,
) -> None:
    """Both ends are inside the workspace; only the resolved path shows it leaves the scope."""
    (tmp_path / "examples/utils").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "examples/utils/link_in").symlink_to("../../secret")
    pwn = [*GOOD, {"path": "examples/utils/link_in/pwn.txt", "content": "x"}]
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, _answer(pwn))
    assert caught.value.stop_reason == "unsafe_path"
    assert "symlink" in caught.value.feedback
    assert not (tmp_path / "secret/pwn.txt").exists()


def test_checks_report_pass_fail_and_timeouts(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    results = run_checks(
        [
            "python -c 'print(40 + 2)'",
            "echo nope >&2; exit 3",
            f"sh -c 'echo $$ > {pid_file}; exec sleep 60' & sleep 60",
        ],
        tmp_path,
        timeout=1.0,
    )
    assert [r.passed for r in results] == [True, False, False]
    assert "42" in results[0].output_tail
    assert results[1].exit_code == 3 and "nope" in results[1].output_tail
    assert results[2].timed_out and results[2].exit_code is None
    grandchild = written_pid(pid_file)
    assert gone(grandchild, timeout=10), "the timed-out check's process group survived"


def test_a_check_whose_daemon_keeps_its_output_open_still_ends_at_its_timeout(
    tmp_path: Path,
) -> None:
    """A process the check started in a session of its own (a test's server started with
    ``start_new_session=True``) escapes the killed process group and keeps the output pipe
    open: reading that pipe to its end waited for the daemon, past the check's timeout
    (forever, for a server), with the lease renewed all along."""
    pid_file = tmp_path / "daemon.pid"
    daemon = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        f"start_new_session=True); open({str(pid_file)!r}, 'w').write(str(p.pid))"
    )
    started = time.monotonic()
    checks = [f'python -c "{daemon}"; echo started; sleep 30', "echo second"]
    try:
        timed_out, second = run_checks(checks, tmp_path, timeout=1.0)
        assert time.monotonic() - started < 15, "the check waited for its daemon"
        assert timed_out.timed_out and "started" in timed_out.output_tail
        assert second.passed and second.output_tail == "second\n"
    finally:  # killed with the check now; this is for a run where it was not
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_checks_do_not_see_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    [result] = run_checks(["env"], tmp_path)
    assert "sk-ant-secret" not in result.output_tail


def _task(category: TaskCategory = "implementation") -> PhaseDefinition:
    return PhaseDefinition(
        phase_id="p1",
        name="strings",
        description="Write slugify.",
        task_category=category,
        complexity="low",
        scope=SCOPE,
        checks=["python -m pytest -q"],
    )


def test_rules_auditor_flags_syntax_errors_stubs_and_testless_tests(tmp_path: Path) -> None:
    bad = _plan(
        tmp_path,
        _answer(
            [
                {"path": "examples/utils/string_util.py", "content": "def f(:\n"},
                {"path": "examples/utils/stub.py", "content": "def g():\n    ...\n"},
                {"path": "examples/utils/test_x.py", "content": "x = 1\n"},
            ]
        ),
    )
    verdict = audit_rules(_task("tests"), bad)
    assert not verdict.approved
    assert len(verdict.issues) == 3
    assert audit_rules(_task(), _plan(tmp_path, _answer(GOOD))).approved


class _Finalized:
    """Garbage with a finalizer: a collection runs Python code, where threads switch."""

    def __del__(self) -> None:
        self.ended = [n for n in range(50)]


def test_the_rules_auditor_in_concurrent_attempts_parses_every_file(tmp_path: Path) -> None:
    """Attempts run in threads, and CPython 3.11's AST constructor keeps its depth in
    per-interpreter state: a garbage collection (finalizers: sockets, connections) switched
    threads mid-parse and failed a demo attempt ``executor_error: SystemError: AST
    constructor recursion depth mismatch`` (gh-106905)."""
    source = (Path(__file__).parents[1] / "src/autopack/executor/attempt.py").read_text()
    change = _plan(tmp_path, _answer([{"path": GOOD[0]["path"], "content": source}]))
    failures: list[BaseException] = []
    switching = sys.getswitchinterval()

    def audit() -> None:
        for _ in range(40):
            for _ in range(50):
                cycle = _Finalized()
                cycle.me = cycle  # type: ignore[attr-defined]
            try:
                assert audit_rules(_task(), change).approved
            except BaseException as exc:  # the failure is what is counted
                failures.append(exc)
                return

    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=audit) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switching)
    assert failures == []


def test_unparseable_llm_verdict_falls_back_to_rules() -> None:
    fallback = audit_rules(_task(), Change((), (), (), ""))
    verdict = parse_verdict("looks fine to me!", fallback)
    assert verdict.approved is True and verdict.error
    assert parse_verdict('{"approved": false, "issues": ["x"]}', fallback).issues == ["x"]


def test_a_context_directory_spelled_with_a_slash_is_read(tmp_path: Path) -> None:
    """Run files may name a directory ``docs/`` (and the schema accepts it); the prompt
    read entries by the Builder's file-path rule, which refuses the slash, so that context
    was silently left out."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/guide.md").write_text("THE-GUIDE\n")
    scope = Scope(paths=["pkg/"], read_only_context=["docs/"], deliverables=["pkg/a.py"])
    task = PhaseDefinition(phase_id="p1", name="p", scope=scope)
    assert "THE-GUIDE" in builder_prompt(task, tmp_path)


def test_a_context_directory_leading_out_of_the_workspace_is_not_walked(tmp_path: Path) -> None:
    """``docs -> /`` in the repository: the prompt walked the whole file system below it
    (and crashed the attempt on the first ``/proc/PID/cwd`` it could not stat); only its
    files' own resolved paths were checked, so one linking back in was read as context."""
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (workspace / "real.md").write_text("READ-THROUGH-OUTSIDE\n")
    (outside / "back.md").symlink_to(workspace / "real.md")
    (workspace / "docs").symlink_to(outside)
    scope = Scope(paths=["pkg/"], read_only_context=["docs"], deliverables=["pkg/a.py"])
    task = PhaseDefinition(phase_id="p1", name="p", scope=scope)
    prompt = builder_prompt(task, workspace)
    assert "READ-THROUGH-OUTSIDE" not in prompt and "docs/back.md" not in prompt


def test_prompt_carries_contract_context_and_feedback(tmp_path: Path) -> None:
    (tmp_path / "examples/utils").mkdir(parents=True)
    (tmp_path / "examples/utils/base.py").write_text("BASE = 1\n")
    prompt = builder_prompt(
        _task(), tmp_path, [Feedback(1, "empty_files", "Your files array was empty.")]
    )
    assert "examples/utils/string_util.py (new file)" in prompt
    assert "BASE = 1" in prompt
    assert "attempt 1 (empty_files): Your files array was empty." in prompt
    assert "- `python -m pytest -q`" in prompt
    small = builder_prompt(_task(), tmp_path, context_chars=3)
    assert "truncated: context budget exhausted" in small


@pytest.mark.parametrize(
    ("extra", "delete", "named"),
    [
        ([{"path": "examples/utils/string_util.py", "content": "other\n"}], [], "twice"),
        ([{"path": "examples/utils/./string_util.py", "content": "other\n"}], [], "twice"),
        ([], ["examples/utils/string_util.py"], "both writes and deletes"),
    ],
    ids=["written twice", "written twice, spelt two ways", "written and deleted"],
)
def test_an_answer_contradicting_itself_about_a_path_is_refused(
    tmp_path: Path, extra: list[dict[str, str]], delete: list[str], named: str
) -> None:
    """A file written twice with different contents kept the last silently; a deliverable
    written and deleted passed the contract (it was "in the answer") and, its deletion
    approved, was gone once the change was applied (deleted after it was written)."""
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, _answer(GOOD + extra, delete=delete))
    assert caught.value.stop_reason == "path_conflict"
    assert "'examples/utils/string_util.py'" in caught.value.feedback
    assert named in caught.value.feedback


def test_a_file_sent_twice_alike_is_written_once(tmp_path: Path) -> None:
    change = _plan(tmp_path, _answer(GOOD + GOOD))
    assert [write.path for write in change.writes] == ["examples/utils/string_util.py"]


@pytest.mark.parametrize("kind", ["files", "deletes"])
def test_a_path_below_a_symlinked_directory_is_feedback_naming_its_real_location(
    tmp_path: Path, kind: str
) -> None:
    """``examples/utils/link -> real``, both inside the scope: a file written through the
    link landed in ``real/`` while git, which never looks beyond a symlink, was asked to
    commit ``link/new.py``; the attempt then failed as ``files_replaced_by_checks`` (with
    no checks at all), and a deletion through it was a ``git_error``."""
    (tmp_path / "examples/utils/real").mkdir(parents=True)
    (tmp_path / "examples/utils/real/new.py").write_text("OLD = 1\n")
    (tmp_path / "examples/utils/link").symlink_to("real")
    through = "examples/utils/link/new.py"
    answer = (
        _answer([*GOOD, {"path": through, "content": "x = 1\n"}])
        if kind == "files"
        else _answer(GOOD, delete=[through])
    )
    with pytest.raises(BuilderRejected) as caught:
        _plan(tmp_path, answer)
    assert caught.value.stop_reason == "path_conflict"
    assert "'examples/utils/link'" in caught.value.feedback
    assert "'examples/utils/real/new.py'" in caught.value.feedback
    assert (tmp_path / "examples/utils/real/new.py").read_text() == "OLD = 1\n"
