"""Hostile telemetry through the real server's routes, then the real reports.

A worker token may post any row the request models accept; nothing it posts may make a
route answer 5xx, a report or ``telemetry calibrate`` crash, or the totals lie.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine

from autopack.db.models import Base
from tests.conftest import empty_sqlite
from tests.support import Server, clean_env, cli

FEATURES = {
    "category": "impl",
    "complexity": "low",
    "deliverables": [{"path": "a.py", "kind": "python", "is_new": True, "existing_bytes": 0}],
}


def estimation(phase_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "run_id": "r1",
        "phase_id": phase_id,
        "attempt": 1,
        "estimator_version": "v1",
        "category": "impl",
        "complexity": "low",
        "deliverable_count": 1,
        "deliverables_json": ["a.py"],
        "features": FEATURES,
        "predicted_output_tokens": 100,
        "predicted_p90_tokens": 200,
        "selected_budget": 300,
        "budget_decided_by": "estimate",
        "max_tokens_sent": 300,
        "actual_output_tokens": 150,
        "model": "m",
        "success": True,
        **fields,
    }


def post(server: Server, route: str, body: dict[str, Any]) -> httpx.Response:
    """The body as Python's json writes it by default (NaN and Infinity included)."""
    return httpx.post(
        f"{server.url}/telemetry/{route}",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: starting one per test was most of this file's time."""
    workdir = tmp_path_factory.mktemp("telemetry-hostile")
    url = empty_sqlite(workdir / "autopack.db")
    with Server(clean_env(DATABASE_URL=url), cwd=workdir) as running:
        running.database_url = url  # type: ignore[attr-defined]
        yield running
        log = running.output()
    assert "Traceback" not in log, log


@pytest.fixture
def server(shared_server: Server) -> Server:
    """The module's server over a database holding no row but its identity, as a fresh one."""
    url = shared_server.database_url  # type: ignore[attr-defined]
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                if table.name != "db_meta":
                    connection.execute(table.delete())
    finally:
        engine.dispose()
    return shared_server


@pytest.mark.parametrize(
    "features",
    [
        {"deliverables": [1]},
        {"deliverables": [{"kind": "python"}]},
        {"deliverables": "a.py"},
        {"deliverables": [{"path": "a.py", "is_new": False, "existing_bytes": "12"}]},
        {"deliverables": [{"path": "a.py", "is_new": False, "existing_bytes": [1]}]},
        {"deliverables": [{"path": "a.py", "is_new": False, "existing_bytes": 1e300}]},
    ],
)
def test_calibrate_skips_a_features_column_it_did_not_write(
    server: Server, tmp_path: Path, features: dict[str, Any]
) -> None:
    assert post(server, "estimations", estimation("good")).status_code == 201
    assert post(server, "estimations", estimation("bad", features=features)).status_code == 201
    env = clean_env(AUTOPACK_API_URL=server.url)
    url = server.database_url  # type: ignore[attr-defined]
    done = cli("telemetry", "calibrate", "--json", "--database-url", url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert (result["n_phases"], result["skipped"]) == (1, {"no_features": 1})


USAGE = {
    "run_id": "r1",
    "phase_id": "p1",
    "attempt": 1,
    "role": "builder",
    "provider": "anthropic",
    "model": "m",
    "input_tokens": 10,
    "output_tokens": 10,
    "success": True,
    "cost_usd": 0.5,
}
ESCALATION = {
    "run_id": "r1",
    "phase_id": "p1",
    "attempt": 2,
    "reason": "truncation",
    "factor": 1.5,
    "old_budget": 100,
    "new_budget": 150,
}


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("llm-usage", USAGE, "cost_usd"),
        ("llm-usage", USAGE, "latency_ms"),
        ("estimations", estimation("p1"), "smape_percent"),
        ("escalations", ESCALATION, "factor"),
    ],
)
def test_a_non_finite_number_is_refused_naming_the_field(
    server: Server, route: str, body: dict[str, Any], field: str, number: float
) -> None:
    answer = post(server, route, {**body, field: number})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field
    assert post(server, route, body).status_code == 201  # the server still answers


