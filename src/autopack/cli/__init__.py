"""The ``autopack`` command line (Typer + Rich).

Every command resolves settings through the root flags and :mod:`autopack.config`, and
every deliberate error leaves with its own exit code: 2 config/identity, 3 schema.

Nothing loads before it is needed, so a person typing ``--version`` or ``--help`` does not
wait for the database and web stacks: ``--version`` imports only the package, the root app
(:mod:`autopack.cli.app`) imports Typer and lists commands from a table, and a command's
module is imported when that command runs or shows its help.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from pydantic import ValidationError


def _print_version() -> None:
    from autopack import __version__

    sys.stdout.write(f"autopack {__version__}\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command and turn its failures into exit codes.

    Standard output that refuses a write (a full disk, a closed descriptor) is one line
    on stderr and exit 1, and a reader gone (``| head``) ends the command quietly, as
    the shell's own tools end: not an ``OSError`` traceback from inside Rich.
    """
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        code = _command(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # here, not at exit, where a failure is "Exception ignored"
        sys.stdout = stdout
    except OutputFailed as exc:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (nothing more, not even the buffer)
        if exc.errno == errno.EPIPE:
            return 128 + signal.SIGPIPE
        from autopack.cli._common import FAIL, err
        from autopack.cli.shown import escape

        err.print(f"{FAIL} cannot write this command's output: {escape(exc.reason)}")
        return 1
    return code


def _command(args: list[str]) -> int:
    """Run the app; Typer itself answers usage errors (exit 2 with the usage line) and
    Ctrl-C (exit 1) and ends every command with ``SystemExit``; Autopack errors pass
    through it and are printed here as one line naming the error."""
    if args == ["--version"]:  # nothing else to load
        _print_version()
        return 0
    from pydantic import ValidationError

    from autopack.bounds import is_utf8
    from autopack.cli.app import hoist_root_options, make_app
    from autopack.errors import AutopackError, InvalidInput

    try:
        try:
            for arg in args:  # undecodable bytes (lone surrogates): no id, URL or row holds them
                if not is_utf8(arg):
                    raise InvalidInput(f"argument {arg!r} is not UTF-8 text")
            make_app()(args=hoist_root_options(args), prog_name="autopack")
        except ValidationError as exc:  # a request built from this command's arguments
            raise _invalid(exc) from exc
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except AutopackError as exc:
        from autopack import redact
        from autopack.cli._common import FAIL, err
        from autopack.cli.shown import escape

        err.print(
            f"{FAIL} [bold]{exc.__class__.__name__}[/bold]: {escape(redact.text(exc.message))}",
            highlight=False,
            soft_wrap=True,  # never break a path or URL in the middle
        )
        return exc.exit_code
    return 0


class OutputFailed(Exception):
    """Standard output refused a write: a full disk (``> report.json``), a reader gone
    (``| head``), a closed descriptor. It was an ``OSError`` traceback from deep in Rich."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.reason = error.strerror or str(error)
        self.errno = error.errno


class _Stdout:
    """``sys.stdout`` for a command: every write and flush that fails is
    :class:`OutputFailed`, which :func:`main` ends with one line on stderr (exit 1);
    everything else is the stream's own. ``None``: the command was started with its
    standard output closed (``>&-``), where Python has no stream and Rich wrote into
    nothing, exit 0; a command that writes nothing there still succeeds."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if self._stream is None:
            raise OutputFailed(OSError(errno.EBADF, "standard output is closed"))
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise OutputFailed(exc) from None

    def flush(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            raise OutputFailed(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _invalid(exc: ValidationError) -> Exception:
    """An argument the request model refuses (``--reason`` longer than the API takes, text
    that is not UTF-8): InvalidInput naming the field and the value, exit 2."""
    from autopack.errors import InvalidInput
    from autopack.field_errors import describe_errors, summarize_errors

    described = describe_errors(exc.errors())
    return InvalidInput(f"invalid input: {summarize_errors(described)}", errors=described)


def run() -> None:
    """Console-script entry point. Ctrl-C before Typer has started (while the command's
    modules load) ends the command as Typer ends it later, quietly with 130, not with a
    ``KeyboardInterrupt`` traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


__all__ = ["main", "run"]
