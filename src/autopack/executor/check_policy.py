"""Which checks an executor agrees to run: the ``--allow-check-prefix`` allow-list.

A run file is code: its checks are shell commands that every executor draining it runs.
An operator who shares a fleet can restrict their executors to known programs; a phase
with a check outside the list is refused as soon as its attempt starts, before any LLM
call or any command (:class:`~autopack.executor.attempt.Attempt`): handed back untried
for an executor that allows the check, and the drain stops naming it (exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence

_SHELL_OPERATORS = (";", "&", "|", "`", "$(", "${", ">", "<", "\n", "\r")


class CheckPolicy:
    """An executor's allow-list (``--allow-check-prefix``, ``AUTOPACK_ALLOW_CHECK_PREFIX``).

    A run file is code: its checks are shell commands every executor that drains it runs.
    An operator who shares a fleet with other operators can restrict what their executors
    run: a check is allowed only when it is one of the prefixes or starts with one
    followed by a space (``python -m pytest`` allows ``python -m pytest -q tests/``, not
    ``python -m pytestx``), and contains no shell operator that would chain another
    command (``; & | ` $( ${ > <`` or a newline). What an allowed program then does is
    not limited: ``pytest`` runs the workspace's code (SECURITY.md).
    """

    def __init__(self, prefixes: Sequence[str]) -> None:
        self.prefixes = tuple(p.strip() for p in prefixes if p.strip())

    @classmethod
    def parse(cls, setting: str | None) -> CheckPolicy | None:
        """From the setting (prefixes separated by ``;``); None when unset: any check."""
        if setting is None or not setting.strip():
            return None
        return cls(setting.split(";"))

    def refused(self, commands: Sequence[str]) -> list[str]:
        """The commands this policy does not allow."""
        return [c for c in commands if not self._allows(c.strip())]

    def _allows(self, command: str) -> bool:
        if any(operator in command for operator in _SHELL_OPERATORS):
            return False
        return any(command == p or command.startswith(p + " ") for p in self.prefixes)

    def refusal(self, checks: Sequence[str]) -> str | None:
        """Why a phase with these checks may not run here, or None."""
        refused = self.refused(checks)
        if not refused:
            return None
        return (
            f"this executor does not run the check(s) {refused}: they are not allowed by "
            f"--allow-check-prefix {list(self.prefixes)} (shell operators are never "
            "allowed); drain this phase with an executor that allows them"
        )
