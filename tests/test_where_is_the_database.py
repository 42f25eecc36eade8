"""Issue 13 §1: no command conjures an empty database, from whatever directory it runs.

The legacy probe ran in another directory, got a brand-new empty ``autopack.db`` there and
answered "not found". Here: commands that only read or drain never create a database
file (exit 2 saying where they looked, where the path came from and which databases are
nearby); a ``.env`` is found from the working directory up to the repository root and its
relative SQLite path means "next to this file"; doctor names the case.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import create_pg_database, drop_pg_database, empty_sqlite
from tests.executor_support import (
    BREAKAGES,
    break_repository,
    cassette,
    files,
    line,
    on_branch,
    phase,
    run_file,
)
from tests.support import Server, clean_env, cli, free_port, table_names

RUN = "exec-run"


def _repo(tmp_path: Path) -> tuple[Path, Path]:
    """A git repository with a ``scripts/`` directory: (root, scripts)."""
    root = tmp_path / "project"
    scripts = root / "scripts"
    scripts.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root, scripts


def _seed(root: Path, env: dict[str, str]) -> None:
    """Initialise the database the root resolves to and create a run in it."""
    created = cli(
        "run", "create", str(run_file(root, [phase("p1", ["pkg/a.py"])])), cwd=root, env=env
    )
    assert created.returncode == 0, created.stderr


def test_a_subdirectory_uses_the_repository_dotenv(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    """`cd scripts && autopack run list` finds the run the project's .env points at."""
    root, scripts = _repo(tmp_path)
    url = "sqlite:///autopack.db" if backend == "sqlite" else database_url
    (root / ".env").write_text(f"DATABASE_URL={url}\n")
    _seed(root, clean_env())

    listed = cli("run", "list", "--json", cwd=scripts, env=clean_env())
    assert listed.returncode == 0, listed.stderr
    assert [run["run_id"] for run in json.loads(listed.stdout)["items"]] == [RUN]
    assert not (scripts / "autopack.db").exists()

    shown = cli("config", "show", cwd=scripts, env=clean_env())
    assert f".env at {root / '.env'}" in shown.stdout
    if backend == "sqlite":  # relative to the .env's directory, not to scripts/
        assert f"resolved against {root} (the .env file's directory)" in shown.stdout


