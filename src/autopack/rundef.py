"""The run definition: one pydantic schema for run files (YAML/JSON), the API and JSON Schema.

A run has ordered tiers; a tier has ordered phases. Everything but ``run_id``, ``tiers``,
``tier_id``, ``phase_id`` and ``name`` has a default. Validation rejects what would only
fail later, far from its cause: duplicate ids, absolute or ``..`` paths, deliverables
outside ``scope.paths``, ``depends_on`` naming a phase of another tier, and cycles.

Every error names the field (``tiers[0](T1).phases[2](p3).scope.deliverables[0]``) and the
offending value, and is raised as :class:`~autopack.errors.InvalidInput` (HTTP 422, CLI
exit 2). Importing this module reads nothing; :func:`load_run_file` reads the one file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autopack import paths
from autopack.bounds import (
    ID_PATTERN,
    TEXT_MAX,
    Count,
    Finite,
    JsonTyped,
    Str,
)
from autopack.errors import InvalidInput
from autopack.field_errors import describe_errors, summarize_errors
from autopack.repoident import resolve_local

TaskCategory = Literal["implementation", "tests", "docs", "refactor", "config", "bugfix"]
Complexity = Literal["low", "medium", "high"]

DEFAULT_TOKEN_CAP = 1_000_000
DEFAULT_COST_CAP_USD = 10.0
DEFAULT_MAX_DURATION_MINUTES = 240

MAX_TIERS = 1000
MAX_PHASES = 10_000
"""Phases in one run (a run is created in one transaction and drained as one unit)."""
MAX_LIST = 1000
"""Entries of one list in a phase (paths, checks, depends_on)."""
MAX_COST_CAP_USD = 1_000_000.0
MAX_DURATION_MINUTES = 366 * 24 * 60
MAX_APPROVAL_TIMEOUT_MINUTES = 30 * 24 * 60

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=200)]


def _ref_part(value: str) -> str:
    """A run or phase id names git refs: the run's branch ``autopack/RUN_ID`` and its
    attempts' ``refs/autopack/attempts/RUN_ID/PHASE_ID/N``, which git refuses with these."""
    if ".." in value or value.endswith((".", ".lock")):
        raise ValueError(
            "run and phase ids name git refs (autopack/RUN_ID, "
            "refs/autopack/attempts/RUN_ID/PHASE_ID/N): no '..', not ending in '.' or '.lock'"
        )
    return value


RefId = Annotated[Id, AfterValidator(_ref_part)]
# Stripped by a validator before the lengths are checked: pydantic applies the constraints
# that follow Str's own validator to the text as given, so `strip_whitespace=True` there let
# "  " pass min_length=1 and be stored as "" (a blank check: a command that always passes).
Name = Annotated[Str, AfterValidator(str.strip), StringConstraints(min_length=1, max_length=500)]
Command = Annotated[
    Str, AfterValidator(str.strip), StringConstraints(min_length=1, max_length=10_000)
]
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/-]+(?<!\.lock)(?<![/.])$")


_MAX_REF_PART = paths.MAX_NAME_BYTES - len(".lock")
"""A part of a ref is a file name (``refs/heads/a/PART``), locked as ``PART.lock``."""


def _branch_name(value: str) -> str:
    """A git branch name by ``git check-ref-format --branch``'s rules (ASCII only), that
    the file system can hold. Every part is checked, not just the end: ``a.lock/b``,
    ``HEAD`` or a part longer than a file name passed, and no drain could make the branch
    (each attempt failed ``git_error``, the run ended failed) or, for ``HEAD``, the
    workspace's ``git status`` showed the run's files as staged deletions."""
    parts = value.split("/")
    if (
        not _BRANCH.match(value)
        or value == "HEAD"
        or any(p.startswith(".") or p.endswith(".lock") or len(p) > _MAX_REF_PART for p in parts)
    ):
        raise ValueError(
            "not a git branch name: letters, digits, '.', '_', '-' and '/' separated parts "
            f"of at most {_MAX_REF_PART} characters, no '..', no part starting with '.' or "
            "ending in '.lock', not 'HEAD', not ending in '/' or '.'"
        )
    return value


BranchName = Annotated[str, StringConstraints(max_length=300), AfterValidator(_branch_name)]


def _relative_path(value: str) -> str:
    """A workspace-relative path by :func:`autopack.paths.normalize` (directories allowed)."""
    try:
        return paths.normalize(value, directory_ok=True)
    except paths.UnsafePath as exc:
        raise ValueError(f"path {exc}") from exc


