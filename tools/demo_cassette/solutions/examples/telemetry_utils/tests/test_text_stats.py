from examples.telemetry_utils.text_stats import text_stats


def test_counts_and_top_words() -> None:
    stats = text_stats("the cat\nthe dog and the bird\n", top=2)
    assert (stats.lines, stats.words) == (2, 7)
    assert stats.top_words == [("the", 3), ("and", 1)]
    assert stats.average_word_length == 3.14


def test_empty_text() -> None:
    stats = text_stats("")
    assert (stats.lines, stats.words, stats.average_word_length) == (0, 0, 0.0)
    assert stats.top_words == []
