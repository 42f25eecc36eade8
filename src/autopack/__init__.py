"""Autopack: run autonomous LLM coding work reliably.

Importing the package touches no file, no environment variable and no database, and
loads nothing: ``__version__`` is read from the installed metadata when first asked for
(``importlib.metadata`` costs 50 ms, paid by every command and every process Autopack
starts, and the window in which Ctrl-C met an import no handler of ours covered).
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module 'autopack' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("autopack")
    except PackageNotFoundError:  # running from a source tree without installation
        found = "0.0.0+source"
    globals()["__version__"] = found
    return found
