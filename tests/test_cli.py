"""Mistyped commands get Typer's usage message and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fakes.llm_wire import WireServer
from tests.support import clean_env, cli


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["drain", "run"], "Missing option '--run-id'"),
        (["drain", "run", "--run-id", "r", "--auditor", "maybe"], "use llm, rules or off"),
        (["run", "show"], "Missing argument"),
        (["db", "nonsense"], "No such command"),
        *[
            (["drain", command, *ids, flag, value], flag)
            for command, ids in [
                ("phase", ["--run-id", "r", "--phase-id", "p"]),
                ("run", ["--run-id", "r"]),
            ]
            for flag, value in [
                # each of these failed every attempt of the phase (executor_error, a
                # check that times out at once, a cap already passed) instead of exit 2
                ("--check-timeout", "nan"),
                ("--check-timeout", "inf"),
                ("--check-timeout", "0"),
                ("--check-timeout", "-1"),
                ("--replay-speed", "inf"),
                ("--approval-timeout", "nan"),
                ("--approval-timeout", "-5"),
                ("--phase-token-cap", "-1"),
                ("--phase-cost-cap", "nan"),
                ("--phase-cost-cap", "-1"),
                ("--escalation-factor", "inf"),
            ]
        ],
    ],
)
def test_usage_errors_name_the_problem_without_a_traceback(
    args: list[str], complaint: str, tmp_path: Path
) -> None:
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "autopack.db").exists(), "a usage error must not touch a database"


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://127.0.0.1:8000\x01",
        "localhost:8000",
        " http://127.0.0.1:8000",
        "ftp://127.0.0.1:8000",
        "http://",
    ],
)
def test_an_api_url_that_is_not_a_url_is_an_error_naming_it(url: str, tmp_path: Path) -> None:
    """httpx.InvalidURL left every command that attaches to a server with a traceback; a
    URL without http(s):// or a host was "no Autopack API answers (UnsupportedProtocol)"."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    for args, env_url in [
        (["run", "list", "--api-url", url], None),
        (["db", "identity", "--api-url", url], None),
        (["approvals", "list"], url),
        (["doctor"], url),
    ]:
        extra = {"AUTOPACK_API_URL": env_url} if env_url else {}
        result = cli(*args, cwd=tmp_path, env={**env, **extra})
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert f"API URL {url!r} is not a URL" in result.stderr, (args, result.stderr)


def test_an_id_too_long_for_a_url_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    """httpx.InvalidURL (URL too long) escaped every command that puts an id in a URL."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    long_id = "x" * 100_000
    for args in (["run", "show", long_id], ["telemetry", "report", "--run", long_id]):
        result = cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 2, (args[:2], result.stderr[-500:])
        assert "Traceback" not in result.stderr and "too long" in result.stderr


def test_calibrate_outputs_that_cannot_be_written_are_errors_naming_them(tmp_path: Path) -> None:
    """--write and --plot into a directory, under a file or onto a device ended in an
    OSError traceback; --write now replaces the file at once or not at all."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("mine\n")
    for flag, target in [
        ("--write", "adir"),
        ("--write", "afile/x.json"),
        ("--write", "/dev/full"),
        ("--plot", "adir"),
        ("--plot", "afile/x.png"),
    ]:
        result = cli("telemetry", "calibrate", flag, target, cwd=tmp_path, env=env)
        assert result.returncode == 2, (flag, target, result.stderr[-800:])
        assert "Traceback" not in result.stderr and target in result.stderr
    assert (tmp_path / "afile").read_text() == "mine\n"
    assert Path("/dev/full").is_char_device() or not Path("/dev/full").exists()


def test_a_plot_naming_no_image_format_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """``--plot fit.txt`` failed after ``--write`` had written (and as a PNG before that)."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    args = ("telemetry", "calibrate", "--write", "est.json", "--plot", "fit.txt")
    result = cli(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-800:]
    assert "fit.txt" in result.stderr and ".txt is not an image format" in result.stderr
    assert ".svg" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "est.json").exists() and not (tmp_path / "fit.txt").exists()


def test_a_plot_no_file_can_be_written_at_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """``--plot`` into a missing directory, onto a directory or a FIFO failed (exit 2)
    after ``--write`` had written its estimator."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "adir.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    for plot in ("nodir/fit.png", "adir.png", "pipe.png"):
        args = ("telemetry", "calibrate", "--write", "est.json", "--plot", plot)
        result = cli(*args, cwd=tmp_path, env=env)
        said = " ".join(result.stderr.split())
        assert result.returncode == 2, (plot, said[-800:])
        assert f"--plot {plot} " in said and "Traceback" not in said, said[-800:]
        assert not (tmp_path / "est.json").exists(), plot


