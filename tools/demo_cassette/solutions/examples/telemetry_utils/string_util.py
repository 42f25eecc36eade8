"""Small, dependency-free string helpers."""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^a-z0-9]+")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def slugify(text: str, separator: str = "-") -> str:
    """Lower-case ASCII slug: 'Héllo, World!' -> 'hello-world'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _NON_WORD.sub(separator, ascii_text.lower()).strip(separator)


def truncate(text: str, width: int, suffix: str = "...") -> str:
    """Cut ``text`` to at most ``width`` characters, ending with ``suffix`` when cut."""
    if width < 0:
        raise ValueError("width must be >= 0")
    if len(text) <= width:
        return text
    if width <= len(suffix):
        return suffix[:width]
    return text[: width - len(suffix)].rstrip() + suffix


def camel_to_snake(name: str) -> str:
    """'parseHTTPResponse' -> 'parse_http_response'."""
    return _CAMEL_BOUNDARY.sub("_", name).lower()


def snake_to_camel(name: str, upper_first: bool = False) -> str:
    """'parse_http_response' -> 'parseHttpResponse' (or 'ParseHttpResponse')."""
    parts = [p for p in name.split("_") if p]
    if not parts:
        return ""
    head = parts[0].capitalize() if upper_first else parts[0].lower()
    return head + "".join(p.capitalize() for p in parts[1:])


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return " ".join(text.split())


def word_count(text: str) -> int:
    """Number of words (runs of letters, digits or apostrophes)."""
    return len(re.findall(r"[\w']+", text))


def is_palindrome(text: str) -> bool:
    """True when the letters and digits read the same both ways, ignoring case."""
    letters = [c.lower() for c in text if c.isalnum()]
    return letters == letters[::-1]