@pytest.mark.parametrize(
    "ts", ["2026-01-01T00:00:00", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"]
)
@pytest.mark.parametrize(
    ("route", "body"),
    [("llm-usage", USAGE), ("estimations", estimation("p1")), ("escalations", ESCALATION)],
)
def test_a_timestamp_without_offset_or_outside_utc_is_refused_naming_it(
    server: Server, route: str, body: dict[str, Any], ts: str
) -> None:
    answer = post(server, route, {**body, "ts": ts})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == "ts"
    kept = post(server, route, {**body, "ts": "2026-01-01T00:00:00+05:00"})
    assert kept.status_code == 201, kept.text


@pytest.mark.parametrize("field", ["cost_usd", "provider_cost_usd"])
@pytest.mark.parametrize("cost", [-5.0, 1e308])
def test_a_cost_the_usage_route_refuses_is_refused_on_the_telemetry_route_too(
    server: Server, tmp_path: Path, field: str, cost: float
) -> None:
    """Two calls at 1e308 summed to inf: the report showed the group's cost blank
    (not "unpriced") and /metrics a counter of +Inf; a negative one made it decrease."""
    for _ in range(2):
        answer = post(server, "llm-usage", {**USAGE, field: cost})
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == field
    assert post(server, "llm-usage", USAGE).status_code == 201
    [row] = httpx.get(f"{server.url}/telemetry/summary", timeout=30).json()["usage"]
    assert (row["calls"], row["cost_usd"]) == (1, 0.5)


def _calibrate(server: Server, tmp_path: Path, *args: str, **settings: str) -> Any:
    url = server.database_url  # type: ignore[attr-defined]
    env = clean_env(AUTOPACK_API_URL=server.url, **settings)
    return cli("telemetry", "calibrate", *args, "--database-url", url, cwd=tmp_path, env=env)


@pytest.mark.parametrize("option", ["--write", "--plot"])
@pytest.mark.parametrize("where", ["missing/estimator.json", "a-directory"])
def test_an_output_path_that_cannot_be_written_is_exit_2_naming_it(
    server: Server, tmp_path: Path, option: str, where: str
) -> None:
    assert post(server, "estimations", estimation("p1")).status_code == 201
    (tmp_path / "a-directory").mkdir()
    done = _calibrate(server, tmp_path, option, where)
    assert done.returncode == 2, done.stderr
    assert where in done.stderr and "Traceback" not in done.stderr


def test_write_through_a_symlink_replaces_its_target_whole(server: Server, tmp_path: Path) -> None:
    from autopack.estimation.estimator import TokenEstimator

    assert post(server, "estimations", estimation("p1")).status_code == 201
    target = tmp_path / "estimators" / "current.json"
    target.parent.mkdir()
    target.write_text("stale")
    (tmp_path / "estimator.json").symlink_to(target)
    done = _calibrate(server, tmp_path, "--write", "estimator.json")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "estimator.json").is_symlink()
    assert TokenEstimator.load(target).version
    assert f"AUTOPACK_ESTIMATOR_FILE={tmp_path / 'estimator.json'}" in done.stdout.replace("\n", "")
    assert [p.name for p in target.parent.iterdir()] == ["current.json"]


@pytest.mark.parametrize("value", ["6", "inf", "1e308"])
def test_a_margin_no_estimator_file_may_hold_is_refused_as_the_option(
    server: Server, tmp_path: Path, value: str
) -> None:
    """It was accepted, the whole fit run, then refused as 'estimator file <calibrated>'."""
    done = _calibrate(server, tmp_path, "--margin-sd", value)
    assert done.returncode == 2, done.stderr
    assert "--margin-sd" in done.stderr and "<calibrated>" not in done.stderr


