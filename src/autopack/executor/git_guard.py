"""What a phase's checks may not change in git, as they found it, or the attempt fails.

Checks run the LLM's code in a checkout of the executor's repository. Two things there
outlive them and reach far beyond the attempt: the repository's git configuration (a
command git runs in every later git command, :mod:`autopack.executor.config_guard`) and
the run's refs (its branch and the refs keeping completed commits,
:mod:`autopack.executor.ref_guard`). Both are put back when the checks end, however they
end; when they had changed, the attempt fails with a stop reason naming which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from autopack.executor.config_guard import config_restored
from autopack.executor.outcome import failed
from autopack.executor.ref_guard import refs_restored
from autopack.executor.repository import RunRepository
from autopack.paths import directory_identity


@contextmanager
def git_guarded(
    checkout: Path, repository: RunRepository, run_id: str, accepted: Callable[[], str | None]
) -> Iterator[None]:
    """Run the block (the checks) with git's configuration and the run's refs put back
    after it; raise a ``failed`` Finish when the block ended normally having changed them
    (an exception of the block's own goes on as it is)."""
    # The configuration first (the inner block ends first): the refs are put back by git
    # run in the checkout, which a check may have pointed at a repository of its own.
    home = directory_identity(checkout)
    with (
        refs_restored(repository, run_id, accepted, checkout) as refs,
        config_restored(checkout) as config,
    ):
        yield
    if directory_identity(checkout) != home:
        repository.check_present()  # not the checks: the whole cache was wiped
        # Nothing more is done in it: committed from, reused or moved aside, its files
        # and git steps were those of wherever it now leads (a person's project).
        raise failed(
            "checkout_replaced_by_checks",
            feedback="The checks replaced the directory they ran in (removed or moved it, "
            "or put a symlink in its place). Checks must leave their working directory "
            "where it is.",
        )
    for reason, what, changed in (
        ("git_config_changed_by_checks", "the repository's git configuration", config.changed),
        ("git_refs_changed_by_checks", "the run's git refs", refs.changed),
    ):
        if changed:
            raise failed(
                reason,
                feedback=f"The checks changed {what} ("
                + ", ".join(changed)[:500]
                + "); Autopack put back what it could. Checks must not change git's "
                "configuration or refs.",
            )
