import unittest

from examples.telemetry_utils.number_util import (
    clamp,
    format_bytes,
    gcd,
    is_prime,
    lcm,
    percent,
    round_half_up,
)


class NumberUtilTest(unittest.TestCase):
    def test_clamp(self) -> None:
        self.assertEqual(clamp(5, 0, 10), 5)
        self.assertEqual(clamp(-1, 0, 10), 0)
        self.assertEqual(clamp(11, 0, 10), 10)
        with self.assertRaises(ValueError):
            clamp(1, 10, 0)

    def test_primes(self) -> None:
        self.assertEqual([n for n in range(20) if is_prime(n)], [2, 3, 5, 7, 11, 13, 17, 19])

    def test_gcd_lcm(self) -> None:
        self.assertEqual(gcd(12, 18), 6)
        self.assertEqual(lcm(4, 6), 12)
        self.assertEqual(lcm(0, 5), 0)

    def test_rounding_and_percent(self) -> None:
        self.assertEqual(round_half_up(2.5), 3.0)
        self.assertEqual(round_half_up(2.675, 2), 2.68)
        self.assertEqual(percent(1, 3), 33.3)
        self.assertEqual(percent(1, 0), 0.0)

    def test_format_bytes(self) -> None:
        self.assertEqual(format_bytes(0), "0 B")
        self.assertEqual(format_bytes(1536), "1.5 KiB")
        self.assertEqual(format_bytes(5 * 1024**3), "5.0 GiB")
        with self.assertRaises(ValueError):
            format_bytes(-1)


if __name__ == "__main__":
    unittest.main()