RelPath = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_relative_path)]


class _Strict(JsonTyped):
    model_config = ConfigDict(extra="forbid")


class Budgets(_Strict):
    """Caps checked when work is claimed; ``null`` means no cap."""

    token_cap: Count | None = Field(DEFAULT_TOKEN_CAP, ge=1, description="Tokens (in+out).")
    cost_cap_usd: Finite | None = Field(
        DEFAULT_COST_CAP_USD, gt=0, le=MAX_COST_CAP_USD, description="US dollars."
    )
    max_phases: Count | None = Field(None, ge=1, description="Phases that may be started.")
    max_duration_minutes: int | None = Field(
        DEFAULT_MAX_DURATION_MINUTES,
        ge=1,
        le=MAX_DURATION_MINUTES,
        description="Minutes since the first claim.",
    )


class Policy(_Strict):
    on_approval_timeout: Literal["fail", "requeue"] = Field(
        "fail", description="What an unanswered approval does to its phase."
    )
    approval_timeout_minutes: Finite = Field(60.0, gt=0, le=MAX_APPROVAL_TIMEOUT_MINUTES)
    retry_backoff_seconds: Finite = Field(
        2.0, ge=0, le=3600, description="Base of the capped (60 s) exponential retry backoff."
    )
    recheck_after_rebase: Literal["overlap", "always", "never"] = Field(
        "overlap",
        description="When a completed attempt's commit is rebased onto a branch that moved, "
        "run its checks again: when the branch changed files it changed too ('overlap'), "
        "always, or never.",
    )


class Scope(_Strict):
    paths: list[RelPath] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Where the phase may write; default: the deliverables' directories.",
    )
    read_only_context: list[RelPath] = Field(default_factory=list, max_length=MAX_LIST)
    deliverables: list[RelPath] = Field(default_factory=list, max_length=MAX_LIST)

    @model_validator(mode="after")
    def _deliverables_inside_paths(self) -> Scope:
        for deliverable in self.deliverables:
            if deliverable.endswith("/"):
                raise ValueError(f"deliverable {deliverable!r} must be a file, not a directory")
        if not self.paths:
            defaults: list[str] = []
            for deliverable in self.deliverables:
                parent = str(PurePosixPath(deliverable).parent)
                entry = deliverable if parent == "." else parent + "/"
                if entry not in defaults:
                    defaults.append(entry)
            self.paths = defaults
        for deliverable in self.deliverables:
            if not paths.inside_any(deliverable, self.paths):
                raise ValueError(
                    f"deliverable {deliverable!r} is not inside scope.paths {self.paths}"
                )
        return self

    def allows(self, path: str) -> bool:
        """May a phase with this scope write the normalized ``path`` (by its spelling)?"""
        return paths.inside_any(path, self.paths)


class PhaseDefinition(_Strict):
    phase_id: RefId
    name: Name
    description: Str = Field("", max_length=TEXT_MAX)
    task_category: TaskCategory = "implementation"
    complexity: Complexity = "medium"
    scope: Scope = Field(default_factory=Scope)
    checks: list[Command] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Shell commands run from the workspace root, on the executor: a run "
        "file is code.",
    )
    max_attempts: int = Field(3, ge=1, le=50)
    depends_on: list[Id] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Phases of the same tier that must COMPLETE first.",
    )


class TierDefinition(_Strict):
    tier_id: Id
    name: Name
    phases: list[PhaseDefinition] = Field(min_length=1, max_length=MAX_PHASES)

    @model_validator(mode="after")
    def _dependencies_inside_tier_and_acyclic(self) -> TierDefinition:
        ids = [phase.phase_id for phase in self.phases]
        known = set(ids)
        graph: dict[str, list[str]] = {}
        for phase in self.phases:
            for dep in phase.depends_on:
                if dep == phase.phase_id:
                    raise ValueError(f"phase {phase.phase_id!r} depends_on itself")
                if dep not in known:
                    raise ValueError(
                        f"phase {phase.phase_id!r} depends_on {dep!r}, which is not a phase of "
                        f"tier {self.tier_id!r} (phases of earlier tiers are waited for anyway)"
                    )
            graph[phase.phase_id] = list(dict.fromkeys(phase.depends_on))
            phase.depends_on = graph[phase.phase_id]
        cycle = _find_cycle(graph)
        if cycle:
            raise ValueError(f"depends_on has a cycle: {' -> '.join(cycle)}")
        return self


