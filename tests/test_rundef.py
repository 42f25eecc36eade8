"""Run definitions: defaults, validation that names field and value, YAML/JSON files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from autopack.bounds import MAX_BODY_BYTES
from autopack.errors import InvalidInput
from autopack.field_errors import describe_errors
from autopack.rundef import RunDefinition, parse_run_definition, run_json_schema
from autopack.runfile import bundled_run_file, load_run_file
from tests.support import REPO, clean_env, cli

MINIMAL: dict[str, Any] = {
    "run_id": "r1",
    "tiers": [{"tier_id": "T1", "name": "first", "phases": [{"phase_id": "p1", "name": "one"}]}],
}

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


def with_phase(**fields: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data["tiers"][0]["phases"][0].update(fields)
    return data


def problem(data: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_run_definition(data)
    assert caught.value.exit_code == 2 and caught.value.http_status == 422
    return caught.value


def test_minimal_definition_gets_sensible_defaults() -> None:
    run = parse_run_definition(MINIMAL)
    assert run.goal == ""
    assert run.budgets.token_cap == 1_000_000
    assert run.budgets.cost_cap_usd == 10.0
    assert run.budgets.max_phases is None
    assert run.budgets.max_duration_minutes == 240
    assert run.policy.on_approval_timeout == "fail"
    assert run.policy.approval_timeout_minutes == 60
    assert run.policy.retry_backoff_seconds == 2.0
    phase = run.tiers[0].phases[0]
    assert (phase.task_category, phase.complexity, phase.max_attempts) == (
        "implementation",
        "medium",
        3,
    )
    assert phase.scope.paths == [] and phase.checks == [] and phase.depends_on == []


def test_the_issue_example_is_accepted() -> None:
    example = {
        "run_id": "r1",
        "goal": "...",
        "budgets": {
            "token_cap": 500000,
            "cost_cap_usd": 5.0,
            "max_phases": 25,
            "max_duration_minutes": 120,
        },
        "tiers": [
            {
                "tier_id": "T1",
                "name": "...",
                "phases": [
                    {
                        "phase_id": "p1",
                        "name": "...",
                        "description": "...",
                        "task_category": "implementation",
                        "complexity": "low",
                        "scope": {
                            "paths": ["src/x/"],
                            "read_only_context": [],
                            "deliverables": ["src/x/a.py"],
                        },
                        "checks": ["pytest -q src/x"],
                        "max_attempts": 3,
                    }
                ],
            }
        ],
    }
    run = parse_run_definition(example)
    assert run.budgets.max_phases == 25
    assert run.tiers[0].phases[0].scope.deliverables == ["src/x/a.py"]


def test_scope_paths_default_to_the_deliverables_directories() -> None:
    scope = {"deliverables": ["src/x/a.py", "src/x/b.py", "docs/usage.md", "README.md"]}
    run = parse_run_definition(with_phase(scope=scope))
    assert run.tiers[0].phases[0].scope.paths == ["src/x/", "docs/", "README.md"]


def test_paths_are_normalised() -> None:
    run = parse_run_definition(
        with_phase(scope={"paths": ["./src//x/"], "deliverables": ["./src/x/a.py"]})
    )
    assert run.tiers[0].phases[0].scope.paths == ["src/x/"]
    assert run.tiers[0].phases[0].scope.deliverables == ["src/x/a.py"]


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (with_phase(max_attempts="three"), "tiers[0](T1).phases[0](p1).max_attempts", "'three'"),
        (with_phase(complexity="huge"), "phases[0](p1).complexity", "'huge'"),
        (with_phase(task_category=7), "task_category", "7"),
        ({**MINIMAL, "tiers": "T1"}, "tiers", "'T1'"),
        ({**MINIMAL, "budgets": {"token_cap": -5}}, "budgets.token_cap", "-5"),
        ({**MINIMAL, "policy": {"on_approval_timeout": "ignore"}}, "on_approval_timeout", "ignore"),
        ({**MINIMAL, "run_id": "has space"}, "run_id", "'has space'"),
        ({**MINIMAL, "colour": "red"}, "colour", "no such field (got 'red')"),
        # pydantic says only "Extra inputs are not permitted": the field meant is named
        (with_phase(category="tests"), "phases[0](p1).category", "did you mean 'task_category'"),
        (with_phase(complexty="low"), "phases[0](p1).complexty", "did you mean 'complexity'"),
        ({**MINIMAL, "budgets": {"tokens": 5}}, "budgets.tokens", "did you mean 'token_cap'"),
        ({**MINIMAL, "tier": []}, "tier", "did you mean 'tiers'"),
        (with_phase(scope={"deliverables": ["../up.py"]}), "deliverables[0]", "'../up.py'"),
        (with_phase(scope={"paths": ["/etc/"]}), "scope.paths[0]", "'/etc/'"),
        (with_phase(scope={"paths": ["C:/x"]}), "scope.paths[0]", "relative"),
        (with_phase(scope={"read_only_context": ["a\\b"]}), "read_only_context[0]", "slashes"),
        (with_phase(checks=[""]), "checks[0]", "at least 1"),
        (with_phase(depends_on=["p1"]), "tiers[0](T1)", "depends_on itself"),
    ],
)
def test_errors_name_the_field_and_the_value(data: Any, field: str, words: str) -> None:
    error = problem(data)
    assert field in error.message
    assert words in error.message
    assert any(field in item["field"] for item in error.details["errors"])


def test_missing_required_fields_are_named() -> None:
    error = problem({"tiers": [{"name": "t", "phases": [{"name": "x"}]}]})
    fields = {item["field"] for item in error.details["errors"]}
    assert {"run_id", "tiers[0].tier_id", "tiers[0].phases[0].phase_id"} <= fields
    assert "Field required" in error.message


def test_empty_tiers_and_phases_are_refused() -> None:
    assert "tiers" in problem({**MINIMAL, "tiers": []}).message
    error = problem({**MINIMAL, "tiers": [{"tier_id": "T1", "name": "t", "phases": []}]})
    assert "tiers[0](T1).phases" in error.message


def test_duplicate_ids_are_named() -> None:
    data = copy.deepcopy(MINIMAL)
    data["tiers"].append(
        {"tier_id": "T2", "name": "second", "phases": [{"phase_id": "p1", "name": "again"}]}
    )
    assert "duplicate phase_id 'p1'" in problem(data).message
    data["tiers"][1]["tier_id"] = "T1"
    data["tiers"][1]["phases"][0]["phase_id"] = "p2"
    assert "duplicate tier_id 'T1'" in problem(data).message


def test_deliverables_must_be_inside_scope_paths() -> None:
    error = problem(with_phase(scope={"paths": ["src/"], "deliverables": ["lib/a.py"]}))
    assert "deliverable 'lib/a.py' is not inside scope.paths ['src/']" in error.message
    # a sibling directory sharing a prefix is not inside
    assert (
        "not inside"
        in problem(with_phase(scope={"paths": ["src/x"], "deliverables": ["src/xy/a.py"]})).message
    )


def test_depends_on_must_stay_in_the_tier_and_be_acyclic() -> None:
    data: dict[str, Any] = {
        "run_id": "r",
        "tiers": [
            {"tier_id": "T1", "name": "a", "phases": [{"phase_id": "p1", "name": "1"}]},
            {
                "tier_id": "T2",
                "name": "b",
                "phases": [
                    {"phase_id": "p2", "name": "2", "depends_on": ["p1"]},
                ],
            },
        ],
    }
    assert "depends_on 'p1', which is not a phase of tier 'T2'" in problem(data).message
    data["tiers"][1]["phases"] = [
        {"phase_id": "p2", "name": "2", "depends_on": ["p4"]},
        {"phase_id": "p3", "name": "3", "depends_on": ["p2"]},
        {"phase_id": "p4", "name": "4", "depends_on": ["p3"]},
    ]
    message = problem(data).message
    assert "cycle" in message and "p2 -> p4 -> p3 -> p2" in message


def test_not_a_mapping_is_refused() -> None:
    assert "expected one mapping" in problem(["run_id"]).message


def test_yaml_and_json_files_load(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(MINIMAL))
    (tmp_path / "run.json").write_text(json.dumps(MINIMAL))
    (tmp_path / "run.txt").write_text(yaml.safe_dump(MINIMAL))
    for name in ("run.yaml", "run.json", "run.txt"):
        assert load_run_file(tmp_path / name).run_id == "r1"


def test_broken_files_say_where(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"run_id": "r1",\n  "tiers": [}')
    with pytest.raises(InvalidInput, match=r"not valid JSON: .* line 2 column"):
        load_run_file(tmp_path / "bad.json")
    (tmp_path / "bad.yaml").write_text("run_id: r1\ntiers: [\n  - x: : y\n")
    with pytest.raises(InvalidInput, match=r"not valid YAML at line \d+ column \d+"):
        load_run_file(tmp_path / "bad.yaml")
    with pytest.raises(InvalidInput, match="cannot read run file"):
        load_run_file(tmp_path / "missing.yaml")
    (tmp_path / "invalid.yaml").write_text(yaml.safe_dump(with_phase(complexity="epic")))
    with pytest.raises(InvalidInput, match=r"invalid\.yaml: tiers\[0\]\(T1\)\.phases\[0\]"):
        load_run_file(tmp_path / "invalid.yaml")


def test_an_empty_run_file_is_called_empty(tmp_path: Path) -> None:
    """`autopack run create` of a new, still empty file (or one of comments only) said
    "expected one mapping with run_id and tiers, got NoneType": Python's name for nothing."""
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'autopack.db'}")
    for text in ("", "\n  \n", "# my run, to do\n"):
        (tmp_path / "my-run.yaml").write_text(text)
        made = cli("run", "create", "my-run.yaml", cwd=tmp_path, env=env)
        assert made.returncode == 2, made.stderr
        assert "run file my-run.yaml is empty: it needs run_id and tiers" in made.stderr
        assert "NoneType" not in made.stderr and "Traceback" not in made.stderr


