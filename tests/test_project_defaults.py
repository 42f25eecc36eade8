"""The project's defaults met by a real shell: a drain started from a git hook, a workspace
left where an older default put it. Real drains, real git, real processes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from tests.executor_support import (
    cassette,
    cli_drain,
    create_run,
    drain,
    env_for,
    files,
    git,
    line,
    on_branch,
    phase,
    repository,
    run_file,
)
from tests.support import clean_env, cli, free_port

RUN = "exec-run"


def _drain_args(tape: Path, *extra: str) -> list[str]:
    return ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape), *extra]


def _two_phase_run(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A run of two phases in a database under ``tmp_path``, and the cassette that
    completes both: the environment to drain it with and the cassette."""
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}")
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"])]), env, tmp_path
    )
    tape = cassette(
        tmp_path,
        [line("p1", 1, files(a_py="A = 1\n")), line("p2", 1, files(b_py="B = 2\n"))],
    )
    return env, tape


def test_git_dir_inherited_from_a_hook_leaves_the_users_repository_alone(
    tmp_path: Path,
) -> None:
    """A drain run from a git hook (or a shell with GIT_DIR exported) inherits GIT_DIR:
    every git command of the drain acted on that repository, detaching its HEAD and
    rewriting its work tree to the run's files."""
    project = repository(tmp_path / "project", {"README": "mine\n"})
    ws = repository(tmp_path / "ws")
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    create_run(
        run_file(
            tmp_path,
            [phase("p1", ["pkg/a.py"], checks=['test -z "$GIT_DIR$GIT_WORK_TREE$GIT_INDEX_FILE"'])],
        ),
        env_for(url),
        tmp_path,
    )
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    env = env_for(
        url,
        GIT_DIR=str(project / ".git"),
        GIT_WORK_TREE=str(project),
        GIT_INDEX_FILE=str(project / ".git" / "index"),
    )
    done = drain(*_drain_args(tape, "--workspace", str(ws)), env=env, cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["run_state"] == "DONE_SUCCESS"
    assert on_branch(ws, "pkg/a.py") == "A = 1\n"
    assert git("symbolic-ref", "HEAD", cwd=project) == "refs/heads/main"
    assert git("status", "--porcelain", cwd=project) == ""
    assert git("branch", "--list", cwd=project) == "* main"


def test_a_workspace_the_old_default_made_is_named_not_abandoned(tmp_path: Path) -> None:
    """The default workspace moved from ``./autopack-workspaces/RUN`` to the project's root.
    A run drained from a subdirectory before had its code in ``sub/autopack-workspaces``;
    the next drain made an empty repository at the root, started the branch there without
    the completed phase and reported the run's code in it."""
    project = repository(tmp_path / "project")
    sub = project / "sub"
    sub.mkdir()
    env, tape = _two_phase_run(tmp_path)
    old = sub / "autopack-workspaces" / RUN
    first = drain(
        "phase",
        "--phase-id",
        "p1",
        *_drain_args(tape, "--workspace", f"autopack-workspaces/{RUN}")[1:],
        env={**env, "AUTOPACK_CACHE_DIR": str(tmp_path / "older")},  # it remembered nothing
        cwd=sub,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert on_branch(old, "pkg/a.py") == "A = 1\n"

    new = project / "autopack-workspaces" / RUN
    for args in (["drain", *_drain_args(tape)], ["run", "export", RUN, str(tmp_path / "out")]):
        refused = cli(*args, cwd=sub, env=env)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "Traceback" not in refused.stderr
        message = " ".join(refused.stderr.split())
        assert f"is not in {new}" in message
        assert f"--workspace {old}" in message
        assert not new.exists()
    assert on_branch(old, "pkg/b.py") is None


def test_autopack_inside_a_runs_workspace_means_the_projects_database(tmp_path: Path) -> None:
    """``autopack-workspaces/RUN`` is a repository of its own inside the project: a command
    run there (by hand, or by a phase's check) resolved the default database against it
    and created or looked for ``autopack.db`` inside the run's code."""
    env = clean_env(AUTOPACK_DEFAULT_API_PORT=str(free_port()))
    for project in (repository(tmp_path / "project"), tmp_path / "plain"):
        project.mkdir(exist_ok=True)
        assert cli("db", "init", cwd=project, env=env).returncode == 0
        workspace = repository(project / "autopack-workspaces" / RUN)
        (workspace / "pkg").mkdir()
        shown = cli("config", "show", cwd=workspace / "pkg", env=env)
        assert shown.returncode == 0, shown.stderr
        assert f"sqlite:///{project / 'autopack.db'} " in shown.stdout
        where = "git repository you are in" if project.name == "project" else "run workspace"
        assert where in " ".join(shown.stdout.split())
        listed = cli("run", "list", cwd=workspace, env=env)
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert not (workspace / "autopack.db").exists()


def test_autopack_in_an_attempts_worktree_opens_no_default_database(tmp_path: Path) -> None:
    """A check runs in a git worktree under the cache directory, without DATABASE_URL:
    ``autopack db init`` or ``run create`` there made an ``autopack.db`` of its own."""
    cache = tmp_path / "cache"
    repo = repository(cache / "repos" / "r")
    worktree = cache / "worktrees" / "run-1" / "slot"
    git("worktree", "add", "--detach", str(worktree), cwd=repo)
    env = clean_env(AUTOPACK_DEFAULT_API_PORT=str(free_port()), AUTOPACK_CACHE_DIR=str(cache))
    made = cli("db", "init", cwd=worktree, env=env)
    assert made.returncode == 2, made.stderr[-2000:]
    assert "Traceback" not in made.stderr
    assert "DATABASE_URL" in made.stderr and str(cache) in made.stderr
    assert not (worktree / "autopack.db").exists()
    named = cli(
        "db", "init", cwd=worktree, env={**env, "DATABASE_URL": f"sqlite:///{tmp_path}/a.db"}
    )
    assert named.returncode == 0, named.stderr[-2000:]


def test_autopack_in_a_bare_repository_makes_no_database_among_its_refs(tmp_path: Path) -> None:
    """In a bare repository (a server's, a mirror) there is no checkout, so the working
    directory was the project root: ``run create`` in ``repo.git/refs`` put autopack.db
    among the refs, ``db init`` in ``repo.git`` beside HEAD."""
    bare = tmp_path / "repo.git"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    spec = run_file(tmp_path, [phase("p1", ["pkg/a.py"])])
    env = clean_env(AUTOPACK_DEFAULT_API_PORT=str(free_port()))
    for where, command in ((bare, ("db", "init")), (bare / "refs", ("run", "create", str(spec)))):
        made = cli(*command, cwd=where, env=env)
        assert made.returncode == 2, made.stderr[-2000:]
        assert "Traceback" not in made.stderr
        assert f"inside the git directory {bare}" in made.stderr, made.stderr
        assert "--database-url" in made.stderr
        assert not (where / "autopack.db").exists()
    named = cli("db", "init", cwd=bare, env={**env, "DATABASE_URL": f"sqlite:///{tmp_path}/a.db"})
    assert named.returncode == 0, named.stderr[-2000:]
    assert not list(bare.rglob("autopack.db"))


def test_the_workspace_a_drain_was_given_is_found_again_without_the_flag(
    tmp_path: Path,
) -> None:
    """``drain --workspace DIR`` kept the run's branch in DIR, but nothing remembered it:
    ``autopack run export RUN OUT`` (as the README and the demo say it) and the next drain,
    from the project or anywhere else, looked only in the default workspace and refused,
    asking for the same ``--workspace`` again."""
    project = repository(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ws = tmp_path / "ws"
    env, tape = _two_phase_run(tmp_path)
    first = drain(
        "phase",
        "--phase-id",
        "p1",
        *_drain_args(tape, "--workspace", str(ws))[1:],
        env=env,
        cwd=project,
    )
    assert first.returncode == 0, first.stderr[-3000:]

    exported = cli("run", "export", RUN, str(tmp_path / "out"), cwd=project, env=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "out/pkg/a.py").read_text() == "A = 1\n"
    assert str(ws) in exported.stdout

    rest = drain(*_drain_args(tape), env=env, cwd=elsewhere)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert json.loads(rest.stdout)["repository"] == str(ws)
    assert on_branch(ws, "pkg/a.py") == "A = 1\n" and on_branch(ws, "pkg/b.py") == "B = 2\n"
    assert not (project / "autopack-workspaces").exists()
    assert not (elsewhere / "autopack-workspaces").exists()


def test_the_commands_a_drain_suggests_work_from_another_directory(tmp_path: Path) -> None:
    """A drain on the project's default database printed ``autopack run export RUN DIR
    --workspace WS`` and nothing naming that database: typed anywhere but in the project
    (the demo's ``demo/autopack.db`` from its root, as the README says), it exited 2 with
    "no database". The suggested command now names the database too, and works there."""
    project = repository(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = env_for("sqlite:///autopack.db")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, project)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    del env["DATABASE_URL"]  # the project's default: autopack.db at its root

    drained = cli_drain(*_drain_args(tape), env=env, cwd=project)
    assert drained.returncode == 0, drained.stderr[-3000:]
    suggested = re.search(r"`(autopack run export [^`]+)`", drained.stdout)
    assert suggested, drained.stdout[-2000:]

    argv = shlex.split(suggested.group(1).replace(" DIR ", f" {tmp_path / 'out'} "))[1:]
    exported = cli(*argv, cwd=elsewhere, env=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "out/pkg/a.py").read_text() == "A = 1\n"
