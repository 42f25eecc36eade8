"""Helpers for sequences and iterables that keep order and never mutate their input."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from itertools import chain, zip_longest
from typing import Any, TypeVar

T = TypeVar("T")
H = TypeVar("H", bound=Hashable)
_MISSING = object()


def chunk(items: Sequence[T], size: int) -> list[list[T]]:
    """Split into lists of ``size`` items; the last one may be shorter."""
    if size <= 0:
        raise ValueError("size must be positive")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def flatten(nested: Iterable[Any]) -> list[Any]:
    """Flatten arbitrarily nested lists and tuples (strings are kept whole)."""
    flat: list[Any] = []
    for item in nested:
        if isinstance(item, list | tuple):
            flat.extend(flatten(item))
        else:
            flat.append(item)
    return flat


def unique(items: Iterable[H]) -> list[H]:
    """Drop duplicates, keeping the first occurrence of each item."""
    return list(dict.fromkeys(items))


def partition(predicate: Callable[[T], bool], items: Iterable[T]) -> tuple[list[T], list[T]]:
    """(items where predicate is true, items where it is false), order kept."""
    yes: list[T] = []
    no: list[T] = []
    for item in items:
        (yes if predicate(item) else no).append(item)
    return yes, no


def window(items: Sequence[T], size: int) -> list[tuple[T, ...]]:
    """Sliding windows: window([1, 2, 3], 2) -> [(1, 2), (2, 3)]."""
    if size <= 0:
        raise ValueError("size must be positive")
    return [tuple(items[i : i + size]) for i in range(len(items) - size + 1)]


def interleave(*sequences: Iterable[T]) -> list[T]:
    """interleave([1, 2, 3], 'ab') -> [1, 'a', 2, 'b', 3]."""
    merged = chain.from_iterable(zip_longest(*sequences, fillvalue=_MISSING))
    return [item for item in merged if item is not _MISSING]


def first(items: Iterable[T], default: T | None = None) -> T | None:
    """The first item, or ``default`` when there is none."""
    return next(iter(items), default)
