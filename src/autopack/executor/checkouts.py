"""The run's branch checked out in a person's work tree: moved with its files, or not yet.

``git update-ref`` moves a branch without looking at the work trees that have it checked
out (``git checkout autopack/RUN`` in the workspace, or ``git worktree add DIR
autopack/RUN`` to read the code, as the README suggests). Their files and index stayed at
the old head, so ``git status`` there showed every newly accepted phase's files as staged
deletions, and the next ``git commit -a`` there put that reversal on the run's branch.
Git refuses the same for a push (``receive.denyCurrentBranch``); its ``updateInstead`` is
what :func:`carry` does: each such work tree is brought to the new head first with ``git
read-tree -m -u OLD NEW``, a two-tree merge that keeps the person's uncommitted changes to
other files. When one cannot be (a change to a file the new commits change too, an
untracked file in the way), the branch stays where it is and the executor says so: the
accepted commits are safe under their attempt refs, attempts start from the accepted head
whatever the branch says, and the branch catches up at the next sync that can move it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from autopack.executor.git import GitError, git
from autopack.paths import file_kind, read_text_file


class BranchCheckedOut(GitError):
    """The branch is checked out in a work tree that cannot follow it yet."""


def checkouts(common: Path, workspace: Path, branch: str) -> list[Path]:
    """The work trees of the repository (git common directory ``common``, main work tree
    ``workspace``) that have ``branch`` checked out. Read from their ``HEAD`` files: one
    open per work tree instead of a git process per branch move."""
    wanted = f"ref: refs/heads/{branch}"
    heads = [(common / "HEAD", workspace)]
    for entry in sorted((common / "worktrees").glob("*")):
        try:
            heads.append((entry / "HEAD", Path(read_text_file(entry / "gitdir").strip()).parent))
        except OSError:  # removed meanwhile, or not a work tree's entry
            continue
    found = []
    for head, tree in heads:
        try:
            if read_text_file(head).strip() == wanted and tree.is_dir():
                found.append(tree)
        except OSError:
            continue
    return found


def carry(common: Path, workspace: Path, branch: str, old: str, new: str) -> None:
    """Bring every work tree that has ``branch`` checked out from ``old`` to ``new``, before
    the branch itself moves; :class:`BranchCheckedOut` naming the first that cannot (git
    changed nothing in it)."""
    for tree in checkouts(common, workspace, branch):
        if (ignored := _in_the_way(tree, old, new)) is not None:
            try:
                kind = file_kind((tree / ignored).lstat().st_mode)
            except OSError:  # moved away meanwhile
                kind = "a file"
            raise BranchCheckedOut(
                ("read-tree", "-m", "-u", old[:12], new[:12]),
                f"branch {branch} is checked out in {tree}, where the accepted head "
                f"{new[:12]} adds {ignored!r}, which is {kind} of yours there that git "
                "does not track (following the branch would overwrite it): move it away, "
                "and the branch follows then",
            )
        moved = git("read-tree", "-m", "-u", old, new, cwd=tree, check=False)
        if moved.returncode != 0:
            said = moved.stderr.decode(errors="replace").strip()
            raise BranchCheckedOut(
                ("read-tree", "-m", "-u", old[:12], new[:12]),
                f"branch {branch} is checked out in {tree}, whose files cannot follow it to "
                f"the accepted head {new[:12]} ({said}): commit or stash your changes "
                "there, or check out another branch; the branch follows then",
            )


def _in_the_way(tree: Path, old: str, new: str) -> str | None:
    """A path of ``tree`` that a file ``new`` adds would replace: ``read-tree -m -u``
    refuses to overwrite an untracked file, but not one the ``.gitignore`` matches, which
    it deems expendable. A Builder's answer is committed with ``add --force``: an answer
    writing ``pkg/local.cfg`` silently replaced the person's own ignored ``local.cfg``
    (a ``.env``, a local setting) in their checkout of the run's branch. A path in the
    checkout's index is read-tree's to judge (a staged file, or a checkout already moved
    by a drain killed before the branch was)."""
    listed = git("diff", "--name-only", "--no-renames", "--diff-filter=A", "-z", old, new, cwd=tree)
    found: list[str] = []
    for path in filter(None, listed.stdout.decode(errors="surrogateescape").split("\0")):
        parts = PurePosixPath(path).parts
        for depth in range(1, len(parts) + 1):
            here = tree.joinpath(*parts[:depth])
            if not here.is_symlink() and not here.exists():
                break
            if depth == len(parts) or here.is_symlink() or not here.is_dir():
                found.append("/".join(parts[:depth]))
                break
    if not found:
        return None
    # The whole index, not the paths as arguments: thousands of them overflow a command line.
    listed = git("ls-files", "-z", cwd=tree)
    indexed = set(listed.stdout.decode(errors="surrogateescape").split("\0"))
    return next((path for path in found if path not in indexed), None)
