"""Text from outside Autopack as console markup that shows it and is never obeyed.

A provider's or proxy's error page, a check's output (code the LLM wrote), a Builder's
summary, an auditor's issues: printed as they came, their markup was escaped but their
control characters went through to the operator's terminal (``ESC ] 0 ;`` retitled it,
``ESC [ 2 J`` erased it, ``ESC ] 52 ;`` writes the clipboard in many terminals). Every
place the CLI prints such text escapes it with :func:`escape`, which also takes the
secrets out (:mod:`autopack.redact`): a proxy's error page may quote the request's key, a
``--repo`` URL its token; the table of a drain's outcomes showed them as they came.
"""

from __future__ import annotations

from rich.markup import escape as escape_markup

from autopack import redact
from autopack.bounds import spelled_controls


def escape(text: str) -> str:
    """``text`` redacted, with its markup escaped and each control character spelled
    ``\\x1b`` (a carriage return, which Rich dropped before, is dropped: CRLF output stays
    clean)."""
    return escape_markup(spelled_controls(redact.text(text)))
