"""The deliverables contract and write safety: may this answer touch the workspace, and how?

:func:`plan_change` turns a parsed answer into the exact final contents of every file it
writes, or refuses it with a stop reason and feedback for the Builder:

* ``unsafe_path``: absolute, ``..``, backslashes, NUL (:mod:`autopack.paths`), or a
  symlink through which the resolved path leaves the scope or the workspace;
* ``path_outside_scope``: not under one of the phase's ``scope.paths`` (the legacy "T1" fix:
  paths are relative to the workspace root and keep the scope's directory prefix);
* ``path_conflict``: a file over a directory, below a file, a symlink or a submodule, or a
  directory deleted;
* ``file_too_large``, ``answer_too_large`` (all files together);
  ``edit_not_applicable`` (search text absent or ambiguous);
* ``missing_deliverable``: every deliverable must appear in the answer.

Deleting a file, or changing an existing file that is not a deliverable, is allowed only
after a human approves: those are listed in :attr:`Change.needs_approval`.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from autopack import paths
from autopack.bounds import JSON_ITEMS_MAX, MAX_BODY_BYTES
from autopack.builder.output import BuilderOutput, BuilderRejected
from autopack.rundef import Scope

DEFAULT_MAX_FILE_BYTES = 256 * 1024
DEFAULT_MAX_ANSWER_BYTES = 4 * 1024 * 1024
MAX_ANSWER_PATHS = JSON_ITEMS_MAX // 10
"""Files one answer may write, edit or delete. A change needing approval is held in the
approval's context, at up to five JSON values a path, which refuses more than
``JSON_ITEMS_MAX``: 30,000 empty files and one overwrite ended the attempt
``executor_error`` (a ValidationError of the approval request) after the whole answer was
planned. Counted before any path is looked at, it is ``answer_too_large`` feedback."""
MAX_PATHS_BYTES = 4 * 1024 * 1024
"""How long one answer's paths may be together, as the attempt's result lists them (JSON,
each character outside ASCII escaped). Only their number was bounded: 5,000 paths of
3,800 bytes made the result over the API's ``MAX_BODY_BYTES``, refused (413) after the
commit was made, and the drain stopped with the phase handed back, at every try."""
MAX_HELD_BYTES = MAX_BODY_BYTES - 64 * 1024
"""How large a change needing approval may be as the approval request holds it (JSON,
each character outside ASCII escaped: a control character six bytes), leaving room for the
rest of the request. Only the files' UTF-8 bytes were bounded: 4 MB of them made a request
over the API's ``MAX_BODY_BYTES``, refused (413), and the attempt ended ``executor_error``
with no word to the Builder."""


@dataclass(frozen=True)
class PlannedWrite:
    path: str
    content: str
    existed: bool


@dataclass(frozen=True)
class Change:
    """What applying the answer would do, fully computed before anything is written."""

    writes: tuple[PlannedWrite, ...]
    deletes: tuple[str, ...]
    needs_approval: tuple[str, ...]
    summary: str

    def to_json(self) -> dict[str, Any]:
        """The form stored in an approval request, so an approved change can be applied later."""
        return {
            "writes": [
                {"path": w.path, "content": w.content, "existed": w.existed} for w in self.writes
            ],
            "deletes": list(self.deletes),
            "needs_approval": list(self.needs_approval),
            "summary": self.summary,
        }

    def approval_reason(self, limit: int) -> str:
        """:attr:`needs_approval` as one line of at most ``limit`` characters (the request's
        column): an answer overwriting hundreds of files made a longer one, refused by the
        request's model, and the attempt ended as an ``executor_error``. Those left off are
        counted; the change itself lists them all."""
        shown: list[str] = []
        length = 0
        for item in self.needs_approval:
            length += len(item) + 2
            if length > limit - 40:  # room for the count of the rest
                rest = len(self.needs_approval) - len(shown)
                return "; ".join([*shown, f"and {rest} more (listed in the change)"])
            shown.append(item)
        return "; ".join(shown)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        return cls(
            writes=tuple(
                PlannedWrite(w["path"], w["content"], w["existed"]) for w in data["writes"]
            ),
            deletes=tuple(data["deletes"]),
            needs_approval=tuple(data["needs_approval"]),
            summary=data.get("summary", ""),
        )


def safe_relative(path: str) -> str:
    """A proposed path by :func:`autopack.paths.normalize`, or ``unsafe_path`` feedback."""
    try:
        return paths.normalize(path)
    except paths.UnsafePath as exc:
        raise BuilderRejected("unsafe_path", f"The path {path!r} {exc}.") from exc


def _outside_scope(path: str, scope: Scope) -> BuilderRejected:
    hint = ""
    same_name = [d for d in scope.deliverables if PurePosixPath(d).name == PurePosixPath(path).name]
    if same_name:
        hint = f" Did you mean {same_name[0]!r}?"
    allowed = ", ".join(repr(p) for p in scope.paths) or "(none)"
    return BuilderRejected(
        "path_outside_scope",
        f"The path {path!r} is outside this phase's scope.{hint} Paths are relative to the "
        f"workspace root and must keep the scope's directory prefix; allowed: {allowed}.",
    )


def _read(workspace: Path, path: str) -> str | None:
    target = workspace / path
    if not target.is_file():
        return None
    try:
        return target.read_bytes().decode()
    except UnicodeDecodeError as exc:
        raise BuilderRejected(
            "edit_not_applicable",
            f"{path!r} is not UTF-8 text, so an edit cannot be applied to it; send its full "
            'content in "files" instead.',
        ) from exc


def _admit(raw: str, scope: Scope, workspace: Path) -> str:
    """``raw`` normalized, if it is safe, inside the scope and stays there when resolved."""
    path = safe_relative(raw)
    if not scope.allows(path):
        raise _outside_scope(path, scope)
    # With the worktree's own path (and room for the temporary name it is written under),
    # longer than the kernel takes: ENAMETOOLONG halfway through planning or writing.
    if len(os.fsencode(workspace / path)) >= paths.MAX_PATH_BYTES - 32:
        raise BuilderRejected(
            "unsafe_path",
            f"The path {path[:80]!r}… is {len(path.encode())} bytes long; with the workspace's "
            f"own location that is more than the file system takes ({paths.MAX_PATH_BYTES}). "
            "Use a shorter path.",
        )
    if not paths.resolved_inside(workspace, path, scope.paths):
        raise BuilderRejected(
            "unsafe_path",
            f"The path {path!r} leads through a symlink to a place outside this phase's "
            "scope (or outside the workspace); write the file at its real location.",
        )
    return path


def recheck(
    change: Change, scope: Scope, workspace: Path, *, gitlinks: Collection[str] = ()
) -> Change:
    """An approved change, planned on the branch as it was when approval was asked, checked
    again on the checkout it is applied to (which may hold symlinks the plan never saw)."""
    writes = {write.path: write.content for write in change.writes}
    for path in [*writes, *change.deletes]:
        _admit(path, scope, workspace)
        if (conflict := _conflict(workspace, path, writes, gitlinks)) is not None:
            raise conflict
    return change


def _conflict(
    workspace: Path, path: str, writes: Mapping[str, str], gitlinks: Collection[str]
) -> BuilderRejected | None:
    """A path the file system cannot hold as the answer asks: a directory of the workspace
    written over or deleted, or a path below a file (of the workspace, or of the answer).
    Found here, it is feedback; found while writing, it was an error halfway through.
    Nor one git cannot commit: below a symlink, or inside a submodule (``gitlinks``), where
    ``git add`` refused it after the checks had run, a ``git_error`` telling the Builder
    nothing, at every try."""
    problem = ""
    if (workspace / path).is_dir():
        verb = "written as a file" if path in writes else "deleted as a file"
        problem = f"is a directory in the workspace; it cannot be {verb} (name its files)"
    for parent in (p.as_posix() for p in PurePosixPath(path).parents[:-1]):
        if parent in writes:
            problem = f"is below {parent!r}, which your answer also writes as a file"
        elif parent in gitlinks:
            problem = (
                f"is inside {parent!r}, a git submodule (a repository of its own): this "
                "repository keeps no file there; write outside it"
            )
        elif (workspace / parent).is_symlink():
            # git never looks beyond a symlink: it would commit nothing there.
            real = paths.resolved(workspace, path)
            problem = (
                f"is below {parent!r}, which is a symlink in the workspace; git keeps no "
                f"file beyond a symlink, so use the file's real location {real!r}"
            )
        elif (workspace / parent).exists() and not (workspace / parent).is_dir():
            problem = f"is below {parent!r}, which is a file in the workspace"
    if not problem and (twin := _case_twin(workspace, path, writes)) is not None:
        problem = (
            f"differs only in case (or Unicode form) from {twin!r}: on a case-insensitive "
            "file system (and to git with core.ignorecase) they are one file, and what was "
            "written under one name was committed under the other, or not at all; write "
            f"{twin!r} itself, or choose another name"
        )
    if not problem:
        return None
    return BuilderRejected("path_conflict", f"The path {path!r} {problem}.")


def _missing(deliverable: str, written: Collection[str]) -> str:
    """A missing deliverable as the Builder is told it. One its answer wrote in another
    Unicode form (``e`` + U+0301 for ``é``) or case looks the same when printed, so the
    retry wrote it the same way again: both spellings are shown escaped."""
    twin = next((w for w in written if _folded(w) == _folded(deliverable)), None)
    if twin is None:
        return repr(deliverable)
    return (
        f"{deliverable!r} (your answer writes {twin!a}, which differs from "
        f"{deliverable!a} only in case or Unicode form: spell it exactly so)"
    )


def _folded(name: str) -> str:
    """``name`` as a case- and normalization-insensitive file system (macOS, Windows)
    tells names apart: ``Mod.py`` is ``mod.py``, and ``café`` composed is ``café``
    decomposed."""
    return unicodedata.normalize("NFC", name).casefold()


def _case_twin(workspace: Path, path: str, writes: Collection[str]) -> str | None:
    """A path of the workspace (or of the answer) that differs from ``path`` only in the
    case of its letters (or their Unicode form). Where the workspace's repository says
    ``core.ignorecase``, git took ``pkg/Mod.py`` for the tracked ``pkg/mod.py``: the phase
    completed and neither its file nor its content reached the branch; two such files on
    the branch are one on a Mac's checkout of it, the other's content lost there."""
    twin = _folded_writes(tuple(writes)).get(_folded(path), path)
    if twin != path:
        return twin
    here, parts = workspace, PurePosixPath(path).parts
    for depth, part in enumerate(parts):
        try:
            seen = os.stat(here)
        except OSError:  # not there
            return None
        names, by_fold = _folded_names(str(here), seen.st_ino, seen.st_mtime_ns)
        if part not in names:
            found = by_fold.get(_folded(part))
            return None if found is None else "/".join([*parts[:depth], found])
        here = here / part
    return None


@functools.lru_cache(maxsize=4)
def _folded_writes(writes: tuple[str, ...]) -> dict[str, str]:
    """The answer's paths by their folded form, made once per answer (not once per path:
    thousands of paths compared each with each)."""
    return {_folded(path): path for path in writes}


@functools.lru_cache(maxsize=64)
def _folded_names(
    directory: str, inode: int, mtime_ns: int
) -> tuple[frozenset[str], dict[str, str]]:
    """The names in ``directory``, and each by its folded form (a directory's inode and mtime
    change when a name is added or removed: an answer of thousands of new files in a
    large directory listed and folded it once per file)."""
    del inode, mtime_ns  # the cache's key only
    try:
        names = os.listdir(directory)
    except OSError:  # not a directory (another check says so)
        names = []
    return frozenset(names), {_folded(name): name for name in names}


def unwritable_deliverable(
    scope: Scope, workspace: Path, *, gitlinks: Collection[str] = ()
) -> str | None:
    """Why one of the phase's deliverables cannot be written on this checkout, whatever the
    Builder answers (a directory there, inside a submodule, below a file or a symlink, or
    leading out of the scope), or None. Found in the answer, each try spent an LLM call on
    feedback no answer could act on: every answer must write the deliverable, and each
    one writing it was refused."""
    for deliverable in scope.deliverables:
        path = posixpath.normpath(deliverable)
        try:
            _admit(path, scope, workspace)
            conflict = _conflict(workspace, path, {path: ""}, gitlinks)
        except BuilderRejected as exc:
            conflict = exc
        if conflict is not None:
            return (
                f"the deliverable {path!r} cannot be written on the run's branch as it is "
                f"({conflict.feedback}); change the run file's deliverables or the branch"
            )
    return None


def plan_change(
    output: BuilderOutput,
    scope: Scope,
    workspace: Path,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    gitlinks: Collection[str] = (),
) -> Change:
    """Validate the answer against the scope and the workspace (whose submodules are at
    ``gitlinks``); compute final contents."""
    if len(output.paths) > MAX_ANSWER_PATHS:
        raise BuilderRejected(
            "answer_too_large",
            f"Your answer touches {len(output.paths)} files; one answer may write, edit or "
            f"delete at most {MAX_ANSWER_PATHS}. Write fewer files.",
        )
    if (listed := len(json.dumps(output.paths))) > MAX_PATHS_BYTES:
        raise BuilderRejected(
            "answer_too_large",
            f"Your answer's paths add up to {listed} bytes; one answer's may add up to at "
            f"most {MAX_PATHS_BYTES}. Write fewer files, or give them shorter paths.",
        )
    contents: dict[str, str] = {}
    existed: dict[str, bool] = {}

    def admit(raw: str) -> str:
        return _admit(raw, scope, workspace)

    for file in output.files:
        path = admit(file.path)
        if contents.get(path, file.content) != file.content:
            raise BuilderRejected(
                "path_conflict",
                f"Your answer writes {path!r} twice, with different contents; send each file "
                "once, complete.",
            )
        contents[path] = file.content
        # lexists: a tracked symlink to nothing (yet) is an existing file all the same;
        # by exists(), a non-deliverable one was overwritten without the approval it needs
        existed.setdefault(path, os.path.lexists(workspace / path))
    for edit in output.edits:
        path = admit(edit.path)
        current = contents.get(path, _read(workspace, path))
        if current is None:
            raise BuilderRejected(
                "edit_not_applicable",
                f"You sent an edit for {path!r}, which does not exist; send its full content "
                'in "files" instead.',
            )
        count = current.count(edit.search)
        if count != 1:
            where = "does not occur" if count == 0 else f"occurs {count} times"
            raise BuilderRejected(
                "edit_not_applicable",
                f"The search text of an edit for {path!r} {where} in the file; it must match "
                "exactly once (copy it verbatim, or send the full file instead).",
            )
        contents[path] = current.replace(edit.search, edit.replace, 1)
        existed.setdefault(path, True)
    deletes = tuple(admit(path) for path in output.deletes)
    # Written then deleted, a deliverable passed the contract and was gone after applying.
    if both := [path for path in deletes if path in contents]:
        raise BuilderRejected(
            "path_conflict",
            f"Your answer both writes and deletes {both[0]!r}; do one or the other.",
        )
    for path in [*contents, *deletes]:
        if (conflict := _conflict(workspace, path, contents, gitlinks)) is not None:
            raise conflict

    total = 0
    for path, content in contents.items():
        size = len(content.encode())
        total += size
        if size > max_file_bytes:
            raise BuilderRejected(
                "file_too_large",
                f"{path!r} would be {size} bytes; the limit is {max_file_bytes}. Split it.",
            )
    if total > max_answer_bytes:
        raise BuilderRejected(
            "answer_too_large",
            f"Your files add up to {total} bytes; one answer may write at most "
            f"{max_answer_bytes}. Write fewer or smaller files.",
        )
    missing = [d for d in scope.deliverables if posixpath.normpath(d) not in contents]
    if missing:
        raise BuilderRejected(
            "missing_deliverable",
            "Every deliverable must appear in your answer with its full path; missing: "
            + ", ".join(_missing(m, contents) for m in missing)
            + ".",
        )
    deliverables = {posixpath.normpath(d) for d in scope.deliverables}
    needs_approval = [f"delete {path}" for path in deletes]
    needs_approval += [
        f"overwrite existing non-deliverable {path}"
        for path in contents
        if existed[path] and path not in deliverables
    ]
    change = Change(
        writes=tuple(PlannedWrite(p, c, existed[p]) for p, c in contents.items()),
        deletes=deletes,
        needs_approval=tuple(needs_approval),
        summary=output.summary,
    )
    if needs_approval and (held := len(json.dumps(change.to_json()))) > MAX_HELD_BYTES:
        raise BuilderRejected(
            "answer_too_large",
            f"Your answer needs a person's approval ({needs_approval[0]}), and the change "
            f"to approve would be {held} bytes as JSON; at most {MAX_HELD_BYTES} can be held "
            "for approval. Write fewer or smaller files, or leave files that are not "
            "deliverables alone.",
        )
    return change