@pytest.mark.parametrize(
    "update",
    [
        {"cost_usd": -5.0},
        {"ts": datetime(1999, 12, 31, tzinfo=UTC)},
        {"run_id": "a run\n", "phase_id": 'p"1'},
    ],
    ids=str,
)
def test_a_value_an_older_server_stored_is_still_read_back(
    server: Server, update: dict[str, Any]
) -> None:
    """Bounding the route must not make rows already stored unreadable (a 500 on
    /telemetry/events, and every calibrate, which pages through them)."""
    from autopack.control.telemetry import record
    from autopack.db import open_database
    from autopack.telemetry.events import LlmUsageIn, LlmUsageRow

    url = server.database_url  # type: ignore[attr-defined]
    database = open_database(url, role="test", log=False)
    try:
        record(database, LlmUsageIn.model_validate(USAGE).model_copy(update=update))
    finally:
        database.close()
    answer = httpx.get(f"{server.url}/telemetry/events", params={"kind": "usage"}, timeout=30)
    assert answer.status_code == 200, answer.text
    [row] = answer.json()
    assert LlmUsageRow.model_validate(row).model_dump(include=set(update)) == update


def test_a_json_column_a_later_bound_refuses_is_still_read_back(server: Server) -> None:
    """Features stored before a JSON bound existed (nesting deeper than any request may
    send now): the events route, the summary and the dashboard read the row as stored
    (they re-ran the request's checks on every row read: a 500 on each)."""
    from autopack.bounds import JSON_DEPTH_MAX
    from autopack.control.telemetry import record
    from autopack.db import open_database
    from autopack.telemetry.events import TokenEstimationIn

    deep: dict[str, Any] = {}
    for _ in range(JSON_DEPTH_MAX + 1):
        deep = {"inner": deep}
    event = TokenEstimationIn.model_validate(estimation("p1"))
    database = open_database(server.database_url, role="test", log=False)  # type: ignore[attr-defined]
    try:
        record(database, event.model_copy(update={"features": {**FEATURES, "old": deep}}))
    finally:
        database.close()
    for path, params in [
        ("/telemetry/events", {"kind": "estimation"}),
        ("/telemetry/summary", {}),
        ("/ui", {}),
    ]:
        answer = httpx.get(f"{server.url}{path}", params=params, timeout=30)
        assert answer.status_code == 200, (path, answer.text)
    [row] = httpx.get(f"{server.url}/telemetry/events", params={"kind": "estimation"}).json()
    assert row["features"]["old"] == deep


def _wide(n: int) -> dict[str, Any]:
    """An estimation event of a phase with ``n`` new Python files."""
    paths = [f"f{i}.py" for i in range(n)]
    items = [{"path": p, "kind": "python", "is_new": True, "existing_bytes": 0} for p in paths]
    features = {"category": "impl", "complexity": "low", "deliverables": items}
    return {"deliverable_count": n, "deliverables_json": paths, "features": features}


