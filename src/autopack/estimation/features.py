"""What the estimator knows about a phase before the Builder call: its feature vector.

Output tokens are driven by what the Builder has to write: how many files, of which kind,
whether each is new (written from scratch) or modified (largely re-emitted, so its current
size matters), plus a per-task overhead that depends on category and complexity. The same
vector is stored with every ``token_estimation_v2_events`` row (``features`` column), so
calibration can later refit the coefficients from exactly what the estimator saw.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

from autopack import paths

Kind = Literal["test", "doc", "config", "frontend", "python", "sql", "other"]
KINDS: tuple[Kind, ...] = get_args(Kind)

Bucket = Literal["1", "2-5", "6+"]
BUCKETS: tuple[Bucket, ...] = get_args(Bucket)

_DOC = {".md", ".rst", ".txt", ".adoc"}
_CONFIG = {".yaml", ".yml", ".toml", ".json", ".ini", ".cfg", ".conf", ".env"}
_FRONTEND = {
    ".js",
    ".jsx",
    ".mjs",
    ".cjs",
    ".ts",
    ".tsx",
    ".css",
    ".scss",
    ".sass",
    ".less",
    ".html",
    ".htm",
    ".vue",
    ".svelte",
}
_PYTHON = {".py", ".pyi"}
_SQL = {".sql"}
_TEST_DIRS = {"tests", "test", "__tests__"}
_CODE = _PYTHON | _FRONTEND


def classify(path: str) -> Kind:
    """The deliverable kind of ``path``, from its name only (tests win over language).

    >>> classify("tests/test_util.py"), classify("README.md"), classify("src/app.py")
    ('test', 'doc', 'python')
    """
    pure = PurePosixPath(path.replace("\\", "/").strip())
    name = pure.name.lower()
    suffix = pure.suffix.lower()
    folders = {part.lower() for part in pure.parts[:-1]}
    is_test_name = (
        (name.startswith("test_") and suffix in _PYTHON)
        or name.endswith("_test.py")
        or name == "conftest.py"
        or any(marker in name for marker in (".test.", ".spec."))
    )
    if is_test_name or (suffix in _CODE and folders & _TEST_DIRS):
        return "test"
    if suffix in _DOC:
        return "doc"
    if suffix in _CONFIG or name in {"dockerfile", "makefile", ".gitignore", ".dockerignore"}:
        return "config"
    if suffix in _FRONTEND:
        return "frontend"
    if suffix in _PYTHON:
        return "python"
    if suffix in _SQL:
        return "sql"
    return "other"


TOKENS_MAX = 2**31 - 1
"""The largest token count an estimate states: what the telemetry columns hold (INTEGER).
An estimator file or a phase far out of range predicts this, not an overflow."""
MAX_FILE_BYTES = 2**40
"""The largest existing size a stored deliverable may claim (a terabyte)."""


def bucket_of(deliverable_count: int) -> Bucket:
    """The deliverable-count bucket used to stratify reports and p90 ratios (1 / 2-5 / 6+)."""
    if deliverable_count <= 1:
        return "1"
    if deliverable_count <= 5:
        return "2-5"
    return "6+"


def normalize_label(value: str | None) -> str:
    """Category and complexity are compared case-insensitively; empty means the wildcard."""
    text = (value or "").strip().lower()
    return text or "*"


@dataclass(frozen=True)
class Deliverable:
    """One file the phase must produce. ``existing_bytes`` is 0 for a new file."""

    path: str
    kind: Kind
    is_new: bool
    existing_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "is_new": self.is_new,
            "existing_bytes": self.existing_bytes,
        }

    @classmethod
    def from_json(cls, data: Any) -> Deliverable:
        """Raises ``ValueError`` for anything :meth:`to_json` cannot have written (the
        column is whatever a worker posted: a wrong type must not crash a report)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("path"), str):
            raise ValueError(f"a deliverable must be an object with a text 'path': {data!r:.80}")
        path: str = data["path"]
        kind = data.get("kind")
        is_new = data.get("is_new", True)
        size = data.get("existing_bytes") or 0
        if not isinstance(is_new, bool):
            raise ValueError(f"deliverable {path!r}: is_new must be true or false")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES:
            raise ValueError(f"deliverable {path!r}: existing_bytes must be a byte count")
        return cls(
            path=path,
            kind=kind if kind in KINDS else classify(path),
            is_new=is_new,
            existing_bytes=0 if is_new else size,
        )


