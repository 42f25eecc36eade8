import unittest

from examples.telemetry_utils.dict_util import (
    deep_merge,
    flatten_dict,
    get_path,
    invert,
    omit,
    pick,
    unflatten_dict,
)


class DictUtilTest(unittest.TestCase):
    def test_deep_merge_does_not_mutate(self) -> None:
        base = {"a": {"x": 1, "y": 2}, "b": 1}
        merged = deep_merge(base, {"a": {"y": 3}, "c": 4})
        self.assertEqual(merged, {"a": {"x": 1, "y": 3}, "b": 1, "c": 4})
        self.assertEqual(base, {"a": {"x": 1, "y": 2}, "b": 1})

    def test_flatten_round_trip(self) -> None:
        nested = {"a": {"b": {"c": 1}}, "d": 2}
        self.assertEqual(flatten_dict(nested), {"a.b.c": 1, "d": 2})
        self.assertEqual(unflatten_dict(flatten_dict(nested)), nested)

    def test_get_path_pick_omit(self) -> None:
        data = {"a": {"b": 1}, "c": 2}
        self.assertEqual(get_path(data, "a.b"), 1)
        self.assertEqual(get_path(data, "a.x", default="?"), "?")
        self.assertEqual(pick(data, ["c", "z"]), {"c": 2})
        self.assertEqual(omit(data, ["a"]), {"c": 2})

    def test_invert_refuses_duplicates(self) -> None:
        self.assertEqual(invert({"a": 1, "b": 2}), {1: "a", 2: "b"})
        with self.assertRaises(ValueError):
            invert({"a": 1, "b": 1})


if __name__ == "__main__":
    unittest.main()
