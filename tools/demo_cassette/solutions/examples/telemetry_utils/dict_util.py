"""Helpers for nested dictionaries; inputs are never mutated."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge recursively; values from ``override`` win, nested dicts are merged."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def flatten_dict(data: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}. Empty nested dicts are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dict(value, sep, path))
        else:
            flat[path] = value
    return flat


def unflatten_dict(data: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """The inverse of :func:`flatten_dict`."""
    nested: dict[str, Any] = {}
    for path, value in data.items():
        node = nested
        *parents, leaf = path.split(sep)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def get_path(data: Mapping[str, Any], path: str, default: Any = None, sep: str = ".") -> Any:
    """get_path({'a': {'b': 1}}, 'a.b') -> 1; ``default`` when any step is missing."""
    node: Any = data
    for part in path.split(sep):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def pick(data: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Only ``keys`` (those present), in the order given."""
    return {key: data[key] for key in keys if key in data}


def omit(data: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Everything but ``keys``."""
    dropped = set(keys)
    return {key: value for key, value in data.items() if key not in dropped}


def invert(data: Mapping[str, Hashable]) -> dict[Hashable, str]:
    """Swap keys and values; raises ValueError when two keys share a value."""
    inverted: dict[Hashable, str] = {}
    for key, value in data.items():
        if value in inverted:
            raise ValueError(f"value {value!r} appears under {inverted[value]!r} and {key!r}")
        inverted[value] = key
    return inverted
