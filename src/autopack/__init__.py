"""Autopack: run autonomous LLM coding work reliably.

Importing the package touches no file, no environment variable and no database.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autopack")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
