import pytest

from examples.telemetry_utils.list_util import (
    chunk,
    first,
    flatten,
    interleave,
    partition,
    unique,
    window,
)


def test_chunk() -> None:
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunk([], 3) == []
    with pytest.raises(ValueError):
        chunk([1], 0)


def test_flatten_keeps_strings_whole() -> None:
    assert flatten([1, [2, (3, [4])], "ab"]) == [1, 2, 3, 4, "ab"]


def test_unique_keeps_first_occurrence() -> None:
    assert unique([3, 1, 3, 2, 1]) == [3, 1, 2]


def test_partition_window_interleave_first() -> None:
    assert partition(lambda n: n % 2 == 0, range(6)) == ([0, 2, 4], [1, 3, 5])
    assert window([1, 2, 3], 2) == [(1, 2), (2, 3)]
    assert window([1], 2) == []
    assert interleave([1, 2, 3], "ab") == [1, "a", 2, "b", 3]
    assert first([], default="none") == "none"
    assert first(iter([7, 8])) == 7
