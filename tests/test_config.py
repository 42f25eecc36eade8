"""Settings precedence, relative SQLite paths, the flag parser: through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autopack.config import child_env, load_settings, parse_flag
from autopack.dburl import resolve_database_url
from autopack.errors import ConfigError
from tests.support import Server, clean_env, cli


def _shown(result_stdout: str, name: str) -> dict[str, str]:
    rows = json.loads(result_stdout)
    return next(row for row in rows if row["name"] == name)


def _write_env(directory: Path, text: str) -> Path:
    path = directory / ".env"
    path.write_text(text)
    return path


def test_env_beats_dotenv(tmp_path: Path) -> None:
    _write_env(tmp_path, "DATABASE_URL=sqlite:///from_dotenv.db\n")
    result = cli(
        "config",
        "show",
        "--json",
        cwd=tmp_path,
        env=clean_env(DATABASE_URL="sqlite:///from_env.db"),
    )
    assert result.returncode == 0, result.stderr
    row = _shown(result.stdout, "DATABASE_URL")
    assert row == {
        "name": "DATABASE_URL",
        "value": f"sqlite:///{tmp_path}/from_env.db",
        "source": "env",
        "resolved_against": str(tmp_path),
    }


def test_dotenv_beats_default(tmp_path: Path) -> None:
    env_file = _write_env(tmp_path, "DATABASE_URL=sqlite:///from_dotenv.db\n")
    result = cli("config", "show", "--json", cwd=tmp_path, env=clean_env())
    row = _shown(result.stdout, "DATABASE_URL")
    assert row["value"] == f"sqlite:///{tmp_path}/from_dotenv.db"
    assert row["source"] == f".env at {env_file}"


def test_default_when_nothing_is_set(tmp_path: Path) -> None:
    result = cli("config", "show", "--json", cwd=tmp_path, env=clean_env())
    row = _shown(result.stdout, "DATABASE_URL")
    assert row == {
        "name": "DATABASE_URL",
        "value": f"sqlite:///{tmp_path}/autopack.db",
        "source": "default",
        "resolved_against": str(tmp_path),
    }


def test_flag_beats_env(tmp_path: Path) -> None:
    result = cli(
        "--database-url",
        "sqlite:///from_flag.db",
        "config",
        "show",
        "--json",
        cwd=tmp_path,
        env=clean_env(DATABASE_URL="sqlite:///from_env.db"),
    )
    row = _shown(result.stdout, "DATABASE_URL")
    assert row["value"] == f"sqlite:///{tmp_path}/from_flag.db"
    assert row["source"] == "flag"


def test_dotenv_default_database_does_not_redirect_the_environment(tmp_path: Path) -> None:
    """The legacy failure: a .env naming autopack.db must not win over the environment."""
    _write_env(tmp_path, "DATABASE_URL=sqlite:///autopack.db\n")
    env = clean_env(DATABASE_URL="sqlite:///autopack_telemetry_seed.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    result = cli("db", "identity", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["url"] == f"sqlite:///{tmp_path}/autopack_telemetry_seed.db"
    assert (tmp_path / "autopack_telemetry_seed.db").exists()
    assert not (tmp_path / "autopack.db").exists()


def test_password_is_redacted_in_config_show(tmp_path: Path) -> None:
    env = clean_env(
        DATABASE_URL="postgresql://user:hunter2@db.example:5432/x", OPENAI_API_KEY="sk-secret"
    )
    result = cli("config", "show", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "sk-secret" not in result.stdout
    assert _shown(result.stdout, "OPENAI_API_KEY")["value"] == "****"
    assert "postgresql+psycopg://user:***@db.example:5432/x" in result.stdout


@pytest.mark.parametrize("args", [["config", "show"], ["doctor"], ["run", "list"]])
def test_a_raw_at_sign_in_a_password_is_refused_without_showing_the_password(
    args: list[str], tmp_path: Path
) -> None:
    """postgresql://u:hunter@2secret@host parsed as password 'hunter', host
    '2secret@host': config show, doctor and every connection error showed '2secret'."""
    env = clean_env(DATABASE_URL="postgresql://user:hunter@2secret@db.example/x")
    result = cli(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    shown = result.stdout + result.stderr
    assert "2secret" not in shown and "hunter" not in shown, shown
    assert "DATABASE_URL=" in shown and "as %40" in shown and "Traceback" not in shown, shown


@pytest.mark.parametrize("url", ["postgresql://u@db.example:abc/x", "postgresql://[::1/x"])
@pytest.mark.parametrize("args", [["config", "show"], ["run", "list"]])
def test_a_database_url_whose_port_is_no_number_is_refused_naming_it(
    args: list[str], url: str, tmp_path: Path
) -> None:
    """SQLAlchemy's URL parser raises ValueError (not ArgumentError) for such a port:
    every command ended in a traceback instead of naming DATABASE_URL."""
    result = cli(*args, cwd=tmp_path, env=clean_env(DATABASE_URL=url))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"DATABASE_URL={url!r}" in result.stderr and "Traceback" not in result.stderr


def test_relative_sqlite_path_reaches_a_child_in_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent_dir, child_dir = tmp_path / "parent", tmp_path / "elsewhere"
    parent_dir.mkdir()
    child_dir.mkdir()
    monkeypatch.chdir(parent_dir)
    monkeypatch.setenv("DATABASE_URL", "sqlite:///autopack_telemetry_seed.db")
    settings = load_settings().settings
    assert settings.database_url == f"sqlite:///{parent_dir}/autopack_telemetry_seed.db"

    parent_env = clean_env(DATABASE_URL="sqlite:///autopack_telemetry_seed.db")
    assert cli("db", "init", cwd=parent_dir, env=parent_env).returncode == 0
    first = cli("db", "identity", "--json", cwd=parent_dir, env=parent_env)
    # The child runs elsewhere, next to a .env that names another database.
    _write_env(child_dir, "DATABASE_URL=sqlite:///autopack.db\n")
    second = cli("db", "identity", "--json", cwd=child_dir, env=child_env(settings))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert json.loads(first.stdout)["instance_id"] == json.loads(second.stdout)["instance_id"]
    assert not (child_dir / "autopack.db").exists()


def test_invalid_database_url_is_a_config_error_naming_the_value(tmp_path: Path) -> None:
    result = cli("db", "identity", cwd=tmp_path, env=clean_env(DATABASE_URL="mysql://x/y"))
    assert result.returncode == 2
    assert "DATABASE_URL='mysql://x/y'" in result.stderr
    assert "not supported" in result.stderr


def test_unreachable_database_is_a_config_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/x.db"
    result = cli("db", "init", cwd=tmp_path, env=clean_env(DATABASE_URL=url))
    assert result.returncode == 2
    assert "cannot open database" in result.stderr
    # SQLite's own words were "unable to open database file", naming no cause
    assert f"the directory {tmp_path}/no/such/dir does not exist" in result.stderr
    assert not (tmp_path / "no").exists()
    result = cli("db", "identity", cwd=tmp_path, env=clean_env(DATABASE_URL=url))
    assert result.returncode == 2
    assert f"no database at {tmp_path}/no/such/dir/x.db" in result.stderr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_flag_parser_accepts(raw: str, expected: bool) -> None:
    assert parse_flag(raw) is expected


@pytest.mark.parametrize("raw", ["2", "enabled", "tru", "y e s"])
def test_flag_parser_refuses_unknown_spellings(raw: str) -> None:
    with pytest.raises(ValueError, match="is not a boolean"):
        parse_flag(raw)


def test_unknown_telemetry_flag_value_is_an_error_not_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", "enabled")
    with pytest.raises(ConfigError, match="TELEMETRY_DB_ENABLED='enabled'"):
        load_settings()


def test_postgres_urls_get_the_psycopg_driver() -> None:
    assert resolve_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"


def test_continuation_and_prompt_cache_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """On by default (3 continuations, no cap of their own, caching on); 0 and off parse;
    a negative count is refused naming the setting."""
    defaults = load_settings().settings
    assert (defaults.autopack_max_continuations, defaults.autopack_prompt_cache) == (3, True)
    assert defaults.autopack_continuation_token_cap is None
    monkeypatch.setenv("AUTOPACK_MAX_CONTINUATIONS", "0")
    monkeypatch.setenv("AUTOPACK_CONTINUATION_TOKEN_CAP", "5000")
    monkeypatch.setenv("AUTOPACK_PROMPT_CACHE", "off")
    chosen = load_settings().settings
    assert (chosen.autopack_max_continuations, chosen.autopack_prompt_cache) == (0, False)
    assert chosen.autopack_continuation_token_cap == 5000
    monkeypatch.setenv("AUTOPACK_MAX_CONTINUATIONS", "-1")
    with pytest.raises(ConfigError, match="AUTOPACK_MAX_CONTINUATIONS"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        # inf failed every attempt of a drained phase (OverflowError: timestamp out of range)
        ("AUTOPACK_REPLAY_SPEED", "inf"),
        ("AUTOPACK_MAINTENANCE_INTERVAL_SECONDS", "inf"),
        ("AUTOPACK_KEEP_FAILED_WORKTREES_MINUTES", "Infinity"),
        ("AUTOPACK_DEFAULT_API_PORT", "99999999"),
        ("AUTOPACK_DEFAULT_API_PORT", "0"),
    ],
)
def test_infinite_or_impossible_numbers_are_refused_naming_the_setting(
    name: str, raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigError, match=f"{name}='{raw}'"):
        load_settings()


@pytest.mark.parametrize("raw", ["verbose", "", "-1"])
def test_an_unknown_log_level_is_refused_naming_it_not_a_traceback(
    raw: str, tmp_path: Path
) -> None:
    """logging.setLevel raised ValueError: Unknown level, a traceback from every command."""
    result = cli("config", "show", cwd=tmp_path, env=clean_env(AUTOPACK_LOG_LEVEL=raw))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"AUTOPACK_LOG_LEVEL='{raw}': not a log level" in result.stderr, result.stderr


def test_a_log_level_in_any_case_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_LOG_LEVEL", "debug")
    assert load_settings().settings.autopack_log_level == "DEBUG"


@pytest.mark.parametrize("raw", [" padded", "two words", "x" * 10_000])
def test_a_pin_that_is_no_instance_id_is_refused_naming_it_and_not_echoed_whole(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10 KB pin came back whole in an IdentityMismatch on every command."""
    monkeypatch.setenv("AUTOPACK_EXPECTED_INSTANCE_ID", raw)
    with pytest.raises(ConfigError, match="AUTOPACK_EXPECTED_INSTANCE_ID=") as refused:
        load_settings()
    assert len(refused.value.message) < 500


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        # python-dotenv skipped the line with a warning: the database became ./autopack.db
        (b'DATABASE_URL="sqlite:///mine.db\n', "line 1 cannot be parsed"),
        (b"OTHER=1\nDATABASE_URL\n", "line 2: DATABASE_URL has no value"),
        # tracebacks: UnicodeDecodeError, ValueError: embedded null byte
        (b"DATABASE_URL=sqlite:///\xff.db\n", "is not UTF-8 text"),
        (b"DATABASE_URL=sqlite:///a\x00b.db\n", "NUL"),
        # python-dotenv kept the last: the appended line silently chose the database
        (
            b"DATABASE_URL=sqlite:///mine.db\nX=1\ndatabase_url=sqlite:///other.db\n",
            "lines 1 and 3 both set database_url, to different values",
        ),
        # skipped as another tool's setting: the server ran without the token it seemed to have
        (
            b"SECRET_KEY=theirs\nAUTOPACK_API_TOKNE=" + b"t" * 40 + b"\n",
            "line 2: AUTOPACK_API_TOKNE is no Autopack setting (did you mean AUTOPACK_API_TOKEN?)",
        ),
        (b"AUTOPACK_COLOUR=1\n", "line 1: AUTOPACK_COLOUR is no Autopack setting (`autopack"),
        # the prefix and _URL made these nearest AUTOPACK_API_URL: the database was meant
        (
            b"AUTOPACK_DB_URL=sqlite:///a.db\n",
            "AUTOPACK_DB_URL is no Autopack setting (did you mean DATABASE_URL?)",
        ),
        (b"AUTOPACK_DATABASE_URL=sqlite:///a.db\n", "(did you mean DATABASE_URL?)"),
        # named as written: the name upper-cased again was another (ß is SS, ﬁ is FI)
        ("AUTOPACK_STRAßE=1\n".encode(), "line 1: AUTOPACK_STRAßE is no Autopack setting"),
        ("AUTOPACK_ﬁLE=1\n".encode(), "line 1: AUTOPACK_ﬁLE is no Autopack setting"),
    ],
)
def test_a_dotenv_that_cannot_be_read_as_written_is_refused_naming_it(
    text: bytes, complaint: str, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(text)
    for args in (["config", "show"], ["db", "init"]):
        result = cli(*args, cwd=tmp_path, env=clean_env())
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert str(env_file) in result.stderr and complaint in result.stderr, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [".env"], "no database made elsewhere"


def test_a_dotenv_setting_given_twice_alike_is_read(tmp_path: Path) -> None:
    """A line copied twice means one thing: it is no reason to refuse the file."""
    url = f"sqlite:///{tmp_path / 'mine.db'}"
    (tmp_path / ".env").write_text(f"DATABASE_URL={url}\nX=1\nDATABASE_URL='{url}'\n")
    result = cli("config", "show", "--json", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert url in result.stdout


def test_a_dotenv_that_is_a_fifo_is_refused_naming_it_not_waited_on(tmp_path: Path) -> None:
    """A ``.env`` that is a named pipe: python-dotenv opens FIFOs, and with no writer every
    command (``run list``, ``config show``, ``doctor``) waited forever. It is refused now,
    exit 2 naming it (settings read a .env more than once: a pipe holds it only once)."""
    env_file = tmp_path / ".env"
    os.mkfifo(env_file)
    for args in (["run", "list"], ["config", "show"], ["doctor"]):
        result = cli(*args, cwd=tmp_path, env=clean_env(), timeout=30)
        said = " ".join(result.stderr.split())
        assert result.returncode == 2, (args, said[-2000:])
        assert "Traceback" not in said
        assert f"{env_file} is a FIFO (named pipe), not a file" in said, said[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == [".env"], "no database made elsewhere"


def test_a_deleted_working_directory_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    """`rm -rf` of the directory a shell is in: os.getcwd() raised FileNotFoundError."""
    gone = tmp_path / "gone"
    gone.mkdir()
    shell = f'cd "{gone}" && rmdir "{gone}" && exec "$0" -m autopack "$@"'
    process = subprocess.Popen(
        ["sh", "-c", shell, sys.executable, "run", "list"],
        env=clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/autopack.db"),
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr and "working directory no longer exists" in stderr


def test_setting_files_that_are_not_utf8_are_config_errors_naming_them(tmp_path: Path) -> None:
    """AUTOPACK_PRICE_TABLE, AUTOPACK_ESTIMATOR_FILE and a cassette holding a byte that is
    not UTF-8 ended every drain (and calibrate) in a UnicodeDecodeError traceback."""
    from autopack.estimation.estimator import TokenEstimator
    from autopack.llm.pricing import PriceTable
    from autopack.llm.replay import read_cassette

    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    for load in (PriceTable.load, TokenEstimator.load, read_cassette):
        with pytest.raises(ConfigError, match=r"binary\.json"):
            load(binary)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_is_refused_naming_it(url: str, tmp_path: Path) -> None:
    """Each process got a database of its own: db init 'initialised' one that vanished,
    doctor said to run db init, every other command said its server 'did not start'."""
    for args in (["db", "init"], ["run", "list"], ["doctor"]):
        result = cli(*args, cwd=tmp_path, env=clean_env(DATABASE_URL=url))
        assert result.returncode == 2, (args, result.stderr[-800:])
        assert "in-memory SQLite database" in result.stderr and url in result.stderr


@pytest.mark.parametrize("url", ["postgresql://127.0.0.1:5432/", "postgresql://127.0.0.1:5432"])
def test_a_postgres_url_without_a_database_is_refused_naming_it(url: str, tmp_path: Path) -> None:
    """libpq connected to the database named after the user (``root`` here), and even a
    read-only command such as ``db identity`` installed Autopack's tables there."""
    for args in (["db", "init"], ["db", "identity"], ["run", "list"]):
        # PGDATABASE names none that exists: a regression fails here without filling one
        env = clean_env(DATABASE_URL=url, PGDATABASE="autopack_test_no_such_database")
        result = cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 2, (args, result.stderr[-800:])
        assert "names no database" in result.stderr and "DATABASE_URL" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("AUTOPACK_BUILDER_MODLE", "AUTOPACK_BUILDER_MODEL"),
        ("autopack_api_tokne", "AUTOPACK_API_TOKEN"),  # read case-blind like the settings
        ("AUTOPACK_DB_URL", "DATABASE_URL"),
    ],
)
def test_a_misspelt_setting_in_the_environment_is_refused_naming_it(
    variable: str, meant: str, tmp_path: Path
) -> None:
    """Ignored, it silently meant the default model (or prices, or budget) for a whole
    drain; every command and the server say which variable, and make no database."""
    env = clean_env(**{variable: "x"})
    complaint = f"{variable} is no Autopack setting (did you mean {meant}?)"
    for args in (["config", "show"], ["db", "init"], ["run", "list"]):
        result = cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert complaint in result.stderr and "Traceback" not in result.stderr
    server = Server(env, cwd=tmp_path)
    try:
        assert server.process.wait(timeout=30) == 3
        assert complaint in server.output()
    finally:
        server.stop()
    assert [p.name for p in tmp_path.iterdir()] == [server.log.name], "no database made"


def test_names_of_its_own_under_the_prefix_are_left_to_their_owners(tmp_path: Path) -> None:
    """A check's marker and a CI's test settings share the prefix and are no typo."""
    env = clean_env(AUTOPACK_CHECK_ID="c1", AUTOPACK_TEST_POSTGRES_URL="postgresql://x/y")
    result = cli("config", "show", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