class RunDefinition(_Strict):
    """What `POST /runs`, `autopack run create FILE` and `GET /schemas/run` share."""

    run_id: RefId
    goal: Str = Field("", max_length=TEXT_MAX)
    repository: Str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="Git repository holding the run's code (a URL every executor can reach, "
        "or an absolute path; in a run file a relative path is relative to the file's "
        "directory, made absolute when the CLI reads it); executors clone it into a local "
        "cache. Default: each executor's --workspace (or --repo).",
    )
    branch: BranchName | None = Field(
        None, description="The run's branch (default: autopack/RUN_ID)."
    )
    budgets: Budgets = Field(default_factory=Budgets)
    policy: Policy = Field(default_factory=Policy)
    tiers: list[TierDefinition] = Field(min_length=1, max_length=MAX_TIERS)

    @field_validator("repository")
    @classmethod
    def _one_repository_for_every_executor(
        cls, value: str | None, info: ValidationInfo
    ) -> str | None:
        base = (info.context or {}).get(RUN_FILE_DIRECTORY)
        return value if value is None else repository_from(base, value)

    @model_validator(mode="after")
    def _unique_ids(self) -> RunDefinition:
        if self.phase_count() > MAX_PHASES:
            raise ValueError(
                f"a run has at most {MAX_PHASES} phases, this one has {self.phase_count()}"
            )
        _no_duplicates("tier_id", [tier.tier_id for tier in self.tiers])
        _no_duplicates("phase_id", [phase.phase_id for tier in self.tiers for phase in tier.phases])
        return self

    def phase_count(self) -> int:
        return sum(len(tier.phases) for tier in self.tiers)


def default_branch(run_id: str) -> str:
    """The branch of a run whose definition names none."""
    return f"autopack/{run_id}"


def _no_duplicates(field: str, values: Sequence[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {field} {value!r} (ids must be unique in a run)")
        seen.add(value)


def _find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """One dependency cycle as a path that returns to its start, or [] when acyclic.

    Depth-first with an explicit stack: a chain of thousands of phases declared in reverse
    order is as deep as it is long, which recursion (Python's limit: 1000) cannot walk.
    """
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in graph:
        if start in state:
            continue
        path: list[str] = [start]
        position: dict[str, int] = {start: 0}
        pending: list[Iterator[str]] = [iter(graph.get(start, []))]
        state[start] = 1
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                done = path.pop()
                del position[done]
                state[done] = 2
                pending.pop()
            elif state.get(dep) == 1:
                return [*path[position[dep] :], dep]
            elif dep not in state:
                state[dep] = 1
                position[dep] = len(path)
                path.append(dep)
                pending.append(iter(graph.get(dep, [])))
    return []


# -- errors that name the field and the value ----------------------------------------------


def parse_run_definition(
    data: Any, *, source: str | None = None, directory: Path | None = None
) -> RunDefinition:
    """Validate already-parsed data; raise :class:`InvalidInput` naming fields and values.
    ``directory``: the run file's, which a relative ``repository`` is relative to."""
    where = f" in {source}" if source else ""
    if not isinstance(data, dict):
        raise InvalidInput(
            f"invalid run definition{where}: expected one mapping with run_id and tiers, "
            f"got {type(data).__name__}"
        )
    try:
        return RunDefinition.model_validate(data, context={RUN_FILE_DIRECTORY: directory})
    except ValidationError as exc:
        described = describe_errors(exc.errors(), data, model=RunDefinition)
        raise InvalidInput(
            f"invalid run definition{where}: {summarize_errors(described)}", errors=described
        ) from exc


RUN_FILE_DIRECTORY = "run_file_directory"
"""Validation context: the directory of the run file being read (none over HTTP)."""


def repository_from(directory: Path | None, repository: str) -> str:
    """:func:`_checked_repository`; read from a file (``directory`` given: the client's
    side), a local path's symlinks resolved too (:func:`~autopack.repoident.resolve_local`:
    a link and its target are one repository to the branch check, and only the machine
    whose path it is can tell)."""
    checked = _checked_repository(directory, repository)
    return checked if directory is None else resolve_local(checked)


_HELPER = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9+.-]*)::")
"""``NAME::ADDRESS``: git hands ADDRESS to the program ``git-remote-NAME`` (git's rule)."""
_LOCAL_HELPERS = frozenset({"ext", "fd"})
"""The helpers git itself ships that reach no repository: ``ext::sh -c CMD`` runs CMD
(git's default ``protocol.ext.allow=never`` is all that stopped it, and a user's
``protocol.allow=always`` lifts that), ``fd::N`` talks to descriptor N of the executor's
git (a drain hung the whole git timeout on ``fd::5``)."""


