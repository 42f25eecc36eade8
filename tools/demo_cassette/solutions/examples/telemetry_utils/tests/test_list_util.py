import unittest

from examples.telemetry_utils.list_util import (
    chunk,
    first,
    flatten,
    interleave,
    partition,
    unique,
    window,
)


class ListUtilTest(unittest.TestCase):
    def test_chunk(self) -> None:
        self.assertEqual(chunk([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]])
        self.assertEqual(chunk([], 3), [])
        with self.assertRaises(ValueError):
            chunk([1], 0)

    def test_flatten_keeps_strings_whole(self) -> None:
        self.assertEqual(flatten([1, [2, (3, [4])], "ab"]), [1, 2, 3, 4, "ab"])

    def test_unique_keeps_first_occurrence(self) -> None:
        self.assertEqual(unique([3, 1, 3, 2, 1]), [3, 1, 2])

    def test_partition_window_interleave_first(self) -> None:
        self.assertEqual(partition(lambda n: n % 2 == 0, range(6)), ([0, 2, 4], [1, 3, 5]))
        self.assertEqual(window([1, 2, 3], 2), [(1, 2), (2, 3)])
        self.assertEqual(window([1], 2), [])
        self.assertEqual(interleave([1, 2, 3], "ab"), [1, "a", 2, "b", 3])
        self.assertEqual(first([], default="none"), "none")
        self.assertEqual(first(iter([7, 8])), 7)


if __name__ == "__main__":
    unittest.main()
