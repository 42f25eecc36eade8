import unittest

from examples.telemetry_utils.text_stats import text_stats


class TextStatsTest(unittest.TestCase):
    def test_counts_and_top_words(self) -> None:
        stats = text_stats("the cat\nthe dog and the bird\n", top=2)
        self.assertEqual((stats.lines, stats.words), (2, 7))
        self.assertEqual(stats.top_words, [("the", 3), ("and", 1)])
        self.assertEqual(stats.average_word_length, 3.14)

    def test_empty_text(self) -> None:
        stats = text_stats("")
        self.assertEqual((stats.lines, stats.words, stats.average_word_length), (0, 0, 0.0))
        self.assertEqual(stats.top_words, [])


if __name__ == "__main__":
    unittest.main()