def test_a_file_larger_than_the_api_accepts_is_refused_unread(tmp_path: Path) -> None:
    """`run create /dev/zero` read until memory ran out (MemoryError traceback), and a
    300 MB file took minutes to parse before the API refused its 16 MiB body anyway."""
    big = tmp_path / "big.yaml"
    with big.open("w") as stream:
        stream.write("run_id: r1\n#")
        stream.truncate(MAX_BODY_BYTES + 10)
    with pytest.raises(InvalidInput, match=f"big.yaml is larger than {MAX_BODY_BYTES} bytes"):
        load_run_file(big)
    if Path("/dev/zero").exists():
        with pytest.raises(InvalidInput, match="larger than"):
            load_run_file("/dev/zero")


def test_json_schema_describes_the_definition() -> None:
    schema = run_json_schema()
    assert schema["title"] == "RunDefinition"
    assert set(schema["required"]) == {"run_id", "tiers"}
    assert schema["additionalProperties"] is False
    assert "PhaseDefinition" in schema["$defs"]


def test_telemetry_run_is_bundled_and_the_example_is_the_same_file() -> None:
    bundled = bundled_run_file("telemetry-collection-v4")
    example = REPO / "examples" / "telemetry-collection-v4.yaml"
    assert example.read_text() == bundled.read_text(), "copy the bundled file to examples/"
    run = load_run_file(bundled)
    assert run.run_id == "telemetry-collection-v4"
    assert [tier.tier_id for tier in run.tiers] == ["T1"]
    phases = run.tiers[0].phases
    assert [p.phase_id for p in phases] == TELEMETRY_PHASES
    assert {p.task_category for p in phases} == {"implementation", "tests", "docs"}
    assert {p.complexity for p in phases} == {"low", "medium"}
    counts = sorted(len(p.scope.deliverables) for p in phases)
    assert counts[0] == 1 and counts[-1] >= 3
    for phase in phases:
        assert phase.description.strip(), phase.phase_id
        for path in [*phase.scope.paths, *phase.scope.deliverables, *phase.scope.read_only_context]:
            assert path.startswith("examples/telemetry_utils/"), path
        if phase.task_category == "tests":
            # unittest: the checks run from a plain install (no pytest there)
            assert phase.checks and all("python -m unittest" in c for c in phase.checks)
    by_id = {p.phase_id: p for p in phases}
    assert by_id["telemetry-p6-string-tests"].depends_on == ["telemetry-p1-string-util"]
    assert by_id["telemetry-p8-list-dict-tests"].depends_on == [
        "telemetry-p3-list-util",
        "telemetry-p4-date-util",
        "telemetry-p5-dict-util",
    ]
    assert len(by_id["telemetry-p9-utils-docs"].depends_on) == 5
    assert by_id["telemetry-p10-utils-package"].depends_on == ["telemetry-p1-string-util"]