def test_without_database_url_every_subdirectory_of_a_repository_means_its_root_database(
    tmp_path: Path,
) -> None:
    """Like git finds .git: `run create` in one subdirectory and `drain` in another use the
    one autopack.db at the repository's root, and the run's code lands in its one default
    workspace there, never in a new, empty database or workspace where the command ran."""
    root, scripts = _repo(tmp_path)
    deeper = root / "src" / "pkg"
    deeper.mkdir(parents=True)
    definition = run_file(tmp_path, [phase("p1", ["pkg/a.py"])])
    env = clean_env(AUTOPACK_DEFAULT_API_PORT=str(free_port()))
    created = cli("run", "create", str(definition), cwd=deeper, env=env)
    assert created.returncode == 0, created.stderr
    assert f"created new database sqlite:///{root / 'autopack.db'}" in created.stderr
    assert "git status lists it: add autopack.db* and autopack-workspaces/" in created.stderr

    shown = cli("config", "show", cwd=scripts, env=env)
    assert f"resolved against {root} (the root of the git repository you are in)" in shown.stdout
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    drained = cli(
        *("drain", "run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)),
        cwd=scripts,
        env=env,
    )
    assert drained.returncode == 0, drained.stderr
    assert on_branch(root / "autopack-workspaces" / RUN, "pkg/a.py") == "A = 1\n"
    assert sorted(p.name for p in scripts.iterdir()) == []
    assert sorted(p.name for p in deeper.iterdir()) == []


def test_the_gitignore_hint_only_where_git_would_list_the_new_database(tmp_path: Path) -> None:
    root, _ = _repo(tmp_path)
    (root / ".gitignore").write_text("autopack.db*\nautopack-workspaces/\n")
    ignored = cli("db", "init", cwd=root, env=clean_env())
    assert ignored.returncode == 0 and "created new database" in ignored.stderr
    assert ".gitignore" not in ignored.stderr
    outside = tmp_path / "no-repo"
    outside.mkdir()
    plain = cli("db", "init", cwd=outside, env=clean_env())
    assert plain.returncode == 0 and "created new database" in plain.stderr
    assert ".gitignore" not in plain.stderr


@pytest.mark.parametrize("how", BREAKAGES)
def test_run_create_in_a_broken_git_repository_says_it_is_broken_and_creates_nothing(
    how: str, tmp_path: Path
) -> None:
    """`run create` at the root of a repository git cannot read (inside a sound one) printed
    git's bare "fatal:" line, created the database and the run (exit 0), and said
    "git status lists it", which git status could not. Now: exit 2 naming the directory,
    that its repository is broken and git's own words; no database, no run."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    root, _ = _repo(tmp_path)
    said = break_repository(root, how)
    definition = run_file(tmp_path, [phase("p1", ["pkg/a.py"])])
    created = cli("run", "create", str(definition), cwd=root, env=clean_env())
    assert created.returncode == 2, created.stdout + created.stderr
    assert "Traceback" not in created.stderr and "git status lists it" not in created.stderr
    assert f"{root} holds a .git, but its git repository is broken" in created.stderr
    assert said in created.stderr
    assert not list(root.glob("autopack.db*"))


READERS = [
    ["run", "list"],
    ["run", "show", RUN],
    ["run", "phase", RUN, "p1"],
    ["approvals", "list"],
    ["approvals", "show", "1"],
    ["telemetry", "report"],
    ["telemetry", "calibrate"],
    ["probe", "--run-id", RUN, "--phase-id", "p1"],
    ["drain", "run", "--run-id", RUN],
    ["drain", "phase", "--run-id", RUN, "--phase-id", "p1"],
    ["db", "identity"],
    ["db", "check"],
    ["db", "upgrade"],
]


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_readers_never_create_a_database_and_say_where_they_looked(
    args: list[str], tmp_path: Path
) -> None:
    result = cli(*args, cwd=tmp_path, env=clean_env(TELEMETRY_DB_ENABLED="1"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"no database at {tmp_path / 'autopack.db'}" in result.stderr
    assert (
        f"'sqlite:///./autopack.db' from default, a relative path resolved against {tmp_path}"
        in result.stderr
    )
    assert "autopack db init" in result.stderr  # nothing else in sight: how to start one
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


@pytest.mark.parametrize(
    "args",
    [*[a for a in READERS if a != ["db", "upgrade"]], ["doctor"]],
    ids=lambda a: " ".join(a[:2]),
)
def test_readers_leave_an_empty_database_empty_and_say_so(args: list[str], tmp_path: Path) -> None:
    """A database that exists but holds no tables (an empty file, a new PostgreSQL
    database: a mistyped name for one the user made) was set up by any command opening it,
    which then answered "0 runs" from the empty tables it had just made."""
    url = empty_sqlite(tmp_path / "autopack.db")
    result = cli(*args, cwd=tmp_path, env=clean_env(DATABASE_URL=url, TELEMETRY_DB_ENABLED="1"))
    checks_schema = args in (["db", "check"], ["doctor"])  # "not initialised yet", exit 3
    assert result.returncode == (3 if checks_schema else 2), result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "Traceback" not in said
    assert f"{tmp_path / 'autopack.db'} is" in said and "db init" in said, said
    assert table_names(url) == set(), "a reader set up the empty database"
    assert list(tmp_path.iterdir()) == [tmp_path / "autopack.db"], "nor a journal beside it"
    assert (tmp_path / "autopack.db").stat().st_size == 0, "its header was written"


@pytest.mark.postgres
def test_an_empty_postgresql_database_is_set_up_by_writers_only(
    pg_admin: str, tmp_path: Path
) -> None:
    """Readers refuse a new PostgreSQL database naming it and `autopack db init`;
    `run create` (a writer) sets it up and creates its run there."""
    database_url = create_pg_database(pg_admin)
    try:
        _readers_refuse_writers_set_up(database_url, tmp_path)
    finally:
        drop_pg_database(pg_admin, database_url)


def _readers_refuse_writers_set_up(database_url: str, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=database_url)
    listed = cli("run", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 2, listed.stdout + listed.stderr
    said = " ".join(listed.stderr.split())
    assert "is an empty database (no tables at all)" in said and "autopack db init" in said
    assert table_names(database_url) == set()
    root, _ = _repo(tmp_path)
    _seed(root, env)
    assert "exec-run" in cli("run", "list", cwd=tmp_path, env=env).stdout


def test_a_missing_database_lists_the_databases_nearby(tmp_path: Path) -> None:
    """The environment names a file that is not here; the project's own is listed."""
    root, scripts = _repo(tmp_path)
    (root / ".env").write_text("DATABASE_URL=sqlite:///data/project.db\n")
    (root / "data").mkdir()
    _seed(root, clean_env())
    demo = scripts / "demo"
    demo.mkdir()
    assert (
        cli("db", "init", cwd=demo, env=clean_env(DATABASE_URL="sqlite:///autopack.db")).returncode
        == 0
    )

    env = clean_env(DATABASE_URL="sqlite:///telemetry_seed.db")
    result = cli("run", "list", cwd=scripts, env=env)
    assert result.returncode == 2
    message = result.stderr
    assert f"no database at {scripts / 'telemetry_seed.db'}" in message
    assert (
        f"from env, a relative path resolved against {scripts} (the working directory)" in message
    )
    assert (
        f"sqlite:///{root / 'data/project.db'}" in message and f".env at {root / '.env'}" in message
    )
    assert f"sqlite:///{demo / 'autopack.db'}" in message
    assert "db init" not in message, "never suggest creating another database"
    assert not (scripts / "telemetry_seed.db").exists()


def test_from_deep_in_a_repository_the_demo_database_at_its_root_is_named(
    tmp_path: Path,
) -> None:
    """`make demo` leaves demo/autopack.db at the project's root. The default database
    means the root from every subdirectory, so the root's demo database is as near from
    src/pkg as from the root; it used to be named from the root only ("no other Autopack
    database is in sight")."""
    root, _ = _repo(tmp_path)
    (root / "demo").mkdir()
    init = cli("db", "init", cwd=root / "demo", env=clean_env(DATABASE_URL="sqlite:///autopack.db"))
    assert init.returncode == 0, init.stderr
    deep = root / "src" / "pkg"
    deep.mkdir(parents=True)

    result = cli("run", "list", cwd=deep, env=clean_env())
    assert result.returncode == 2
    assert f"no database at {root / 'autopack.db'}" in result.stderr
    assert f"sqlite:///{root / 'demo' / 'autopack.db'}  (file)" in result.stderr, result.stderr
    assert "No other Autopack database is in sight" not in result.stderr
    assert not (root / "autopack.db").exists()


def test_in_a_linked_worktree_the_main_working_trees_database_is_named(tmp_path: Path) -> None:
    """``git worktree add ../feature``: its root holds a ``.git`` *file* and lies beside the
    project, not below it, so the project's ``autopack.db`` was out of sight: "No other
    Autopack database is in sight", and the hint to create a new, empty one."""
    root, _ = _repo(tmp_path)
    _seed(root, clean_env())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=root, check=True)
    feature = tmp_path / "feature"
    subprocess.run([*git, "worktree", "add", "-q", str(feature)], cwd=root, check=True)
    assert (feature / ".git").is_file()
    result = cli("run", "list", cwd=feature, env=clean_env())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"sqlite:///{root / 'autopack.db'}  (this repository's main working tree)" in (
        result.stderr
    )
    assert "db init" not in result.stderr
    assert not (feature / "autopack.db").exists()
    # `run create` there makes the worktree a database of its own, and names the project's
    run = run_file(feature, [phase("p1", ["pkg/a.py"])])
    created = cli("run", "create", str(run), cwd=feature, env=clean_env())
    assert created.returncode == 0, created.stderr[-2000:]
    said = " ".join(created.stderr.split())
    assert f"created new database sqlite:///{feature / 'autopack.db'}" in said
    assert f"if you meant one, use `--database-url sqlite:///{root / 'autopack.db'}`" in said


