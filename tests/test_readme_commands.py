"""Every ``autopack …`` command line the README quotes names a command and flags that
exist: a new user types them as written, and a renamed flag or command left in the README
is an error they meet first."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.support import REPO, cli

ROOT_OPTIONS = {"--database-url", "--api-url"}
"""Options of ``autopack`` itself, valid before or after the command; they take a value."""
FLAG = re.compile(r"^--?[a-zA-Z][\w-]*$")


def _quoted_commands(readme: str) -> list[str]:
    """The README's ``autopack …`` lines: in bash blocks (comments cut off) and inline."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL):
        for line in block.splitlines():
            code = re.split(r"\s#\s", line)[0]
            if (at := code.find("autopack ")) >= 0 and not code.lstrip().startswith("#"):
                lines.append(code[at:])
    lines += re.findall(r"`(autopack [^`]+)`", readme)
    return lines


def _invocations(line: str) -> list[tuple[list[str], list[str]]]:
    """``(command words, flags)`` of each command a line names: ``a b x | y`` is ``a b x``
    and ``a y`` (the README's way of listing sibling commands)."""
    tokens = shlex.split(line.replace("[", " ").replace("]", " ").replace("…", " "))[1:]
    alternatives: list[list[str]] = [[]]
    for token in tokens:
        if token == "|":
            alternatives.append([])
        else:
            alternatives[-1].append(token)
    found: list[tuple[list[str], list[str]]] = []
    for n, parts in enumerate(alternatives):
        words: list[str] = []
        flags: list[str] = []
        values = iter(parts)
        for part in values:
            if part in ROOT_OPTIONS:
                next(values, None)
            elif FLAG.match(part):
                flags.append(part)
            elif not flags and re.fullmatch(r"[a-z][a-z0-9-]*", part):
                words.append(part)
        if n > 0:  # a sibling of the first alternative's command
            words = found[0][0][:-1] + words
        found.append((words, flags))
    return found


def test_every_command_line_the_readme_quotes_names_flags_that_exist(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    wanted: dict[tuple[str, ...], set[str]] = {}
    for line in _quoted_commands(readme):
        for words, flags in _invocations(line):
            wanted.setdefault(tuple(words), set()).update(flags)
    assert ("drain", "run") in wanted and ("telemetry", "calibrate") in wanted, wanted
    wrong = []
    for command, options in sorted(wanted.items()):
        shown = cli(*command, "--help", cwd=tmp_path)
        if shown.returncode != 0:
            wrong.append(f"autopack {' '.join(command)}: {shown.stderr.strip()[-300:]}")
            continue
        missing = sorted(
            f for f in options if not re.search(rf"(?<![\w-]){f}(?![\w-])", shown.stdout)
        )
        if missing:
            wrong.append(f"autopack {' '.join(command)}: no {', '.join(missing)}")
    assert not wrong, "\n".join(wrong)
