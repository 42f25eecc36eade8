import pytest

from examples.telemetry_utils.dict_util import (
    deep_merge,
    flatten_dict,
    get_path,
    invert,
    omit,
    pick,
    unflatten_dict,
)


def test_deep_merge_does_not_mutate() -> None:
    base = {"a": {"x": 1, "y": 2}, "b": 1}
    merged = deep_merge(base, {"a": {"y": 3}, "c": 4})
    assert merged == {"a": {"x": 1, "y": 3}, "b": 1, "c": 4}
    assert base == {"a": {"x": 1, "y": 2}, "b": 1}


def test_flatten_round_trip() -> None:
    nested = {"a": {"b": {"c": 1}}, "d": 2}
    assert flatten_dict(nested) == {"a.b.c": 1, "d": 2}
    assert unflatten_dict(flatten_dict(nested)) == nested


def test_get_path_pick_omit() -> None:
    data = {"a": {"b": 1}, "c": 2}
    assert get_path(data, "a.b") == 1
    assert get_path(data, "a.x", default="?") == "?"
    assert pick(data, ["c", "z"]) == {"c": 2}
    assert omit(data, ["a"]) == {"c": 2}


def test_invert_refuses_duplicates() -> None:
    assert invert({"a": 1, "b": 2}) == {1: "a", 2: "b"}
    with pytest.raises(ValueError):
        invert({"a": 1, "b": 1})
