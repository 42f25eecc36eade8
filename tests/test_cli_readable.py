"""Issue 13 §5: the CLI never hides the message.

Help is readable at 80 columns and loads no database or web code; root flags work after
the command; error texts, approval reasons and stop reasons are wrapped, never cut; a
server refusing a partial schema says so in one line (exit 3), as does doctor.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from autopack.cli.app import COMMANDS, load_command
from autopack.contract import ApprovalIn, AuditVerdict, CheckResult, ResultIn
from autopack.control import approvals, results
from autopack.db import open_database
from autopack.dburl import resolve_database_url
from autopack.states import PhaseState
from tests.cp_support import claimed, create
from tests.executor_support import cassette, env_for, files, line, phase, run_file
from tests.executor_support import create_run as create_run_file
from tests.support import Server, clean_env, cli

LONG = (
    "replay cassette /very/long/path/to/a/cassette/file/that/goes/on/telemetry-collection-v4"
    ".jsonl has no recorded answer for this call, which is not a failure of the Builder but "
    "of the recording: every word of this sentence must reach the reader END-OF-MESSAGE"
)


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = [[]]
    for name in COMMANDS:
        command = load_command(name)
        paths.append([name])
        paths += [[name, sub] for sub in getattr(command, "commands", {})]
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "root")
def test_help_is_readable_at_80_columns(path: list[str], tmp_path: Path) -> None:
    result = cli(*path, "--help", cwd=tmp_path, env=clean_env(COLUMNS="80"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    body = "\n".join(line for line in lines if not line.startswith("Usage:"))
    for cut in ("…", "...", "<bool>", "``"):
        assert cut not in body, f"{cut!r} in\n{result.stdout}"
    command = load_command(path[0]) if path else None
    if command is not None and len(path) > 1:
        command = command.commands[path[1]]  # type: ignore[attr-defined]
    for param in command.params if command is not None else []:
        for option in getattr(param, "opts", []):
            assert option in result.stdout, f"{option} missing from\n{result.stdout}"
    assert list(tmp_path.iterdir()) == [], "help must not touch a database"


def test_the_command_list_says_what_each_command_says_of_itself() -> None:
    for name, (_, _, summary) in COMMANDS.items():
        own = " ".join((load_command(name).help or "").split("\n\n")[0].split())
        assert own == summary, name


def _heavy_loaded(code: str, heavy: set[str]) -> list[str]:
    """Which of the packages ``heavy`` a fresh interpreter running ``code`` has loaded."""
    loaded = "{m.split('.')[0] for m in sys.modules}"
    probe = f"import sys\n{code}\nprint('LOADED', *sorted({loaded} & set({sorted(heavy)!r})))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=clean_env(), check=True
    )
    [loaded] = [line for line in result.stdout.splitlines() if line.startswith("LOADED")]
    return loaded.split()[1:]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["drain", "run", "--help"]])
def test_help_and_version_load_no_database_or_web_code(args: list[str]) -> None:
    heavy = {"sqlalchemy", "alembic", "fastapi", "uvicorn", "httpx", "numpy", "anthropic"}
    heavy |= {"openai", "pydantic_settings"}
    code = f"from autopack.cli import main\nmain({args!r})"
    assert _heavy_loaded(code, heavy) == [], args


def test_the_api_server_loads_no_numpy_rich_or_llm_sdk() -> None:
    """Every CLI command starts the API in its process and every drain spawns one: numpy
    (with its thread pool) and Rich at import cost each of them about a fifth of its
    start's CPU (BENCHMARKS.md, "Process start")."""
    heavy = {"numpy", "rich", "anthropic", "openai", "matplotlib"}
    assert _heavy_loaded("import autopack.main", heavy) == []
    # nor does `telemetry report`'s table load the fit
    assert _heavy_loaded("import autopack.estimation.render", {"numpy", "matplotlib"}) == []


