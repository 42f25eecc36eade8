import unittest
from datetime import date

from examples.telemetry_utils.date_util import (
    add_business_days,
    days_between,
    humanize_days,
    is_weekend,
    month_range,
    parse_iso_date,
    quarter_of,
)


class DateUtilTest(unittest.TestCase):
    def test_parse_iso_date(self) -> None:
        self.assertEqual(parse_iso_date(" 2024-02-29 "), date(2024, 2, 29))
        with self.assertRaisesRegex(ValueError, "2024-13-01"):
            parse_iso_date("2024-13-01")

    def test_business_days_skip_weekends(self) -> None:
        friday = date(2024, 3, 1)
        self.assertTrue(is_weekend(date(2024, 3, 2)))
        self.assertEqual(add_business_days(friday, 1), date(2024, 3, 4))
        self.assertEqual(add_business_days(date(2024, 3, 4), -1), friday)
        self.assertEqual(add_business_days(friday, 0), friday)

    def test_ranges_and_quarters(self) -> None:
        self.assertEqual(month_range(2024, 2), (date(2024, 2, 1), date(2024, 2, 29)))
        self.assertEqual(days_between(date(2024, 1, 1), date(2024, 3, 1)), 60)
        self.assertEqual([quarter_of(date(2024, m, 1)) for m in (1, 4, 7, 12)], [1, 2, 3, 4])

    def test_humanize_days(self) -> None:
        self.assertEqual(
            [humanize_days(d) for d in (0, 1, -1, 5, -3)],
            ["today", "tomorrow", "yesterday", "in 5 days", "3 days ago"],
        )


if __name__ == "__main__":
    unittest.main()