@pytest.mark.parametrize("data", ["no-spread", "extreme-spread", "steep-slope"])
def test_calibrate_on_implausible_data_writes_a_file_that_loads(
    server: Server, tmp_path: Path, data: str
) -> None:
    """Sixty phases that all needed 1000 tokens (one replayed answer, drained again and
    again) fitted sigma ~1e-9; 1 and 2**31-1 tokens alternating sigma 10.2; one file -> 1
    token, forty -> 2**31-1 a slope of 5.5: each outside what the loader accepts, so
    calibrate ended with exit 2 blaming an 'estimator file <calibrated>'."""
    from autopack.estimation.estimator import TokenEstimator
    from autopack.estimation.features import extract_features

    for i in range(60):
        fields: dict[str, Any] = {"actual_output_tokens": 1000}
        if data == "extreme-spread":
            fields["actual_output_tokens"] = 1 if i % 2 else 2**31 - 1
        if data == "steep-slope":
            tokens = 1 if i % 2 else 2**31 - 1
            fields = {**_wide(1 if i % 2 else 40), "actual_output_tokens": tokens}
        event = estimation(f"p{i}", **fields, ts=f"2026-02-01T00:{i:02d}:00Z")
        assert post(server, "estimations", event).status_code == 201
    done = _calibrate(server, tmp_path, "--write", "estimator.json")
    assert done.returncode == 0, done.stderr
    estimator = TokenEstimator.load(tmp_path / "estimator.json")
    for n in (1, 40):
        features = extract_features("impl", "low", [f"f{i}.py" for i in range(n)], None)
        estimate = estimator.estimate(features, model_max_output=8192, model="m")
        assert 1 <= estimate.budget <= 8192


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+00:00", "9999-12-31T23:00:00+00:00"])
def test_an_instant_at_the_calendar_edge_is_refused_so_every_row_stays_readable(
    database_url: str, tmp_path: Path, ts: str, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL returns timestamptz in the session's zone: with TimeZone Asia/Tokyo or
    America/New_York a stored 9999-12-31T23:00Z or 0001-01-01Z is year 10000 or 0 for
    psycopg, and every GET /telemetry/events (and report, calibrate) answered 500."""
    import psycopg
    from sqlalchemy.engine import make_url

    if database_url.startswith("postgresql"):
        name = make_url(database_url).database
        zone = "Asia/Tokyo" if ts.startswith("9") else "America/New_York"
        admin = request.getfixturevalue("pg_admin")
        conninfo = make_url(admin).set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} SET timezone = '{zone}'")
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        answer = post(server, "llm-usage", {**USAGE, "ts": ts})
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == "ts"
        assert post(server, "llm-usage", USAGE).status_code == 201
        events = httpx.get(f"{server.url}/telemetry/events", timeout=30)
        assert events.status_code == 200, events.text
        assert len(events.json()) == 1


def _phases(server: Server, n: int, run_id: str = "r1") -> None:
    """``n`` phases of one exact call each, a minute apart (oldest first)."""
    for i in range(n):
        tokens = 1000 + 37 * i
        at = f"2026-02-01T00:{i:02d}:00Z"
        event = estimation(f"p{i}", run_id=run_id, actual_output_tokens=tokens, ts=at)
        assert post(server, "estimations", event).status_code == 201


def test_calibrate_from_an_estimator_predicting_infinite_sizes_writes_a_file_that_loads(
    server: Server, tmp_path: Path
) -> None:
    """A schema-1 file with margin 1e308 loads (a drain caps its budgets), but calibrate
    centred its priors on log(inf): slope inf - inf = nan, and it ended with exit 2
    blaming an 'estimator file <calibrated>'."""
    from autopack.estimation.estimator import TokenEstimator

    prior = TokenEstimator.load().to_json() | {"margin": 1e308}
    (tmp_path / "prior.json").write_text(json.dumps(prior))
    _phases(server, 12)
    done = _calibrate(server, tmp_path, "--write", "new.json", AUTOPACK_ESTIMATOR_FILE="prior.json")
    assert done.returncode == 0, done.stderr
    assert TokenEstimator.load(tmp_path / "new.json").schema == 2


def test_a_holdout_share_that_rounds_to_no_phase_still_holds_one_out(
    server: Server, tmp_path: Path
) -> None:
    """Ten phases at --holdout 0.05 held out round(0.5) = 0 of them, and the verdict said
    'wait: 10 usable phases; a held-out judgement needs 10'."""
    _phases(server, 10)
    done = _calibrate(server, tmp_path, "--holdout", "0.05", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["holdout"]["n_holdout"] == 1
    assert result["verdict"]["action"] == "wait"
    assert "only 1 held-out" in result["verdict"]["line"]


def test_calibrate_of_a_mistyped_run_says_it_is_not_found(server: Server, tmp_path: Path) -> None:
    """It answered '0 phases … wait' as if the run existed and had no telemetry."""
    _phases(server, 1)
    done = _calibrate(server, tmp_path, "--run", "no-such-run")
    assert done.returncode != 0
    assert "no-such-run" in done.stderr and "not found" in done.stderr
    assert "Traceback" not in done.stderr
    kept = _calibrate(server, tmp_path, "--run", "r1", "--json")  # telemetry without a run row
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["n_phases"] == 1


@pytest.mark.parametrize("estimator", ["AUTOPACK_ESTIMATOR_FILE", "--write"])
def test_a_plot_naming_the_estimator_file_is_refused_and_the_file_kept(
    server: Server, tmp_path: Path, estimator: str
) -> None:
    """``--plot`` onto the estimator in use (or onto --write's file) replaced it with a
    PNG, and the next drain refused to start on it."""
    from autopack.estimation.estimator import TokenEstimator

    current = tmp_path / "estimators" / "current.json"
    current.parent.mkdir()
    TokenEstimator.load().write(current)
    (tmp_path / "link.json").symlink_to(current)  # the same file by another name
    before = current.read_bytes()
    _phases(server, 12)
    url = server.database_url  # type: ignore[attr-defined]
    env = clean_env(AUTOPACK_API_URL=server.url)
    args = ["telemetry", "calibrate", "--plot", "link.json", "--database-url", url]
    if estimator == "--write":
        args += ["--write", str(current)]
    else:
        env["AUTOPACK_ESTIMATOR_FILE"] = str(current)
    done = cli(*args, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert "--plot link.json" in done.stderr and estimator in done.stderr
    assert "Traceback" not in done.stderr
    assert current.read_bytes() == before


def test_calibrate_from_an_estimator_aiming_at_its_largest_target_works(
    server: Server, tmp_path: Path
) -> None:
    """The loader takes target_truncation up to 0.5; calibrate, starting from such a
    file, refused 0.5 with a traceback (ValueError: ... below 0.5)."""
    from autopack.estimation.estimator import TokenEstimator

    _phases(server, 12)
    assert _calibrate(server, tmp_path, "--write", "first.json").returncode == 0
    prior = json.loads((tmp_path / "first.json").read_text()) | {"target_truncation": 0.5}
    (tmp_path / "prior.json").write_text(json.dumps(prior))
    done = _calibrate(server, tmp_path, "--write", "new.json", AUTOPACK_ESTIMATOR_FILE="prior.json")
    assert done.returncode == 0, done.stderr
    assert TokenEstimator.load(tmp_path / "new.json").target_truncation == 0.5


def test_write_with_nothing_fitted_keeps_a_file_holding_another_estimator(
    server: Server, tmp_path: Path
) -> None:
    """Three phases fit nothing, so --write wrote the packaged default over an earlier
    calibration at that path, saying 'the current estimator unchanged'."""
    _phases(server, 12, run_id="earlier")
    assert _calibrate(server, tmp_path, "--run", "earlier", "--write", "est.json").returncode == 0
    before = (tmp_path / "est.json").read_bytes()
    _phases(server, 3, run_id="r1")
    done = _calibrate(server, tmp_path, "--run", "r1", "--write", "est.json")
    assert done.returncode == 2, done.stderr
    assert "--write est.json" in done.stderr and "nothing written" in done.stderr
    assert (tmp_path / "est.json").read_bytes() == before
    url = server.database_url  # type: ignore[attr-defined]
    env = clean_env(AUTOPACK_API_URL=server.url, AUTOPACK_ESTIMATOR_FILE="est.json")
    same = cli(
        *("telemetry", "calibrate", "--run", "r1", "--write", "est.json", "--database-url", url),
        cwd=tmp_path,
        env=env,
    )
    assert same.returncode == 0, same.stderr  # the current estimator written back: allowed
    assert (tmp_path / "est.json").read_bytes() == before


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("llm-usage", {**USAGE, "model": "m\x00"}, "model"),
        ("llm-usage", {**USAGE, "error_message": "cut\x00off"}, "error_message"),
        ("estimations", estimation("p\x00"), "phase_id"),
        ("escalations", {**ESCALATION, "run_id": "r\x00"}, "run_id"),
        ("llm-usage", {**USAGE, "price_snapshot": {"m": ["\udc80"]}}, "price_snapshot"),
    ],
)
def test_text_a_column_cannot_hold_is_refused_at_its_field_not_the_body(
    server: Server, route: str, body: dict[str, Any], field: str
) -> None:
    """The 422's errors named the field "body" (the words named it), so a client reading
    ``errors[].field`` could not tell which value to fix."""
    answer = post(server, route, body)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert error["field"] == field, error


def test_an_infinite_flag_sd_is_refused_as_the_option(server: Server, tmp_path: Path) -> None:
    """--flag-sd inf was taken, and --json printed "flag_sd": Infinity, which no strict
    JSON parser reads."""
    _phases(server, 12)
    done = _calibrate(server, tmp_path, "--flag-sd", "inf", "--json")
    assert done.returncode == 2, done.stdout
    assert "--flag-sd" in done.stderr and "Traceback" not in done.stderr
    largest = _calibrate(server, tmp_path, "--flag-sd", "1000", "--json")
    assert largest.returncode == 0, largest.stderr

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    assert json.loads(largest.stdout, parse_constant=refuse)["flag_sd"] == 1000


@pytest.mark.parametrize("bad", ["new\nline", 'we"ird', "a b", ""])
@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("llm-usage", USAGE, "run_id"),
        ("llm-usage", USAGE, "phase_id"),
        ("estimations", estimation("p1"), "phase_id"),
        ("escalations", ESCALATION, "run_id"),
    ],
)
def test_an_id_no_run_could_have_is_refused_naming_it(
    server: Server, route: str, body: dict[str, Any], field: str, bad: str
) -> None:
    """It was stored, and then no --run or GET /telemetry/*?run_id= could name its run
    (they take ids only): a row only the unfiltered totals counted."""
    answer = post(server, route, {**body, field: bad})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field


def test_report_shows_names_with_markup_or_control_characters_as_written(
    server: Server, tmp_path: Path
) -> None:
    """A model called ``[/]`` ended ``telemetry report`` with a MarkupError traceback, one
    called ``[bold]x[/]`` was shown as ``x``, and a category or model holding ``ESC ] 0 ;``
    reached the terminal as it came (retitling it)."""
    for model in ("[/]", "[bold]x[/]", "\x1b]0;owned\x07"):
        assert post(server, "llm-usage", {**USAGE, "model": model}).status_code == 201
    assert post(server, "estimations", estimation("p1", category="\x1b[2j")).status_code == 201
    url = server.database_url  # type: ignore[attr-defined]
    env = clean_env(AUTOPACK_API_URL=server.url)
    done = cli("telemetry", "report", "--database-url", url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "[/]" in done.stdout and "[bold]x[/]" in done.stdout
    assert "\x1b" not in done.stdout
    assert "\\x1b]0;owned\\x07" in done.stdout and "\\x1b[2j/low/1" in done.stdout


def test_calibrate_on_hundreds_of_categories_is_refused_before_fitting(
    server: Server, tmp_path: Path
) -> None:
    """Category is free text on the route: 2000 categories made calibrate's dense fit take
    4 GB and run for more than five minutes (260 take tens of seconds); refused up front,
    naming what there is too much of, and nothing written."""
    for i in range(260):
        features = {**FEATURES, "category": f"c{i}"}
        event = estimation(f"p{i}", category=f"c{i}", features=features)
        assert post(server, "estimations", event).status_code == 201
    url = server.database_url  # type: ignore[attr-defined]
    env = clean_env(AUTOPACK_API_URL=server.url)
    args = ("--write", "est.json", "--plot", "fit.png", "--database-url", url)
    done = cli("telemetry", "calibrate", *args, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "260 categories" in done.stderr and "--run" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "est.json").exists() and not (tmp_path / "fit.png").exists()