def _checked_repository(directory: Path | None, repository: str) -> str:
    """A ``repository`` as every executor must read it.

    A relative local path means the directory next to the run file (the rule a ``.env``'s
    relative SQLite path follows: relative to the file that says it), so it is made
    absolute when the file is read; stored as given, each executor resolved it against
    its own working directory. Sent over HTTP, with no file to be relative to, it is
    refused (``~`` too: it would be the server's home). URLs stay as given:
    ``scheme://…`` and, by git's rule, scp-like ``[user@]host:path`` (a colon before any
    slash). A control character (a newline a YAML ``>`` block adds) is refused: no
    repository is named with one, and stored, it failed only at the first clone. So is
    git's ``ext::`` or ``fd::`` remote helper (:data:`_LOCAL_HELPERS`).
    """
    control = next((c for c in repository if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if control is not None:
        raise ValueError(f"{repository!r} holds a control character ({control!r})")
    helper = _HELPER.match(repository)
    if helper is not None and helper["name"].lower() in _LOCAL_HELPERS:
        raise ValueError(
            f"{repository!r} names git's {helper['name']}:: remote helper, which is no "
            "repository but a command (ext::) or this machine's file descriptors (fd::) "
            "on every executor that clones it: give a URL or a path"
        )
    if "://" in repository:
        return _url(repository)
    colon = repository.find(":")
    if colon > 0 and "/" not in repository[:colon]:
        return _scp_like(repository, repository[:colon], repository[colon + 1 :])
    try:
        path = Path(repository) if directory is None else Path(repository).expanduser()
    except RuntimeError:  # ~name, and no user of that name here: a traceback, before
        raise ValueError(f"{repository!r}: no such user's home on this machine") from None
    if path.is_absolute():
        return str(path)
    if directory is None:
        raise ValueError(
            f"{repository!r} is a relative path, which each executor would resolve against "
            "its own working directory: give a URL or an absolute path (`autopack run "
            "create FILE` makes a run file's relative path absolute against the file's "
            "directory; one read from a pipe has none)"
        )
    return str(paths.as_the_system_means(directory / path))


def repository_option(value: str) -> str:
    """``--repo`` read as a run file's ``repository`` is, against the working directory
    (git clones in the cache directory, so a relative path must not reach it): a path
    made absolute (an existing one with its symlinks resolved), a URL checked; exit 2
    naming ``--repo``."""
    try:
        remote = repository_from(Path.cwd(), value)
    except ValueError as exc:
        raise InvalidInput(f"--repo {exc}") from None
    local = paths.absolute(Path(remote), "--repo")  # first: exists() raised on too long a name
    return str(local) if local.exists() else remote


_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>[^/]*)(?P<path>.*)", re.S)


def _url(repository: str) -> str:
    """A ``scheme://host/path`` as given, once it names what git needs: a host (``https://``
    alone cloned as "Could not resolve host"), and for ``file://`` an absolute path (git
    ignores a file URL's host: ``file://code`` failed with "no path specified" and
    ``file://code/repo`` would be ``/repo``)."""
    url = _URL.fullmatch(repository)
    if url is None:
        raise ValueError(f"{repository!r} is neither a URL (scheme://host/path) nor a path")
    if url["scheme"].lower() != "file":
        if not url["host"]:
            raise ValueError(f"{repository!r} names no host")
        return repository
    if url["host"] not in ("", "localhost") or not url["path"].strip("/"):
        raise ValueError(
            f"{repository!r}: a file URL holds an absolute path, file:///path/to/repo (a "
            "relative path needs no URL: write the path itself)"
        )
    return repository


def _scp_like(repository: str, host: str, path: str) -> str:
    """``[user@]host:path`` as given, unless it is not one: a Windows drive path (``C:\\x``:
    git here reads a host ``C``), ``file:path`` (a host named ``file``), or no path."""
    if len(host) == 1 and host.isalpha():
        raise ValueError(
            f"{repository!r} is a Windows path, which git here reads as host {host!r}: give "
            "this machine's path (/…) or a URL"
        )
    if host.lower() == "file":
        raise ValueError(f"{repository!r} is not a file URL: write file:///path/to/repo")
    if not path:
        raise ValueError(f"{repository!r} names no path on host {host!r}")
    return repository


def run_json_schema() -> dict[str, Any]:
    """The JSON Schema served at ``GET /schemas/run``."""
    schema = RunDefinition.model_json_schema()
    schema["$id"] = "autopack/run-definition"
    return schema