def test_a_dotenv_outside_a_repository_applies_only_in_its_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///parent.db\n")
    child = tmp_path / "child"
    child.mkdir()
    shown = cli("config", "show", "--json", cwd=child, env=clean_env())
    row = next(r for r in json.loads(shown.stdout) if r["name"] == "DATABASE_URL")
    assert (row["value"], row["source"]) == (f"sqlite:///{child}/autopack.db", "default")


def test_creating_commands_say_they_created_a_database(tmp_path: Path) -> None:
    init = cli("db", "init", cwd=tmp_path, env=clean_env())
    assert init.returncode == 0, init.stderr
    assert f"created new database {tmp_path / 'autopack.db'}" in init.stderr
    again = cli("db", "init", cwd=tmp_path, env=clean_env())
    assert again.returncode == 0 and "created new database" not in again.stderr

    other = clean_env(DATABASE_URL="sqlite:///second.db")
    created = cli(
        "run",
        "create",
        str(run_file(tmp_path, [phase("p1", ["pkg/a.py"])])),
        cwd=tmp_path,
        env=other,
    )
    assert created.returncode == 0, created.stderr
    assert f"created new database sqlite:///{tmp_path / 'second.db'}" in created.stderr


def test_doctor_names_a_missing_database_and_the_one_nearby(tmp_path: Path) -> None:
    root, scripts = _repo(tmp_path)
    (root / ".env").write_text("DATABASE_URL=sqlite:///autopack.db\n")
    _seed(root, clean_env())
    env = clean_env(DATABASE_URL="sqlite:///elsewhere.db")
    result = cli("doctor", cwd=scripts, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert f"no database at {scripts / 'elsewhere.db'}" in output
    assert output.count(f"--database-url sqlite:///{root / 'autopack.db'}") == 1, output
    assert "db init" not in output
    assert not (scripts / "elsewhere.db").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    alone = cli("doctor", cwd=empty, env=clean_env())
    assert alone.returncode == 2
    said = " ".join((alone.stdout + alone.stderr).split())
    assert said.count("autopack db init") == 1, said  # the fix, said once
    # nothing set the models: doctor says they are the defaults, not the user's choice
    assert re.search(r"builder \S+ \(default\), auditor \S+ \(default\)", said), said
    assert list(empty.iterdir()) == []


def test_a_dotenv_file_setting_means_the_file_next_to_it_from_every_subdirectory(
    tmp_path: Path,
) -> None:
    """The estimator a drain in scripts/ uses is the one the project's .env names (its
    relative path read like DATABASE_URL's), not a scripts/estimator.json nor a missing one."""
    from autopack.estimation.estimator import TokenEstimator

    root, scripts = _repo(tmp_path)
    (root / ".env").write_text(
        "DATABASE_URL=sqlite:///autopack.db\nAUTOPACK_ESTIMATOR_FILE=estimator.json\n"
    )
    _seed(root, clean_env())
    for directory, version in ((root, "ours"), (scripts, "decoy")):
        doc = {**TokenEstimator.load().to_json(), "version": version}
        (directory / "estimator.json").write_text(json.dumps(doc))

    shown = cli("config", "show", "--json", cwd=scripts, env=clean_env())
    assert shown.returncode == 0, shown.stderr
    assert str(root / "estimator.json") in shown.stdout
    calibrated = cli("telemetry", "calibrate", "--json", cwd=scripts, env=clean_env())
    assert calibrated.returncode == 0, calibrated.stderr
    assert json.loads(calibrated.stdout)["prior_version"] == "ours"


def test_a_mistyped_database_name_names_the_databases_beside_it(tmp_path: Path) -> None:
    """``DATABASE_URL=sqlite:///../project/autopak.db`` from another directory: the real
    ``autopack.db`` lay right beside the path looked for, yet the message said "No other
    Autopack database is in sight" and suggested `autopack db init`."""
    root, _ = _repo(tmp_path)
    _seed(root, clean_env())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(DATABASE_URL="sqlite:///../project/autopak.db")
    result = cli("run", "list", cwd=elsewhere, env=env)
    assert result.returncode == 2, result.stderr
    assert f"no database at {root / 'autopak.db'}" in result.stderr
    assert f"sqlite:///{root / 'autopack.db'}  (file)" in result.stderr, result.stderr
    assert "db init" not in result.stderr
    assert not (root / "autopak.db").exists()


def test_a_writing_command_is_not_said_to_only_read(tmp_path: Path) -> None:
    """`autopack run requeue` (or a drain, `db upgrade`) with no database here said "this
    command only reads, so it does not create one": a requeue writes."""
    result = cli("run", "requeue", "r", "p1", cwd=tmp_path, env=clean_env())
    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.split())
    assert "only reads" not in said, said
    assert "and this command does not create one." in said, said
    assert not (tmp_path / "autopack.db").exists()


