"""Statistics of a text: counts, most common words, reading time."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

WORDS_PER_MINUTE = 200
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class TextStats:
    lines: int
    words: int
    characters: int
    average_word_length: float
    top_words: list[tuple[str, int]]
    reading_minutes: float


def text_stats(text: str, top: int = 5) -> TextStats:
    """Count lines, words and characters; the ``top`` most common words (ties alphabetical)."""
    words = _WORD.findall(text.lower())
    counts = Counter(words)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    average = round(sum(map(len, words)) / len(words), 2) if words else 0.0
    return TextStats(
        lines=len(text.splitlines()),
        words=len(words),
        characters=len(text),
        average_word_length=average,
        top_words=ranked,
        reading_minutes=round(len(words) / WORDS_PER_MINUTE, 2),
    )