def test_calibrate_never_writes_over_a_database(tmp_path: Path) -> None:
    """``telemetry calibrate --write autopack.db`` replaced the database it had just read,
    every run and row, with the estimator file, exit 0 (so did ``--write`` naming its
    ``-wal`` or another database). Refused, exit 2, nothing written."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    other = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/other.db")
    assert cli("db", "init", cwd=tmp_path, env=other).returncode == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("autopack.db", "other.db")}
    for target in ("autopack.db", "autopack.db-wal", "other.db"):
        result = cli("telemetry", "calibrate", "--write", target, cwd=tmp_path, env=env)
        said = " ".join(result.stderr.split())
        assert result.returncode == 2, (target, said[-800:])
        assert f"--write {target} " in said and "nothing written" in said, said[-800:]
        assert "Traceback" not in said
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not (tmp_path / "autopack.db-wal").exists()
    assert cli("run", "list", cwd=tmp_path, env=env).returncode == 0


def test_calibrate_write_says_what_it_wrote_against_the_verdict(tmp_path: Path) -> None:
    """With nothing to learn from (verdict "wait") --write printed "(no change to the
    estimator file)" and then a bare "wrote FILE", as if a new estimator had been written
    on the tool's recommendation."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    result = cli("telemetry", "calibrate", "--write", "est.json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-800:]
    lines = result.stdout.splitlines()
    assert lines[-2] == "(no change to the estimator file)", lines
    assert lines[-1].startswith("✔ wrote est.json: the current estimator unchanged"), lines
    assert "verdict wait" in lines[-1], lines
    assert f"AUTOPACK_ESTIMATOR_FILE={tmp_path / 'est.json'}" in lines[-1]
    assert (tmp_path / "est.json").is_file()
    as_json = cli("telemetry", "calibrate", "--json", "--write", "b.json", cwd=tmp_path, env=env)
    assert json.loads(as_json.stdout)["verdict"]["action"] == "wait", as_json.stdout[-800:]
    assert "wrote b.json: the current estimator unchanged" in as_json.stderr


def test_calibrate_without_write_says_how_to_write_and_use_the_estimator(
    tmp_path: Path,
) -> None:
    """``telemetry calibrate`` (as the demo's last line suggests it) ended with the diff of
    a new estimator file and nothing more: neither that nothing was written nor how the
    fitted estimator gets used."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    result = cli("telemetry", "calibrate", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-800:]
    last = result.stdout.splitlines()[-1]
    assert last.startswith("nothing written: `--write FILE`"), last
    assert "AUTOPACK_ESTIMATOR_FILE=FILE" in last
    assert not list(tmp_path.glob("*.json"))


def test_doctor_says_there_is_no_dotenv_rather_than_that_it_does_not_set_the_url(
    tmp_path: Path,
) -> None:
    """Without any .env doctor printed "DATABASE_URL from .env at PATH: not set", as if
    that file existed and only lacked the line."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    dotenv = tmp_path / ".env"
    missing = cli("doctor", cwd=tmp_path, env=env)
    assert f"DATABASE_URL from .env at {dotenv}: no such file" in missing.stdout, missing.stdout
    dotenv.write_text("TELEMETRY_DB_ENABLED=1\n")
    present = cli("doctor", cwd=tmp_path, env=env)
    assert f"DATABASE_URL from .env at {dotenv}: not set" in present.stdout, present.stdout


@pytest.mark.parametrize("value", ["", "not a url", "postgresql://u:sekrit-pw@h:port/db"])
def test_doctor_names_a_database_url_that_is_no_url_without_a_traceback(
    value: str, tmp_path: Path
) -> None:
    """``DATABASE_URL=`` (or any value that does not parse) raised out of doctor with
    SQLAlchemy's traceback while it listed where DATABASE_URL comes from; the other
    commands said "invalid setting". Doctor, run when a setting is wrong, now lists the
    value and fails the settings check naming it, exit 2."""
    result = cli("doctor", cwd=tmp_path, env=clean_env(DATABASE_URL=value))
    assert result.returncode == 2, result.stdout + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "not a database URL" in said and "invalid setting: DATABASE_URL" in said, said
    assert "sekrit-pw" not in result.stdout + result.stderr