@pytest.mark.parametrize(
    "query",
    [
        "file:autopack.db?uri=true",
        "file:autopack.db",
        "autopack.db?mode=ro&uri=true",
        "autopack.db?mode=memory&uri=true",
        "autopack.db?mode=ro",
    ],
)
def test_a_sqlite_url_that_would_open_another_database_than_its_path_is_refused(
    query: str, tmp_path: Path
) -> None:
    """A SQLite URI filename (``file:…``) was neither made absolute nor checked to exist:
    from ``scripts/`` the project's ``.env`` meant a new, empty ``scripts/autopack.db`` (or
    a file literally named ``file:autopack.db``), listed as "0 runs", exit 0; and
    URI options with ``uri=true`` reached SQLite as part of a plain path: a new, empty
    file named ``autopack.db?mode=ro`` beside the database, listed the same way."""
    root, scripts = _repo(tmp_path)
    _seed(root, clean_env())  # the project's database, root/autopack.db, with a run
    (root / ".env").write_text(f"DATABASE_URL=sqlite:///{query}\n")

    for cwd in (root, scripts):
        listed = cli("run", "list", "--json", cwd=cwd, env=clean_env())
        assert listed.returncode == 2, listed.stdout + listed.stderr
        assert "DATABASE_URL" in listed.stderr and "sqlite:////path/to" in listed.stderr
        assert "Traceback" not in listed.stderr
    assert sorted(p.name for p in scripts.iterdir()) == []
    assert not [p for p in root.iterdir() if p.name.startswith("file:") or "?" in p.name]