def test_root_flags_work_after_the_command(tmp_path: Path) -> None:
    shown = cli("config", "show", "--json", "--database-url", "sqlite:///flag.db", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    row = next(r for r in json.loads(shown.stdout) if r["name"] == "DATABASE_URL")
    assert (row["value"], row["source"]) == (f"sqlite:///{tmp_path}/flag.db", "flag")
    url = f"sqlite:///{tmp_path / 'after.db'}"
    assert cli("db", "init", f"--database-url={url}", cwd=tmp_path).returncode == 0
    listed = cli("run", "list", "--json", "--database-url", url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["total"] == 0
    # `db identity --api-url` keeps its own meaning: check that server, not use it.
    checked = cli(
        "db", "identity", "--api-url", "http://127.0.0.1:9", "--database-url", url, cwd=tmp_path
    )
    assert checked.returncode == 2 and "127.0.0.1:9" in checked.stderr


def test_a_command_logs_its_database_once(tmp_path: Path) -> None:
    """Every process logs its database's identity once at start (DESIGN §3): a command
    serving itself in a thread logged it again as the API's, and the API's maintenance
    start, so three log lines preceded every `run list`."""
    url = f"sqlite:///{tmp_path / 'once.db'}"
    assert cli("db", "init", f"--database-url={url}", cwd=tmp_path).returncode == 0
    for args in (["run", "list"], ["run", "show", "nope"]):
        said = cli(*args, "--database-url", url, cwd=tmp_path)
        logged = [line for line in said.stderr.splitlines() if " INFO " in line]
        assert len(logged) == 1 and "database_identity role=cli" in logged[0], said.stderr


def test_ctrl_c_while_a_command_loads_is_quiet(tmp_path: Path) -> None:
    """Ctrl-C while a command's modules were still loading printed a KeyboardInterrupt
    traceback (Typer turns one into a quiet 130 only once it runs). The signal is sent
    when the command has begun importing pydantic (``-X importtime`` says so on stderr):
    inside the entry point, before Typer."""
    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    assert cli("db", "init", f"--database-url={url}", cwd=tmp_path).returncode == 0
    command = [str(Path(sys.executable).parent / "autopack"), "run", "list", "--database-url"]
    said = []
    with subprocess.Popen(
        [*command, url],
        cwd=tmp_path,
        env={**clean_env(), "PYTHONPROFILEIMPORTTIME": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as started:
        assert started.stderr is not None
        for line in started.stderr:
            said.append(line)
            if line.split("|")[-1].strip() == "pydantic.version":
                started.send_signal(signal.SIGINT)
                break
        said.append(started.stderr.read())
        started.wait(timeout=60)
    told = "".join(x for x in said if not x.startswith("import time:"))
    assert "Traceback" not in told and "KeyboardInterrupt" not in told, told
    assert started.returncode == 130, told


def test_a_root_flag_given_twice_with_different_values_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    """`autopack --database-url A run cancel R --database-url B` (an alias, then a flag)
    used A without a word: Click keeps one of the values."""
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db"))
    for args in (
        ["--database-url", first, "db", "init", "--database-url", second],
        ["--database-url", first, f"--database-url={second}", "db", "init"],
    ):
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "--database-url is given more than once" in result.stderr, result.stderr
        assert first in result.stderr and second in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no database created"
    same = cli("--database-url", first, "db", "init", "--database-url", first, cwd=tmp_path)
    assert same.returncode == 0, same.stderr


def _words_survive(output: str, message: str) -> None:
    flat = " ".join(output.replace("│", " ").split())
    joined = "".join(output.replace("│", "").split())
    for word in message.split():
        assert word in flat or word in joined, f"{word!r} was cut from\n{output}"


def test_error_texts_and_approval_reasons_are_wrapped_never_cut(
    database_url: str, tmp_path: Path
) -> None:
    database = open_database(resolve_database_url(database_url), role="test", log=False)
    try:
        create(database, tiers=[("T1", [{"phase_id": "a", "max_attempts": 1}, "b"])])
        failing = claimed(database)
        result = ResultIn(
            lease_token=failing.lease_token,
            outcome=PhaseState.FAILED,
            stop_reason="llm_error",
            error=LONG,
        )
        results.post_result(database, "r", failing.phase_id, result)
        asking = claimed(database)
        approval = approvals.request_approval(
            database, "r", asking.phase_id, ApprovalIn(lease_token=asking.lease_token, reason=LONG)
        )
    finally:
        database.close()
    env = clean_env(DATABASE_URL=database_url, COLUMNS="80")
    for args in (
        ["run", "phase", "r", failing.phase_id],
        ["run", "show", "r"],
        ["approvals", "list"],
        ["approvals", "show", str(approval.approval_id)],
    ):
        shown = cli(*args, cwd=tmp_path, env=env)
        assert shown.returncode == 0, shown.stderr
        _words_survive(shown.stdout, LONG)


def _partial_schema(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = clean_env(DATABASE_URL=database_url)
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    engine = create_engine(resolve_database_url(database_url))
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE approval_requests"))
    engine.dispose()
    return env


def test_a_partial_schema_is_one_line_and_exit_3_everywhere(
    database_url: str, tmp_path: Path
) -> None:
    env = _partial_schema(database_url, tmp_path)
    for server in (Server(env, tmp_path), Server(env, tmp_path, autopack_args=["serve"])):
        assert server.process.wait(timeout=60) == 3
        output = server.output()
        server.stop()
        assert "missing tables: approval_requests" in output
        assert "Traceback" not in output and "Exception in 'lifespan'" not in output
        assert len(output.strip().splitlines()) <= 4, output  # uvicorn's 2-3 lines + ours
    doctor = cli("doctor", cwd=tmp_path, env=env)
    assert doctor.returncode == 3, doctor.stdout + doctor.stderr
    assert "missing tables: approval_requests" in doctor.stderr


def _on_a_terminal(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run ``autopack ARGS`` with a pseudo-terminal as its stdout/stderr (what Rich's live
    display needs); the exit code and everything it drew, escape codes removed."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "autopack", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=cwd,
    )
    os.close(slave)
    drawn = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    code = process.wait(timeout=60)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode(errors="replace"))


def test_a_large_run_file_shows_what_it_waits_on(tmp_path: Path) -> None:
    """A run file of megabytes takes seconds to read and to create, with nothing on the
    screen: the command looked hung. On a terminal a spinner says which step it is on."""
    long = "Write the module with care. " * 20
    phases = [phase(f"p{i}", [f"pkg/m{i}.py"], description=long) for i in range(2000)]
    definition = run_file(tmp_path, phases, run_id="big")
    assert definition.stat().st_size > 1024 * 1024
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'autopack.db'}", COLUMNS="250")
    code, drawn = _on_a_terminal(["run", "create", str(definition)], env, tmp_path)
    assert code == 0, drawn
    assert f"reading run file {definition}" in drawn
    assert "creating run big" in drawn
    assert "created run big: 1 tier(s), 2000 phase(s)" in drawn


def test_calibrate_shows_which_step_it_is_on(tmp_path: Path) -> None:
    """Calibrating on 27,000 estimation events took 23 s with nothing on the screen: on a
    terminal a spinner now says what is read (and how much so far), fitted and drawn."""
    from bench.estimator import load_truth, simulate, write_and_read

    from autopack.estimation.estimator import TokenEstimator

    truth = load_truth(Path(__file__).parents[1] / "bench" / "estimator_truth.json")
    events = simulate(truth, TokenEstimator.load(None), 200, 1)
    write_and_read(events, tmp_path)
    url = f"sqlite:///{tmp_path / 'estimator-bench.db'}"
    env = clean_env(DATABASE_URL=url, COLUMNS="250")
    plot = tmp_path / "fit.png"
    code, drawn = _on_a_terminal(["telemetry", "calibrate", "--plot", str(plot)], env, tmp_path)
    assert code == 0, drawn
    assert f"reading estimation events… {len(events):,}" in drawn, drawn
    assert f"fitting on {len(events):,} estimation events" in drawn, drawn
    assert f"drawing {plot}…" in drawn, drawn
    assert f"wrote {plot} (200 points)" in drawn  # one point per phase


def test_the_live_display_shows_tokens_and_cost_next_to_the_bar(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, AUTOPACK_REPLAY_SPEED="1", COLUMNS="140")
    phases = [phase(f"p{i}", [f"pkg/m{i}.py"]) for i in range(2)]
    create_run_file(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path,
        [line(f"p{i}", 1, files(**{f"m{i}_py": "X = 1\n"}), latency_ms=1500) for i in range(2)],
    )
    code, drawn = _on_a_terminal(
        [
            *("drain", "run", "--run-id", "exec-run", "--cassette", str(tape)),
            *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
        ],
        env,
        tmp_path,
    )
    assert code == 0, drawn[-3000:]
    spend = re.findall(r"([\d,]+) tokens · \$0\.0000 \(\+\$(\d+\.\d{4}) replayed\)", drawn)
    assert spend, drawn[-3000:]
    tokens = [int(t.replace(",", "")) for t, _ in spend]
    assert tokens[-1] > 0 and tokens == sorted(tokens)  # it grows as calls come back


def test_run_phase_says_which_check_failed_and_what_the_audit_objected_to(
    database_url: str, tmp_path: Path
) -> None:
    """An attempt that failed its checks or its audit has no files and no error: the table's
    last cell was empty and the why was in ``--json`` only, though the README promises
    ``run phase`` shows every attempt's checks and audit."""
    failed_check = CheckResult(
        command="python -m unittest -q tests/test_mod.py",
        exit_code=1,
        passed=False,
        output_tail="Traceback (most recent call last):\nAssertionError: 66.7 != 66.6\n",
    )
    passed_check = CheckResult(command="python -m py_compile mod.py", exit_code=0, passed=True)
    rejected = AuditVerdict(
        mode="llm", approved=False, issues=["percent() rounds down"], summary="wrong maths"
    )
    endings: dict[str, dict[str, Any]] = {
        "a": {"stop_reason": "checks_failed", "check_results": [passed_check, failed_check]},
        "b": {"stop_reason": "audit_rejected", "audit_verdict": rejected},
        "c": {"stop_reason": "empty_files", "feedback": 'Your "files" array was empty.\nMore.'},
    }
    database = open_database(resolve_database_url(database_url), role="test", log=False)
    try:
        create(database, tiers=[("T1", list(endings))])
        for _ in endings:
            leased = claimed(database)
            ending = ResultIn(
                lease_token=leased.lease_token,
                outcome=PhaseState.FAILED,
                retryable=False,
                **endings[leased.phase_id],
            )
            results.post_result(database, "r", leased.phase_id, ending)
    finally:
        database.close()
    env = clean_env(DATABASE_URL=database_url, COLUMNS="80")

    def shown(phase_id: str) -> str:
        result = cli("run", "phase", "r", phase_id, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        return " ".join(result.stdout.split())

    checks = shown("a")
    assert "attempt 1: checks 1/2 passed" in checks
    assert "failed (exit 1): python -m unittest -q tests/test_mod.py" in checks
    assert "AssertionError: 66.7 != 66.6" in checks
    assert "py_compile" not in checks  # a check that passed needs no more than its count
    audit = shown("b")
    assert "attempt 1: audit (llm) rejected: wrong maths" in audit
    assert "- percent() rounds down" in audit
    empty = shown("c")
    assert 'attempt 1: Your "files" array was empty.' in empty
    assert "More." not in empty


def _autopack(args: list[str], cwd: Path, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autopack", *args],
        cwd=cwd,
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.mark.parametrize("args", [["config", "show"], ["--version"], ["--help"]])
def test_output_that_cannot_be_written_is_one_line_not_a_traceback(
    args: list[str], tmp_path: Path
) -> None:
    """`autopack config show > out.txt` on a full disk, or with stdout closed (`>&-`): an
    OSError traceback from inside Rich (a full disk), or nothing at all and exit 0 (closed).
    A reader that went away (`| head -1`) ends it quietly, as the shell's tools end."""
    with open("/dev/full", "w") as full:
        process = _autopack(args, tmp_path, stdout=full)
        _, said = process.communicate(timeout=60)
    assert process.returncode == 1, said
    assert said == "✘ cannot write this command's output: No space left on device\n", said
    shut = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "autopack", *args],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (shut.returncode, shut.stderr) == (
        1,
        "✘ cannot write this command's output: standard output is closed\n",
    )
    gone = _autopack(args, tmp_path, stdout=subprocess.PIPE)
    assert gone.stdout is not None
    gone.stdout.close()  # no reader left: the first write is EPIPE
    _, said = gone.communicate(timeout=60)
    assert (gone.returncode, said) == (128 + signal.SIGPIPE, "")