@dataclass(frozen=True)
class PhaseFeatures:
    """The estimator's input: category, complexity and the deliverables with their sizes."""

    category: str
    complexity: str
    deliverables: tuple[Deliverable, ...]

    @property
    def deliverable_count(self) -> int:
        return len(self.deliverables)

    def bucket(self) -> Bucket:
        return bucket_of(self.deliverable_count)

    def to_json(self) -> dict[str, Any]:
        """The ``features`` column: the full vector plus summaries a human can scan in SQL."""
        kinds: dict[str, int] = {}
        for item in self.deliverables:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
        return {
            "category": self.category,
            "complexity": self.complexity,
            "deliverable_count": self.deliverable_count,
            "bucket": self.bucket(),
            "kinds": kinds,
            "new_count": sum(1 for item in self.deliverables if item.is_new),
            "modify_count": sum(1 for item in self.deliverables if not item.is_new),
            "existing_bytes_total": sum(item.existing_bytes for item in self.deliverables),
            "deliverables": [item.to_json() for item in self.deliverables],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhaseFeatures:
        """Inverse of :meth:`to_json` (summaries are recomputed, never trusted);
        ``ValueError`` when ``data`` is not what it writes."""
        deliverables = data.get("deliverables") or []
        if not isinstance(deliverables, list):
            raise ValueError("deliverables must be a list")
        return cls(
            category=str(data.get("category") or ""),
            complexity=str(data.get("complexity") or ""),
            deliverables=tuple(Deliverable.from_json(d) for d in deliverables),
        )


def extract_features(
    category: str,
    complexity: str,
    deliverables: list[str],
    workspace: Path | None,
) -> PhaseFeatures:
    """Build the feature vector, reading the sizes of deliverables that already exist.

    A deliverable is *new* when no regular file exists at its path inside ``workspace``.
    Without a workspace every deliverable counts as new: the larger, safer estimate for
    unknown files. Paths that resolve outside the workspace are never read (also new).
    Duplicated paths are counted once.
    """
    root = workspace.resolve() if workspace is not None else None
    items: list[Deliverable] = []
    seen: set[str] = set()
    for raw in deliverables:
        path = raw.strip()
        if not path or path in seen:
            continue
        seen.add(path)
        size = _existing_size(root, path)
        items.append(
            Deliverable(
                path=path, kind=classify(path), is_new=size is None, existing_bytes=size or 0
            )
        )
    return PhaseFeatures(
        category=category.strip(), complexity=complexity.strip(), deliverables=tuple(items)
    )


def _existing_size(root: Path | None, path: str) -> int | None:
    """The size of the regular file at ``path`` inside ``root`` (symlinks followed while
    they stay inside), else None. A symlink loop in the repository is no file, not a
    ``RuntimeError`` that crashed every attempt at the phase before its Builder call."""
    relative = paths.resolved(root, path) if root is not None else None
    if root is None or relative is None:
        return None
    try:
        info = (root / relative).stat()
    except OSError:  # a loop, a dangling link, no permission
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def features_from_event(event: Mapping[str, Any]) -> PhaseFeatures | None:
    """The feature vector stored with a ``token_estimation_v2_events`` row, if usable.

    ``None`` when the row has no stored deliverables (older writers, or a row whose
    ``features`` lost them): guessing sizes would teach calibration the wrong thing.
    """
    raw = event.get("features")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return None
    if not isinstance(raw, dict) or not isinstance(raw.get("deliverables"), list):
        return None
    data = dict(raw)
    data.setdefault("category", event.get("category"))
    data.setdefault("complexity", event.get("complexity"))
    try:
        features = PhaseFeatures.from_json(data)
    except ValueError:  # posted by something other than this writer: unusable, not fatal
        return None
    if features.deliverable_count == 0 and int(event.get("deliverable_count") or 0) > 0:
        return None
    return features