def test_a_dotdot_after_a_symlink_means_the_database_the_system_opens(tmp_path: Path) -> None:
    """``..`` was dropped as text: ``DATABASE_URL=sqlite:///lnk/../project.db`` (``lnk`` a
    link to ``data/real``) names ``data/project.db`` to SQLite and every other tool, but
    Autopack read ``./project.db``: no database there, and ``run create`` made a new,
    empty one beside the real one and put the run in it."""
    root, scripts = _repo(tmp_path)
    (root / "data" / "real").mkdir(parents=True)
    (root / "lnk").symlink_to(root / "data" / "real")
    real = root / "data" / "project.db"
    _seed(root, clean_env(DATABASE_URL=f"sqlite:///{real}"))
    (root / ".env").write_text("DATABASE_URL=sqlite:///lnk/../project.db\n")

    for cwd in (root, scripts):
        listed = cli("run", "list", "--json", cwd=cwd, env=clean_env())
        assert listed.returncode == 0, listed.stderr
        assert [r["run_id"] for r in json.loads(listed.stdout)["items"]] == [RUN]
    env = clean_env(DATABASE_URL=f"sqlite:///{root}/lnk/../project.db")
    again = cli(
        "run",
        "create",
        str(run_file(scripts, [phase("p1", ["pkg/a.py"])], run_id="r2")),
        cwd=scripts,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    assert str(real) in again.stdout + again.stderr
    assert not (root / "project.db").exists()


def test_a_database_file_with_a_second_hard_link_is_refused_under_either_name(
    tmp_path: Path,
) -> None:
    """Two names of one file are not one database to SQLite: each name gets its own WAL, so
    a drain on ``b.db`` beside a server on ``a.db`` (a hard link) lost the other's commits
    without a word, while a symlink's target is what SQLite opens."""
    first = tmp_path / "a.db"
    _seed(tmp_path, clean_env(DATABASE_URL=f"sqlite:///{first}"))
    (tmp_path / "link.db").symlink_to(first)
    listed = cli("run", "list", cwd=tmp_path, env=clean_env(DATABASE_URL="sqlite:///link.db"))
    assert listed.returncode == 0, listed.stderr
    (tmp_path / "b.db").hardlink_to(first)
    for name in ("a.db", "b.db", "link.db"):
        listed = cli("run", "list", cwd=tmp_path, env=clean_env(DATABASE_URL=f"sqlite:///{name}"))
        assert listed.returncode == 2, listed.stdout + listed.stderr
        assert f"{tmp_path / name} has 2 hard links" in listed.stderr
        assert "Traceback" not in listed.stderr


def test_a_nearer_dotenv_without_database_url_does_not_hide_the_projects_database(
    tmp_path: Path,
) -> None:
    """Another tool's ``web/.env`` is the nearest ``.env`` from ``web/``: it named no
    database, so ``autopack`` there used (or created) the default ``autopack.db`` at the
    root while the project's ``.env`` names ``data/project.db``: a drain started in
    ``web/`` and a server at the root used two databases, without a word."""
    root, _ = _repo(tmp_path)
    (root / "data").mkdir()
    (root / ".env").write_text("DATABASE_URL=sqlite:///data/project.db\n")
    _seed(root, clean_env())
    web = root / "web"
    web.mkdir()
    (web / ".env").write_text("VITE_API_URL=http://127.0.0.1:5173\n")

    for args in (
        ["run", "create", str(run_file(web, [phase("p1", ["pkg/a.py"])]))],
        ["run", "list"],
    ):
        result = cli(*args, cwd=web, env=clean_env())
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{web / '.env'} applies here" in result.stderr
        assert f"hides {root / '.env'}, which does" in result.stderr
    assert not (root / "autopack.db").exists()

    named = cli(
        "run", "list", "--json", cwd=web, env=clean_env(DATABASE_URL="sqlite:///../data/project.db")
    )
    assert named.returncode == 0, named.stderr
    (web / ".env").write_text("DATABASE_URL=sqlite:///../data/project.db\n")
    listed = cli("run", "list", "--json", cwd=web, env=clean_env())
    assert [run["run_id"] for run in json.loads(listed.stdout)["items"]] == [RUN]


@pytest.mark.parametrize(
    "url", ["sqlite://localhost/autopack.db", "sqlite://me:s3cretpassw0rd@host/x.db"]
)
def test_a_sqlite_url_with_a_host_is_an_error_not_a_traceback(url: str, tmp_path: Path) -> None:
    listed = cli("run", "list", cwd=tmp_path, env=clean_env(DATABASE_URL=url))
    assert listed.returncode == 2, listed.stdout + listed.stderr
    assert "names a file on this machine" in listed.stderr and "Traceback" not in listed.stderr
    assert "s3cretpassw0rd" not in listed.stderr


def test_one_sqlite_file_under_two_paths_is_one_database(tmp_path: Path) -> None:
    """A bind mount (the server in a container at ``/data``, the CLI on the host in the
    project) shows one file under two paths: the identity hashed the real path, so the
    CLI was told the server used another database, and refused it."""
    probe = subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode(errors='replace')}")
    host, mounted = tmp_path / "host", tmp_path / "data"
    host.mkdir()
    mounted.mkdir()
    env = clean_env(DATABASE_URL=f"sqlite:///{host / 'autopack.db'}")
    _seed(tmp_path, env)
    bind = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    prefix = ["unshare", "-r", "-m", "sh", "-c", bind, "sh", str(host), str(mounted)]
    server_env = clean_env(DATABASE_URL=f"sqlite:///{mounted / 'autopack.db'}")
    with Server(server_env, cwd=tmp_path, prefix=prefix) as server:
        health = server.wait_healthy()
        assert health["database"]["public_url"] == f"sqlite:///{mounted / 'autopack.db'}"
        listed = cli(
            "run", "list", "--json", cwd=tmp_path, env={**env, "AUTOPACK_API_URL": server.url}
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert [run["run_id"] for run in json.loads(listed.stdout)["items"]] == [RUN]


@pytest.mark.parametrize("where", ["demo", "project"])
def test_from_outside_any_project_the_databases_at_home_are_named(
    where: str, tmp_path: Path
) -> None:
    """`autopack run list` from `/` (or `/tmp`) said "No other Autopack database is in
    sight" while ~/project/autopack.db (or `make demo`'s ~/project/demo/autopack.db)
    held the user's runs: nothing above `/` or one directory below it is a project."""
    home = tmp_path / "home"
    made = home / "project" / ("demo" if where == "demo" else "")
    made.mkdir(parents=True)
    init = cli("db", "init", cwd=made, env=clean_env(DATABASE_URL="sqlite:///autopack.db"))
    assert init.returncode == 0, init.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for cwd in (Path("/"), outside):
        result = cli("run", "list", cwd=cwd, env=clean_env(HOME=str(home)))
        assert result.returncode == 2, result.stderr
        said = " ".join(result.stderr.split())
        assert f"sqlite:///{made / 'autopack.db'}" in said, said
        assert "No other Autopack database is in sight" not in said
    assert not Path("/autopack.db").exists() and not (outside / "autopack.db").exists()


def test_a_cache_dir_with_a_dotdot_after_a_symlink_is_where_the_system_finds_it(
    tmp_path: Path,
) -> None:
    """``AUTOPACK_CACHE_DIR=lnk/../cache`` was made absolute as text (``./cache``), while
    every other tool (git, a person's shell) finds ``data/cache``: resolved as the
    database's path is, in one place."""
    (tmp_path / "data" / "real").mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(tmp_path / "data" / "real")
    shown = cli(
        "config", "show", "--json", cwd=tmp_path, env=clean_env(AUTOPACK_CACHE_DIR="lnk/../cache")
    )
    assert shown.returncode == 0, shown.stderr
    [cache] = [s for s in json.loads(shown.stdout) if s["name"] == "AUTOPACK_CACHE_DIR"]
    assert cache["value"] == str(tmp_path / "data" / "cache"), cache
