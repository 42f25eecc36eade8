"""The control plane from the command line and the legacy script, as users type them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from rich.console import Console

from autopack.cli.run_cmd import run_tree
from autopack.contract import ApprovalIn, ResultIn, RunView
from autopack.control import approvals, results, runs
from autopack.db import open_database
from autopack.dburl import resolve_database_url
from autopack.errors import Conflict
from autopack.rundef import parse_run_definition
from autopack.runfile import load_run_file
from autopack.states import PhaseState
from tests.cp_support import claimed, create, definition
from tests.support import Server, clean_env, cli, script


def shown(run: RunView) -> str:
    """`run show`'s text, rendered in-process (no CLI and server to start)."""
    console = Console(record=True, width=10_000)
    console.print(run_tree(run))
    return console.export_text()


TELEMETRY_PHASES = [
    "telemetry-p1-string-util",
    "telemetry-p2-number-util",
    "telemetry-p3-list-util",
    "telemetry-p4-date-util",
    "telemetry-p5-dict-util",
    "telemetry-p6-string-tests",
    "telemetry-p7-number-tests",
    "telemetry-p8-list-dict-tests",
    "telemetry-p9-utils-docs",
    "telemetry-p10-utils-package",
]


def test_legacy_script_then_a_server_on_the_same_url_shows_ten_queued_phases(
    tmp_path: Path,
) -> None:
    env = clean_env(DATABASE_URL="sqlite:///autopack_telemetry_seed.db")
    first = script("create_telemetry_collection_run.py", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "created run telemetry-collection-v4" in first.stdout
    assert (tmp_path / "autopack_telemetry_seed.db").is_file()
    with Server(env, cwd=tmp_path) as server:
        response = httpx.get(f"{server.url}/runs/telemetry-collection-v4")
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["state"] == "QUEUED"
    assert [tier["tier_id"] for tier in run["tiers"]] == ["T1"]
    phases = run["tiers"][0]["phases"]
    assert [p["phase_id"] for p in phases] == TELEMETRY_PHASES
    assert {p["state"] for p in phases} == {"QUEUED"}
    again = script("create_telemetry_collection_run.py", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout and "nothing to do" in again.stdout


def test_legacy_script_on_either_backend_initialises_and_is_repeatable(
    database_url: str, tmp_path: Path
) -> None:
    env = clean_env(DATABASE_URL=database_url)
    for _ in range(2):
        result = script("create_telemetry_collection_run.py", "--json", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        run = json.loads(result.stdout)
        assert run["run_id"] == "telemetry-collection-v4" and run["counts"] == {"QUEUED": 10}
    database = open_database(
        resolve_database_url(database_url), role="test", log=False, create=True
    )
    try:
        assert runs.list_runs(database).total == 1
    finally:
        database.close()


def test_a_run_on_the_branch_of_an_active_run_is_refused_naming_the_branch(
    database_url: str, tmp_path: Path
) -> None:
    """The refusal of a second run on an active run's branch got the hint for a run id
    that exists ("change run_id", "run requeue"), which changes nothing about the branch."""
    env = clean_env(DATABASE_URL=database_url)
    for run_id in ("first-run", "second-run"):
        body = {**definition(run_id), "repository": "/srv/git/shared.git", "branch": "shared"}
        (tmp_path / f"{run_id}.yaml").write_text(yaml.safe_dump(body))
    first = cli("run", "create", str(tmp_path / "first-run.yaml"), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    second = cli("run", "create", str(tmp_path / "second-run.yaml"), cwd=tmp_path, env=env)
    assert second.returncode == 2, second.stderr
    assert "branch: run 'first-run' (QUEUED)" in second.stderr
    assert "change `branch` in" in second.stderr and "change run_id" not in second.stderr


def test_a_symlink_or_relative_spelling_of_a_busy_repository_is_refused(tmp_path: Path) -> None:
    """`repository: ../code` in one run file and `../../link` (a symlink to code), `link/.git`
    or `file://…/link` in others were other repositories to the branch check: only the
    client can resolve its paths, so reading the run file resolves them before sending
    (once through the CLI, the rest as `run create` reads a file)."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    subprocess.run(["git", "init", "-q", str(tmp_path / "code")], check=True)  # has .git
    (tmp_path / "link").symlink_to(tmp_path / "code")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spellings = {
        "a/first": "../code",
        "b/c/rel": "../../link/",
        "abs": str(tmp_path / "link" / ".git"),
        "url": f"file://{tmp_path / 'link'}",
    }
    for name, repository in spellings.items():
        file = tmp_path / f"{name}.yaml"
        file.parent.mkdir(parents=True, exist_ok=True)
        body = {**definition(file.stem), "repository": repository, "branch": "shared"}
        file.write_text(yaml.safe_dump(body))
    database = open_database(resolve_database_url(url), role="test", log=False, create=True)
    try:
        runs.create_run(database, load_run_file(tmp_path / "a/first.yaml"))
        for name in ("abs", "url"):
            with pytest.raises(Conflict, match="branch: run 'first' "):
                runs.create_run(database, load_run_file(tmp_path / f"{name}.yaml"))
    finally:
        database.close()
    refused = cli(
        "run", "create", "../b/c/rel.yaml", cwd=elsewhere, env=clean_env(DATABASE_URL=url)
    )
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    said = " ".join(refused.stderr.split())
    assert "branch: run 'first' (QUEUED)" in said and "change `branch` in" in said, said


def test_a_repositorys_password_is_not_printed_where_the_branch_is_said(tmp_path: Path) -> None:
    """A run's `repository` may hold a URL's password for its executors: `run create`
    printed it whole, and so would `run show` saying where the branch lives."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    repository = "https://bot:hunter2-pass@git.example/o/x.git"
    body = {**definition("keyed"), "repository": repository, "branch": "shared"}
    (tmp_path / "keyed.yaml").write_text(yaml.safe_dump(body))
    created = cli("run", "create", "keyed.yaml", cwd=tmp_path, env=clean_env(DATABASE_URL=url))
    assert created.returncode == 0, created
    assert "hunter2" not in created.stdout + created.stderr, created
    database = open_database(resolve_database_url(url), role="test", log=False, create=True)
    try:
        text = shown(runs.get_run(database, "keyed"))
    finally:
        database.close()
    assert "branch shared of https://bot:[REDACTED]@git.example/o/x.git" in text, text


def test_a_drain_naming_a_busy_repository_is_refused_before_it_moves_a_branch(
    tmp_path: Path,
) -> None:
    """Creation checks only the run's `repository`: a run naming none (or another), drained
    with `--workspace`/`--repo` naming the repository of an active run on the same branch,
    moved that run's branch too and one run's commits ended on no branch. The drain asks
    the server first (its path resolved here: `link` is `code`) and exits 2 naming it."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    (tmp_path / "code").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "code")
    database = open_database(resolve_database_url(url), role="test", log=False, create=True)
    try:
        for run_id, repository in (("busy", str(tmp_path / "code")), ("loose", None)):
            body = {**definition(run_id), "repository": repository, "branch": "shared"}
            runs.create_run(database, parse_run_definition(body))
    finally:
        database.close()
    env = clean_env(DATABASE_URL=url, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    drained = cli("drain", "run", "--run-id", "loose", "--workspace", "link", cwd=tmp_path, env=env)
    assert drained.returncode == 2, drained.stderr[-2000:]
    said = " ".join(drained.stderr.split())
    assert f"--workspace {tmp_path / 'code'}: branch: run 'busy' (QUEUED)" in said, said
    assert "Traceback" not in drained.stderr
    database = open_database(resolve_database_url(url), role="test", log=False, create=True)
    try:  # where a run's branch lives, so such a 409 is no riddle: `run show` said nowhere
        text = shown(runs.check_branch(database, "loose", str(tmp_path / "elsewhere")))
    finally:
        database.close()
    assert f"branch shared, last drained in {tmp_path / 'elsewhere'}" in text, text


def test_run_commands_locally_and_over_the_api(database_url: str, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=database_url)
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(definition("cli-run", [("T1", ["a", "b"])])))
    created = cli("run", "create", str(run_file), cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    assert "created run cli-run: 1 tier(s), 2 phase(s), QUEUED" in created.stdout
    duplicate = cli("run", "create", str(run_file), cwd=tmp_path, env=env)
    assert duplicate.returncode == 2  # bad input, not a failed phase; and how to go on
    assert "run 'cli-run' already exists" in duplicate.stderr
    assert f"change run_id in {run_file}" in duplicate.stderr
    assert "autopack run requeue cli-run PHASE" in duplicate.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(definition("bad", [("T1", [{"phase_id": "a", "max_attempts": "x"}])]))
    )
    refused = cli("run", "create", str(bad), cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert "tiers[0](T1).phases[0](a).max_attempts" in refused.stderr
    assert "'x'" in refused.stderr

    local = cli("run", "show", "cli-run", "--json", cwd=tmp_path, env=env)
    assert local.returncode == 0, local.stderr
    with Server(env, cwd=tmp_path) as server:
        remote = cli(
            "--api-url", server.url, "run", "show", "cli-run", "--json", cwd=tmp_path, env=env
        )
        over_http = httpx.get(f"{server.url}/runs/cli-run").json()
        tree = cli("--api-url", server.url, "run", "show", "cli-run", cwd=tmp_path, env=env)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(local.stdout) == json.loads(remote.stdout) == over_http
    assert tree.returncode == 0
    assert "cli-run" in tree.stdout and "T1" in tree.stdout and "a QUEUED" in tree.stdout


def test_approval_commands_locally_and_over_the_api(database_url: str, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=database_url)
    database = open_database(
        resolve_database_url(database_url), role="test", log=False, create=True
    )
    try:
        create(database, tiers=[("T1", ["a", "b"])])
        ids = []
        for _ in range(2):
            leased = claimed(database)
            asked = approvals.request_approval(
                database,
                "r",
                leased.phase_id,
                ApprovalIn(
                    lease_token=leased.lease_token, reason=f"delete files of {leased.phase_id}"
                ),
            )
            ids.append(asked.approval_id)
        listed = cli("approvals", "list", "--json", cwd=tmp_path, env=env)
        assert listed.returncode == 0, listed.stderr
        assert [a["id"] for a in json.loads(listed.stdout)["items"]] == ids
        approved = cli(
            "approvals",
            "approve",
            str(ids[0]),
            "--responder",
            "alice",
            "--note",
            "fine",
            cwd=tmp_path,
            env=env,
        )
        assert approved.returncode == 0, approved.stderr
        assert f"approval {ids[0]} approved: phase r/a is QUEUED" in approved.stdout
        with Server(env, cwd=tmp_path) as server:
            rejected = cli(
                "--api-url",
                server.url,
                "approvals",
                "reject",
                str(ids[1]),
                "--responder",
                "bob",
                "--json",
                cwd=tmp_path,
                env=env,
            )
            late = cli(
                "--api-url", server.url, "approvals", "approve", str(ids[1]), cwd=tmp_path, env=env
            )
        assert rejected.returncode == 0, rejected.stderr
        decided = json.loads(rejected.stdout)
        assert (decided["status"], decided["responder"], decided["phase_state"]) == (
            "rejected",
            "bob",
            "FAILED",
        )
        assert late.returncode == 1 and "cannot go from rejected" in late.stderr
        phases = {p.phase_id: p for p in runs.get_run(database, "r").tiers[0].phases}
        assert (phases["a"].state, phases["b"].state) == ("QUEUED", "FAILED")
    finally:
        database.close()


def test_no_approvals_is_said_not_shown_as_an_empty_table(tmp_path: Path) -> None:
    """`autopack approvals list` with nothing waiting printed an empty table and no word."""
    env = clean_env(DATABASE_URL="sqlite:///here.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    listed = cli("approvals", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "no pending approvals (`--status all` lists every one)"
    every = cli("approvals", "list", "--status", "all", "--run-id", "r", cwd=tmp_path, env=env)
    assert every.stdout.strip() == "no approvals for run r"


@pytest.mark.parametrize(
    "command",
    [
        ["run", "show", "ghost"],
        ["run", "phase", "ghost", "a"],
        # said "no telemetry recorded for run ghost; drain with --telemetry", exit 0
        ["telemetry", "report", "--run", "ghost"],
        ["telemetry", "report", "--run", "ghost", "--json"],
    ],
)
def test_unknown_run_names_the_database(command: list[str], tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL="sqlite:///here.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    result = cli(*command, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "run 'ghost' not found in database" in result.stderr
    assert str(tmp_path / "here.db") in result.stderr
    # the in-process server's own address (http://autopack) is nobody's to look up
    assert "http://autopack" not in result.stderr and "API (in-process" in result.stderr


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (["run", "show", ""], "run id ''"),
        (["run", "show", "."], "run id '.'"),
        (["run", "cancel", ".."], "run id '..'"),
        (["run", "export", "..", "out"], "run id '..'"),
        (["run", "phase", "r", ""], "phase id ''"),
        (["run", "requeue", "r", ".."], "phase id '..'"),
        (["drain", "run", "--run-id", ""], "run id ''"),
    ],
)
def test_an_id_that_cannot_exist_is_exit_2_naming_it(
    command: list[str], named: str, tmp_path: Path
) -> None:
    """As URL path segments, '' and '..' reached another route or none: `run show ''` said
    "Invalid JSON: EOF", `run cancel ..` "no such endpoint: POST /cancel" (exit 1)."""
    env = clean_env(DATABASE_URL="sqlite:///here.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    result = cli(*command, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert f"{named} is not an id" in result.stderr and "Traceback" not in result.stderr


def test_phase_requeue_cancel_and_list_commands(database_url: str, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=database_url)
    database = open_database(
        resolve_database_url(database_url), role="test", log=False, create=True
    )
    try:
        create(database, tiers=[("T1", [{"phase_id": "a", "max_attempts": 1}, "b"])])
        leased = claimed(database)
        results.post_result(
            database,
            "r",
            "a",
            ResultIn(
                lease_token=leased.lease_token,
                outcome=PhaseState.FAILED,
                stop_reason="check_failed",
                error="AssertionError: boom",
            ),
        )
    finally:
        database.close()
    detail = cli("run", "phase", "r", "a", "--json", cwd=tmp_path, env=env)
    assert detail.returncode == 0, detail.stderr
    phase = json.loads(detail.stdout)
    assert (phase["state"], phase["attempts"]) == ("FAILED", 1)
    assert phase["history"][0]["error"] == "AssertionError: boom"
    requeued = cli("run", "requeue", "r", "a", "--reason", "flaky", cwd=tmp_path, env=env)
    assert requeued.returncode == 0, requeued.stderr
    assert "r/a is QUEUED (1 attempts left)" in requeued.stdout
    # the counter holds the requeue too: "attempts 2/1" read as none left
    for view in (("run", "show", "r"), ("run", "phase", "r", "a")):
        shown = cli(*view, cwd=tmp_path, env=env)
        assert "attempts 2, 1 left" in shown.stdout, shown.stdout
    cancelled = cli("run", "cancel", "r", "--reason", "enough", cwd=tmp_path, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "run r is DONE_CANCELLED" in cancelled.stdout
    listed = cli("run", "list", "--state", "DONE_CANCELLED", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    (item,) = json.loads(listed.stdout)["items"]
    assert (item["run_id"], item["failure_reason"]) == ("r", "run cancelled: enough")


def test_an_unknown_phase_lists_the_runs_phases(tmp_path: Path) -> None:
    """ "phase 'p-3' not found in run 'r'" alone sent the user to `run show` to find the
    id they mistyped; the run's phase ids (in claim order) are in the message."""
    database_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    database = open_database(database_url, role="test", log=False, create=True)
    try:
        create(database, tiers=[("T1", ["p1", "p2"]), ("T2", ["p3"])])
    finally:
        database.close()
    env = clean_env(DATABASE_URL=database_url)
    for command, code in (
        (["run", "phase", "r", "p-3"], 1),
        (["run", "requeue", "r", "p-3"], 1),
        (["drain", "phase", "--run-id", "r", "--phase-id", "p-3"], 2),
    ):
        result = cli(*command, cwd=tmp_path, env=env)
        assert result.returncode == code, result.stderr
        message = " ".join(result.stderr.split())
        assert "phase 'p-3' not found in run 'r'" in message
        assert "its phases: p1, p2, p3" in message, message
        assert "run create FILE" not in message  # the run exists: creating one is no fix


def test_a_complete_phase_is_requeued_with_the_flag_its_refusal_names(tmp_path: Path) -> None:
    """Requeueing a COMPLETE phase was refused with "complete=true; `autopack probe
    --force` does": an API field the CLI had no flag for, and a probe that refuses to
    run without telemetry. `run requeue --complete` asks for it, and the refusal says so."""
    database_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = clean_env(DATABASE_URL=database_url)
    database = open_database(database_url, role="test", log=False, create=True)
    try:
        create(database, tiers=[("T1", ["a"])])
        leased = claimed(database)
        done = ResultIn(
            lease_token=leased.lease_token, outcome=PhaseState.COMPLETE, stop_reason="completed"
        )
        results.post_result(database, "r", "a", done)
    finally:
        database.close()
    refused = cli("run", "requeue", "r", "a", cwd=tmp_path, env=env)
    assert refused.returncode == 1  # a conflict with the phase's state (409)
    assert "`autopack run requeue r a --complete`" in " ".join(refused.stderr.split())
    requeued = cli("run", "requeue", "r", "a", "--complete", cwd=tmp_path, env=env)
    assert requeued.returncode == 0, requeued.stderr
    assert "r/a is QUEUED" in requeued.stdout
    shown = json.loads(cli("run", "show", "r", "--json", cwd=tmp_path, env=env).stdout)
    assert shown["state"] == "RUNNING"


def test_a_run_files_relative_repository_is_next_to_the_file_urls_as_given(
    tmp_path: Path,
) -> None:
    """`repository: ../code` was stored as given, so each executor cloned whatever
    ../code meant from its own working directory. Created from elsewhere, it is stored
    absolute, next to the run file; URLs (scheme://, scp-like) are left alone."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'autopack.db'}")
    files = tmp_path / "project" / "runs"
    files.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    given = {
        "rel": ("../code", str(tmp_path / "project" / "code")),
        "dot": ("./repo.git", str(files / "repo.git")),
        "url": ("https://git.example/org/code.git", "https://git.example/org/code.git"),
        "scp": ("git@git.example:org/code.git", "git@git.example:org/code.git"),
        "file": ("file:///srv/code.git", "file:///srv/code.git"),
        "abs": (str(tmp_path / "abs"), str(tmp_path / "abs")),
    }
    said: dict[str, str] = {}
    for run_id, (repository, _) in given.items():
        body = {**definition(run_id, [("T1", ["a"])]), "repository": repository}
        (files / f"{run_id}.yaml").write_text(yaml.safe_dump(body))
        created = cli("run", "create", f"../project/runs/{run_id}.yaml", cwd=elsewhere, env=env)
        assert created.returncode == 0, created.stderr
        said[run_id] = created.stdout
    shown = cli("run", "show", "rel", "--json", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["repository"] == given["rel"][1]
    with Server(env, cwd=tmp_path) as server:
        for run_id, (_, stored) in given.items():
            assert httpx.get(f"{server.url}/runs/{run_id}").json()["repository"] == stored
        for relative in ("../code", "code", "~/code"):  # over HTTP, relative to nothing
            body = {**definition("over-http", [("T1", ["a"])]), "repository": relative}
            refused = httpx.post(f"{server.url}/runs", json=body)
            assert refused.status_code == 422, refused.text
            assert "repository" in refused.text and "relative path" in refused.text
    for run_id, (_, stored) in given.items():  # and `run create` says where it is
        assert f"repository {stored}" in said[run_id], said[run_id]


def test_a_relative_repository_is_next_to_the_real_file_and_a_pipe_has_none(
    tmp_path: Path,
) -> None:
    """`run create <(cat run.yaml)` stored `./code` as /dev/fd/code, `run create
    /dev/stdin < run.yaml` as /dev/code; a symlinked run file's `./code` was next to the
    link, not the file it was written in; `~nobody-here/code` ended in a traceback."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'autopack.db'}")
    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir()
    links.mkdir()

    def create(run_id: str, repository: str, how: str) -> subprocess.CompletedProcess[str]:
        body = {**definition(run_id, [("T1", ["a"])]), "repository": repository}
        (real / "run.yaml").write_text(yaml.safe_dump(body))
        command = f"{shlex.quote(sys.executable)} -m autopack run create {how}"
        return subprocess.run(
            ["bash", "-c", command],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )

    (links / "run.yaml").symlink_to(real / "run.yaml")
    for run_id, how in (("linked", "links/run.yaml"), ("stdin", "/dev/stdin < real/run.yaml")):
        created = create(run_id, "./code", how)
        assert created.returncode == 0, created.stderr[-2000:]
        assert f"repository {real / 'code'}" in created.stdout
    for repository, how, why in (
        ("./code", "<(cat real/run.yaml)", "relative path"),
        ("~nobody-here/code", "real/run.yaml", "no such user"),
    ):
        refused = create("refused", repository, how)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr
        assert f"repository: {repository!r}" in refused.stderr and why in refused.stderr


def test_a_named_pipe_as_run_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    """`run create run.yaml` where run.yaml is a FIFO nothing writes to waited forever
    (opening a FIFO blocks until a writer comes). It is refused, exit 2 naming it; a pipe
    the shell hands over (`cat run.yaml | autopack run create /dev/stdin`) is still read."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'autopack.db'}")
    fifo = tmp_path / "run.yaml"
    os.mkfifo(fifo)
    refused = cli("run", "create", str(fifo), cwd=tmp_path, env=env, timeout=30)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2, said[-2000:]
    assert "Traceback" not in said
    assert f"run file {fifo} is a named pipe (FIFO)" in said, said[-2000:]
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(definition("piped", [("T1", ["a"])])))
    piped = subprocess.run(
        [
            "bash",
            "-c",
            f"cat real.yaml | {shlex.quote(sys.executable)} -m autopack run create /dev/stdin",
        ],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert "created run piped" in piped.stdout


NOT_A_REPOSITORY = {
    "C:\\work\\code": "Windows path",
    "D:/code": "Windows path",
    "file://code": "a file URL holds an absolute path",
    "file://code/repo": "a file URL holds an absolute path",
    "file:code": "is not a file URL",
    "https://": "names no host",
    "ssh:///org/code.git": "names no host",
    "git-host:": "names no path on host",
    "://code": "neither a URL",
}


def test_a_repository_git_would_misread_is_refused_naming_the_field(tmp_path: Path) -> None:
    """`repository: C:\\work\\code` was stored as an ssh host ``C``, `file://code` as a
    file URL with no path (git ignores its host): the run was created, and every drain
    failed in `git clone` with "no path specified" or an ssh error. Refused at the run
    file (exit 2), over HTTP (422) and as a drain's `--repo` (exit 2), each naming the
    field, the value and what to write instead."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'autopack.db'}")
    for number, (repository, why) in enumerate(NOT_A_REPOSITORY.items()):
        body = {**definition(f"r{number}", [("T1", ["a"])]), "repository": repository}
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(body))
        refused = cli("run", "create", "run.yaml", cwd=tmp_path, env=env)
        assert refused.returncode == 2, (repository, refused.stderr[-2000:])
        said = " ".join(refused.stderr.split())
        assert f"repository: {repository!r}" in said and why in said, said
    assert not (tmp_path / "autopack.db").exists()  # refused before anything was created
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    with Server(env, cwd=tmp_path) as server:
        for repository, why in NOT_A_REPOSITORY.items():
            body = {**definition("over-http", [("T1", ["a"])]), "repository": repository}
            answer = httpx.post(f"{server.url}/runs", json=body)
            assert answer.status_code == 422 and why in answer.text, answer.text
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(definition("r", [("T1", ["a"])])))
    assert cli("run", "create", "run.yaml", cwd=tmp_path, env=env).returncode == 0
    drained = cli(
        *("drain", "run", "--run-id", "r", "--repo", "file://code"),
        cwd=tmp_path,
        env={**env, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
    )
    assert drained.returncode == 2, drained.stderr[-2000:]
    said = " ".join(drained.stderr.split())
    assert "--repo 'file://code': a file URL holds an absolute path" in said, said
    assert "Traceback" not in drained.stderr


def test_approvals_page_past_500_and_the_cli_says_how_to_see_the_rest(tmp_path: Path) -> None:
    """The list stopped at 500 with no sign of the rest: 501 pending approvals are one
    page of 500 plus a hint, every one reachable by offset, counted in full by /metrics,
    and bounds outside a page are 422s naming the parameter."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = clean_env(DATABASE_URL=url)
    database = open_database(resolve_database_url(url), role="test", log=False, create=True)
    try:
        phases = [f"p{i}" for i in range(501)]
        create(database, tiers=[("T1", phases)], budgets={"token_cap": None})
        for _ in phases:
            leased = claimed(database)
            request = ApprovalIn(lease_token=leased.lease_token, reason="delete a file")
            approvals.request_approval(database, "r", leased.phase_id, request)
    finally:
        database.close()
    with Server(env, cwd=tmp_path) as server:
        api = f"{server.url}/approvals"
        first = httpx.get(api).json()
        assert (len(first["items"]), first["total"], first["limit"]) == (500, 501, 500)
        rest = httpx.get(api, params={"offset": 500}).json()
        assert [a["phase_id"] for a in rest["items"]] == ["p500"] and rest["total"] == 501
        ids = [a["id"] for a in first["items"] + rest["items"]]
        assert ids == sorted(ids) and len(set(ids)) == 501  # oldest first, none twice
        pages = [httpx.get(api, params={"limit": 200, "offset": o}).json() for o in (0, 200, 400)]
        assert [a["id"] for p in pages for a in p["items"]] == ids
        for name, value in (("limit", 0), ("limit", 1001), ("offset", -1), ("offset", 2**63)):
            refused = httpx.get(api, params={name: value})
            assert refused.status_code == 422 and name in refused.json()["detail"], refused.text
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "autopack_approvals_pending 501.0" in metrics, metrics
        listed = cli("--api-url", server.url, "approvals", "list", cwd=tmp_path, env=env)
        later = cli(
            "--api-url", server.url, "approvals", "list", "--offset", "500", cwd=tmp_path, env=env
        )
        huge = cli(
            "--api-url",
            server.url,
            "approvals",
            "list",
            "--offset",
            str(2**63),
            cwd=tmp_path,
            env=env,
        )
    assert listed.returncode == 0, listed.stderr
    assert "showing 500 of 501; --offset 500 for more; those you decide leave" in listed.stdout
    assert later.returncode == 0 and "r/p500" in later.stdout and "showing" not in later.stdout
    assert huge.returncode == 2 and "offset" in huge.stderr, huge.stderr
    assert "Traceback" not in huge.stderr
