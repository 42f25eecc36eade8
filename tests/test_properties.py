"""Properties that must hold for every input, checked with hypothesis (derandomized, so a
failure reproduces exactly):

* a run file never crashes the validator: it is a RunDefinition or InvalidInput (exit 2);
* the Builder answer parser raises nothing but its own rejection;
* path validation never lets a resolved path leave the scope: ``..``, absolute paths,
  backslashes, drive letters, NUL, unicode look-alikes, case, over-long names, and
  symlinks inside the workspace pointing inside and outside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autopack import paths
from autopack.builder.change import plan_change
from autopack.builder.output import (
    BuilderOutput,
    BuilderRejected,
    FileWrite,
    parse_builder_output,
)
from autopack.errors import InvalidInput
from autopack.rundef import RunDefinition, Scope
from autopack.runfile import load_run_file

PROPERTY = settings(
    derandomize=True,
    database=None,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- run files ------------------------------------------------------------------------------

FIELDS = [
    "run_id", "goal", "budgets", "policy", "tiers", "tier_id", "name", "phases", "phase_id",
    "description", "task_category", "complexity", "scope", "paths", "deliverables",
    "read_only_context", "checks", "max_attempts", "depends_on", "token_cap", "cost_cap_usd",
    "max_phases", "max_duration_minutes", "on_approval_timeout", "approval_timeout_minutes",
    "retry_backoff_seconds",
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["p1", "T1", "src/", "../x", "/etc", "a\x00b", "fail", "low"])
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=40,
)


def _valid_base() -> dict[str, Any]:
    return {
        "run_id": "r",
        "tiers": [
            {
                "tier_id": "T1",
                "name": "t",
                "phases": [
                    {"phase_id": "p1", "name": "a", "scope": {"deliverables": ["src/a.py"]}},
                    {"phase_id": "p2", "name": "b", "depends_on": ["p1"]},
                ],
            }
        ],
    }


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A valid definition with one value somewhere replaced by anything."""
    data = _valid_base()
    node: Any = data
    for _ in range(draw(st.integers(0, 4))):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if not isinstance(node[key], dict | list):
            break
        node = node[key]
    if isinstance(node, dict):
        node[draw(st.sampled_from(FIELDS))] = draw(documents)
    elif node:
        node[draw(st.integers(0, len(node) - 1))] = draw(documents)
    return data


ALIAS_BOMB = (
    "a: &a ["
    + ", ".join(["x"] * 10)
    + "]\n"
    + "".join(
        f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
        for previous, name in zip("abcdefg", "bcdefgh", strict=True)
    )
)
"""A few hundred bytes that expand to 10^8 values: refused by size, not walked."""


def _check_run_file(path: Path) -> None:
    try:
        assert isinstance(load_run_file(path), RunDefinition)
    except InvalidInput as exc:
        assert exc.exit_code == 2 and exc.message


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


@PROPERTY
@given(data=documents | mutated(), as_yaml=st.booleans())
def test_structured_run_files_never_crash_the_validator(
    scratch: Path, data: Any, as_yaml: bool
) -> None:
    path = scratch / ("run.yaml" if as_yaml else "run.json")
    try:
        path.write_text(yaml.safe_dump(data) if as_yaml else json.dumps(data))
    except (ValueError, UnicodeEncodeError):  # not representable as such a file at all
        return
    _check_run_file(path)


@PROPERTY
@given(text=st.text(max_size=400), suffix=st.sampled_from([".yaml", ".json", ".txt"]))
@example(text=ALIAS_BOMB, suffix=".yaml")
@example(text="[" * 5000, suffix=".json")
@example(text="- " * 3000 + "x", suffix=".yaml")
@example(text="run_id: r\nrun_id: s\n", suffix=".yaml")
def test_raw_run_files_never_crash_the_validator(scratch: Path, text: str, suffix: str) -> None:
    path = scratch / f"raw{suffix}"
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be a file's UTF-8
        return
    _check_run_file(path)


# -- the Builder's answers ---------------------------------------------------------------------

answers = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["files", "edits", "delete", "summary", "path", "content", "search"])
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@PROPERTY
@given(
    text=st.text(max_size=300)
    | answers.map(json.dumps)
    | answers.map(lambda value: f"Here you go:\n```json\n{json.dumps(value)}\n```\nDone.")
)
@example(text='{"files": ' + "[" * 5000)
@example(text='{"files": [{"path": "a", "content": "\\u0000"}]}')
def test_the_builder_parser_raises_only_its_own_rejection(text: str) -> None:
    try:
        parse_builder_output(text)
    except BuilderRejected as exc:
        assert exc.stop_reason and "\x00" not in exc.feedback


# -- paths -------------------------------------------------------------------------------------

COMPONENTS = [
    "src", "SRC", "Src", "sub", "a.py", "..", ".", "", "in_link", "out_link", "up_link",
    "abs_link", "é", "e\u0301", "ｓｒｃ", "a\x00b", "C:", "c:\\x", "x" * 300, " ", "~",
]  # fmt: skip
spelled = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "/", "./", "\\"]),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=6),
)


@pytest.fixture(scope="module")
def workspace(scratch: Path) -> Path:
    """``ws/src`` is the scope; links inside point inside it, to the workspace above it,
    and outside the workspace (relative and absolute)."""
    root = scratch / "ws"
    (root / "src" / "sub").mkdir(parents=True)
    (root / "docs").mkdir()
    (scratch / "outside").mkdir()
    (root / "src" / "in_link").symlink_to("sub")
    (root / "src" / "up_link").symlink_to("..")
    (root / "src" / "out_link").symlink_to("../../outside")
    (root / "src" / "abs_link").symlink_to(scratch / "outside")
    return root


@PROPERTY
@given(raw=spelled | st.text(max_size=60))
@example(raw="src/up_link/docs/x.py")
@example(raw="src/out_link/secret.py")
@example(raw="src/abs_link/secret.py")
@example(raw="src/in_link/ok.py")
@example(raw="src/" + "x" * 300 + ".py")
def test_no_resolved_path_leaves_the_scope(workspace: Path, raw: str) -> None:
    scope = Scope(paths=["src/"])
    real_scope = Path(os.path.realpath(workspace / "src"))
    try:
        change = plan_change(BuilderOutput(files=(FileWrite(raw, "x = 1\n"),)), scope, workspace)
    except BuilderRejected as exc:
        assert exc.stop_reason in ("unsafe_path", "path_outside_scope", "path_conflict")
        return
    [write] = change.writes
    assert paths.normalize(write.path) == write.path
    target = Path(os.path.realpath(workspace / write.path))
    assert target.is_relative_to(real_scope), (raw, target)