def test_doctor_checks_the_estimator_file_a_drain_loads(tmp_path: Path) -> None:
    """``AUTOPACK_ESTIMATOR_FILE`` naming a file that is gone (or not JSON): doctor said all
    was well, and every drain then stopped at its start, exit 2. Doctor now fails naming
    the file; a good one is named with its version."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    good = cli("doctor", cwd=tmp_path, env=env)
    assert good.returncode == 0, good.stdout + good.stderr[-2000:]
    assert "estimator: package:" in good.stdout, good.stdout
    (tmp_path / "broken.json").write_text("{not json")
    for path in (tmp_path / "gone.json", tmp_path / "broken.json"):
        bad = cli("doctor", cwd=tmp_path, env={**env, "AUTOPACK_ESTIMATOR_FILE": str(path)})
        said = " ".join(bad.stderr.split())
        assert bad.returncode == 2, bad.stdout + said[-2000:]
        assert "estimator: " in said and str(path) in said and "AUTOPACK_ESTIMATOR_FILE" in said


def test_doctor_checks_the_price_table_a_drain_loads(tmp_path: Path) -> None:
    """``AUTOPACK_PRICE_TABLE`` naming a moved or broken file, or ``AUTOPACK_FREE_MODELS``
    naming a priced model: doctor said all was well and every drain then stopped at its
    start, exit 2. Doctor now fails naming the setting; a good table is named."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    good = cli("doctor", cwd=tmp_path, env=env)
    assert good.returncode == 0, good.stdout + good.stderr[-2000:]
    assert "prices: table " in good.stdout and "(bundled)" in good.stdout, good.stdout
    (tmp_path / "broken.json").write_text('{"version": "mine", "models": {"m": {"input": -1}}}')
    for setting in (
        {"AUTOPACK_PRICE_TABLE": str(tmp_path / "gone.json")},
        {"AUTOPACK_PRICE_TABLE": str(tmp_path / "broken.json")},
        {"AUTOPACK_FREE_MODELS": "claude-sonnet-5"},
    ):
        bad = cli("doctor", cwd=tmp_path, env={**env, **setting})
        said = " ".join(bad.stderr.split())
        assert bad.returncode == 2, bad.stdout + said[-2000:]
        assert "Traceback" not in said
        assert "prices: " in said and next(iter(setting)) in said, said
        assert next(iter(setting.values())) in said, said


def test_doctor_asks_for_a_model_name_when_a_base_url_names_a_server_of_its_own(
    tmp_path: Path,
) -> None:
    """OPENAI_BASE_URL at Ollama and no AUTOPACK_BUILDER_MODEL: doctor said all was well
    with "builder gpt-6-luna", a name such a server does not have, so the first drain's
    every call failed with "model not found"."""
    with WireServer() as server:  # no model list (404), as some servers have none
        env = clean_env(
            DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db", OPENAI_BASE_URL=f"{server.url}/v1"
        )
        assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
        bare = cli("doctor", cwd=tmp_path, env=env)
        qwen = {**env, "AUTOPACK_BUILDER_MODEL": "qwen2.5-coder:32b"}
        named = cli("doctor", cwd=tmp_path, env=qwen)
    llm = " ".join(line for line in bare.stdout.splitlines() if "llm:" in line)
    assert "builder gpt-6-luna" in llm, bare.stdout
    assert "set AUTOPACK_BUILDER_MODEL to a model it has" in " ".join(bare.stdout.split())
    assert "builder qwen2.5-coder:32b" in named.stdout, named.stdout
    assert "AUTOPACK_BUILDER_MODEL to" not in named.stdout


