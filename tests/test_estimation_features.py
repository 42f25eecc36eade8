"""Feature extraction: kinds from paths, new vs modify and sizes from a real workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.estimation.features import (
    Deliverable,
    PhaseFeatures,
    bucket_of,
    classify,
    extract_features,
    features_from_event,
)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("tests/test_util.py", "test"),
        ("pkg/util_test.py", "test"),
        ("tests/conftest.py", "test"),
        ("tests/helpers.py", "test"),
        ("web/src/app.test.ts", "test"),
        ("web/src/__tests__/widget.tsx", "test"),
        ("README.md", "doc"),
        ("docs/guide.rst", "doc"),
        ("CHANGELOG.txt", "doc"),
        ("pyproject.toml", "config"),
        ("deploy/values.YAML", "config"),
        ("settings.json", "config"),
        ("setup.cfg", "config"),
        ("tox.ini", "config"),
        ("Dockerfile", "config"),
        ("web/src/app.tsx", "frontend"),
        ("web/index.html", "frontend"),
        ("web/style.css", "frontend"),
        ("web/main.js", "frontend"),
        ("src/autopack/util.py", "python"),
        ("src/autopack/stubs.pyi", "python"),
        ("migrations/001_init.sql", "sql"),
        ("assets/logo.svg", "other"),
        ("Cargo.lock", "other"),
        ("src\\win\\module.py", "python"),
    ],
)
def test_classify(path: str, kind: str) -> None:
    assert classify(path) == kind


@pytest.mark.parametrize(
    ("count", "bucket"), [(0, "1"), (1, "1"), (2, "2-5"), (5, "2-5"), (6, "6+"), (40, "6+")]
)
def test_buckets(count: int, bucket: str) -> None:
    assert bucket_of(count) == bucket


def test_extract_features_reads_existing_sizes_from_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "src" / "pkg").mkdir(parents=True)
    (workspace / "src" / "pkg" / "core.py").write_bytes(b"x" * 3000)
    (workspace / "README.md").write_text("# hello\n")
    (workspace / "docs").mkdir()
    secret = tmp_path / "outside.py"
    secret.write_bytes(b"y" * 999)

    features = extract_features(
        "Implementation",
        "High",
        [
            "src/pkg/core.py",
            "src/pkg/new_module.py",
            "tests/test_core.py",
            "README.md",
            "src/pkg/core.py",  # duplicate: counted once
            "../outside.py",  # escapes the workspace: never read, counts as new
            "docs",  # a directory is not an existing deliverable file
            "  ",
        ],
        workspace,
    )

    assert features.category == "Implementation"
    assert features.complexity == "High"
    assert [d.path for d in features.deliverables] == [
        "src/pkg/core.py",
        "src/pkg/new_module.py",
        "tests/test_core.py",
        "README.md",
        "../outside.py",
        "docs",
    ]
    by_path = {d.path: d for d in features.deliverables}
    assert by_path["src/pkg/core.py"] == Deliverable("src/pkg/core.py", "python", False, 3000)
    assert by_path["src/pkg/new_module.py"] == Deliverable(
        "src/pkg/new_module.py", "python", True, 0
    )
    assert by_path["tests/test_core.py"].kind == "test"
    assert by_path["tests/test_core.py"].is_new
    assert by_path["README.md"] == Deliverable("README.md", "doc", False, 8)
    assert by_path["../outside.py"].is_new
    assert by_path["../outside.py"].existing_bytes == 0
    assert by_path["docs"].is_new
    assert features.deliverable_count == 6
    assert features.bucket() == "6+"


def test_a_deliverable_in_a_symlink_loop_counts_as_new(tmp_path: Path) -> None:
    """``a.py -> b.py -> a.py`` in the repository: ``Path.resolve`` raised RuntimeError and
    every attempt at the phase crashed before its Builder call."""
    (tmp_path / "a.py").symlink_to("b.py")
    (tmp_path / "b.py").symlink_to("a.py")
    [item] = extract_features("implementation", "low", ["a.py"], tmp_path).deliverables
    assert item.is_new and item.existing_bytes == 0


def test_without_a_workspace_everything_is_new() -> None:
    features = extract_features("docs", "low", ["README.md"], None)
    assert features.deliverables == (Deliverable("README.md", "doc", True, 0),)
    assert features.bucket() == "1"


def test_feature_json_round_trip_and_summaries(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_bytes(b"z" * 2048)
    features = extract_features("refactor", "medium", ["a.py", "b.py", "c.md"], tmp_path)
    data = features.to_json()
    assert data["deliverable_count"] == 3
    assert data["bucket"] == "2-5"
    assert data["kinds"] == {"python": 2, "doc": 1}
    assert data["new_count"] == 2
    assert data["modify_count"] == 1
    assert data["existing_bytes_total"] == 2048
    assert PhaseFeatures.from_json(data) == features


def test_features_from_event_uses_the_stored_vector() -> None:
    features = extract_features("tests", "low", ["tests/test_a.py"], None)
    event = {"category": "tests", "complexity": "low", "deliverable_count": 1}
    assert features_from_event({**event, "features": features.to_json()}) == features
    # Stored as a JSON string (some drivers) works too.
    import json

    assert features_from_event({**event, "features": json.dumps(features.to_json())}) == features
    # No stored deliverables: calibration must not guess sizes.
    assert features_from_event({**event, "features": {}}) is None
    assert features_from_event({**event, "features": None}) is None
    assert features_from_event({**event, "features": {"deliverables": []}}) is None
    assert features_from_event({**event, "features": "not json"}) is None