@pytest.mark.parametrize("name", ["nope", "../runs/telemetry-collection-v4", "/etc/hostname"])
def test_unknown_bundled_run_is_invalid_input(name: str) -> None:
    """A bundled run is named, not a path: ``../x`` read a YAML file outside them."""
    with pytest.raises(InvalidInput, match=f"no bundled run definition named {name!r}") as err:
        bundled_run_file(name)
    assert "there are: telemetry-collection-v4" in err.value.message


def test_definition_round_trips_through_json() -> None:
    run = load_run_file(bundled_run_file("telemetry-collection-v4"))
    again = RunDefinition.model_validate(json.loads(run.model_dump_json()))
    assert again == run


def test_an_enum_member_expected_is_named_by_its_value() -> None:
    """A 422 said "Input should be <PhaseState.EXECUTING: 'EXECUTING'> or …": Python's
    text for a member, where the caller can only send its value."""
    from autopack.contract import HeartbeatIn

    with pytest.raises(ValidationError) as caught:
        HeartbeatIn(lease_token="t", state="QUEUED")
    [problem] = describe_errors(caught.value.errors())
    assert problem["message"] == "Input should be 'EXECUTING' or 'CI_RUNNING'"


def test_a_repository_holding_a_control_character_is_refused_naming_it(tmp_path: Path) -> None:
    """A YAML ``>`` block ends its value with a newline: ``/srv/x\\n`` was stored, and failed
    only at the first clone, on every executor."""
    text = "run_id: r1\nrepository: >\n  /srv/x.git\n" + yaml.safe_dump({"tiers": MINIMAL["tiers"]})
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(InvalidInput, match=r"repository.*control character \('\\n'\)"):
        load_run_file(tmp_path / "run.yaml")


def test_a_relative_repository_with_a_dotdot_after_a_symlink_is_the_one_git_would_open(
    tmp_path: Path,
) -> None:
    """``repository: lnk/../repo`` next to the run file, ``lnk`` a link to ``a/b``: git
    (like every program) opens ``a/repo``; the path was joined as text, dropping
    ``lnk/..``, so a ``repo`` beside the run file became the run's repository."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "repo").mkdir()
    (tmp_path / "repo").mkdir()  # what the text alone names
    (tmp_path / "lnk").symlink_to(tmp_path / "a" / "b")
    text = "run_id: r1\nrepository: lnk/../repo\n" + yaml.safe_dump({"tiers": MINIMAL["tiers"]})
    (tmp_path / "run.yaml").write_text(text)
    assert load_run_file(tmp_path / "run.yaml").repository == str(tmp_path / "a" / "repo")