@pytest.mark.parametrize("raw", ["0", "-5", "0.5", "inf", "nan", "1e9", "soon"])
def test_an_llm_timeout_no_call_could_use_is_exit_2_naming_the_setting(
    raw: str, tmp_path: Path
) -> None:
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    result = cli(
        *("drain", "run", "--run-id", "r1"),
        cwd=tmp_path,
        env={**env, "AUTOPACK_LLM_TIMEOUT_SECONDS": raw},
    )
    assert result.returncode == 2, result.stderr[-800:]
    assert f"AUTOPACK_LLM_TIMEOUT_SECONDS={raw!r}" in result.stderr, result.stderr[-800:]
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_dir_it_cannot_use_before_making_anything(tmp_path: Path) -> None:
    """--dir FILE or FILE/sub ended in FileExistsError/NotADirectoryError tracebacks."""
    (tmp_path / "afile").write_text("mine\n")
    for args in (["--dir", "afile"], ["--dir", "afile/sub"], ["--replay-speed", "inf"]):
        result = cli("demo", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr[-800:])
        assert "Traceback" not in result.stderr and args[0] in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_argument_the_request_refuses_names_the_field(tmp_path: Path) -> None:
    """--reason longer than the API takes left pydantic's ValidationError traceback."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    for args in (
        ["run", "requeue", "r", "p", "--reason", "x" * 3000],
        ["run", "cancel", "r", "--reason", "x" * 3000],
    ):
        result = cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 2, (args[:2], result.stderr[-800:])
        assert "Traceback" not in result.stderr and "reason" in result.stderr


def test_bytes_that_are_not_utf8_are_refused_naming_where(tmp_path: Path) -> None:
    """An argument or DATABASE_URL holding a byte the locale cannot decode (kept by Python
    as a lone surrogate) ended in a UnicodeEncodeError traceback."""
    bad = b"\xff".decode("utf-8", "surrogateescape")
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    result = cli("run", "show", f"r{bad}", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-800:]
    assert "Traceback" not in result.stderr and "is not UTF-8 text" in result.stderr
    bad_env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/{bad}.db")
    for args in (["run", "list"], ["db", "init"]):
        result = cli(*args, cwd=tmp_path, env=bad_env)
        assert result.returncode == 2, result.stderr[-800:]
        assert "Traceback" not in result.stderr and "DATABASE_URL" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["autopack.db"]


@pytest.mark.parametrize(
    "args",
    [
        ["telemetry", "calibrate", "--write"],
        ["drain", "run", "--run-id", "exec-run", "--repo"],
        ["drain", "run", "--run-id", "exec-run", "--workspace"],
    ],
)
def test_a_path_too_long_for_the_file_system_is_refused_naming_its_flag(
    args: list[str], tmp_path: Path
) -> None:
    """Path.resolve() let a 300-character name through and the first exists()/is_dir()
    on it raised OSError (File name too long): a traceback, exit 1."""
    from tests.executor_support import cassette, create_run, env_for, files, line, phase, run_file

    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/m.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(m_py="VALUE = 1\n"))])
    drain = ["--cassette", str(tape), "--auditor", "rules"] if args[0] == "drain" else []
    result = cli(*args[:-1], *drain, args[-1], "d" * 300, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{args[-1]} " in result.stderr and "File name too long" in result.stderr


def test_a_mistyped_command_is_answered_with_the_one_meant(tmp_path: Path) -> None:
    """``autopack run shwo`` suggested ``show``; ``autopack drian`` suggested nothing (the
    root group loads its commands lazily, and Typer suggests from those it holds)."""
    for args, meant in ((("drian",), "drain"), (("run", "shwo"), "show")):
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"Did you mean {meant!r}?" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("run", "list"),
        ("doctor",),
        ("db", "init"),
        ("drain", "run", "--run-id", "r"),
        ("serve",),
    ],
)
def test_a_sqlite_path_the_file_system_cannot_hold_is_named_without_a_traceback(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    """A SQLite file name longer than the file system allows (NAME_MAX, 255 bytes on ext4)
    raised ``OSError: File name too long`` with a traceback out of every command that
    asked whether the database exists. Every process resolves the URL in one place, which
    now says so: exit 2, naming DATABASE_URL, creating nothing."""
    url = f"sqlite:///{'a' * 300}.db"
    result = cli(*args, cwd=tmp_path, env=clean_env(DATABASE_URL=url))
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, said[-2000:]
    assert "Traceback" not in said
    assert "invalid setting: DATABASE_URL" in said and "File name too long" in said, said[-2000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [("run", "list"), ("db", "init"), ("doctor",)])
def test_a_sqlite_path_naming_a_fifo_is_named_as_no_file(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    """A SQLite path naming a FIFO (or a device, a socket) was handed to SQLite, which
    answered "disk I/O error" (for ``/dev/null``, after writing ``/dev/null-journal``):
    the setting is now refused where every command resolves it, exit 2, naming what the
    path is, and nothing is written beside it."""
    fifo = tmp_path / "autopack.db"
    os.mkfifo(fifo)
    result = cli(*args, cwd=tmp_path, env=clean_env(DATABASE_URL=f"sqlite:///{fifo}"))
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, said[-2000:]
    assert "Traceback" not in said
    assert "invalid setting: DATABASE_URL" in said, said[-2000:]
    assert "is a FIFO (named pipe), not a regular file" in said, said[-2000:]
    assert list(tmp_path.iterdir()) == [fifo]
