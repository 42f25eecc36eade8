import unittest

from examples.telemetry_utils.string_util import (
    camel_to_snake,
    is_palindrome,
    normalize_whitespace,
    slugify,
    snake_to_camel,
    truncate,
    word_count,
)


class SlugifyTest(unittest.TestCase):
    def test_slugify(self) -> None:
        cases = [("Hello World", "hello-world"), ("Héllo, Wörld!", "hello-world"),
                 ("  --a  b--  ", "a-b"), ("", "")]
        for text, slug in cases:
            with self.subTest(text=text):
                self.assertEqual(slugify(text), slug)

    def test_slugify_separator(self) -> None:
        self.assertEqual(slugify("Hello World", separator="_"), "hello_world")


class TextTest(unittest.TestCase):
    def test_truncate(self) -> None:
        self.assertEqual(truncate("hello world", 20), "hello world")
        self.assertEqual(truncate("hello world", 8), "hello...")
        self.assertEqual(truncate("hello world", 2), "..")
        with self.assertRaises(ValueError):
            truncate("x", -1)

    def test_case_conversion_round_trip(self) -> None:
        self.assertEqual(camel_to_snake("parseHTTPResponse"), "parse_http_response")
        self.assertEqual(snake_to_camel("parse_http_response"), "parseHttpResponse")
        self.assertEqual(snake_to_camel("parse_http_response", upper_first=True), "ParseHttpResponse")
        self.assertEqual(snake_to_camel(""), "")

    def test_whitespace_words_and_palindromes(self) -> None:
        self.assertEqual(normalize_whitespace("  a \n\t b  "), "a b")
        self.assertEqual(word_count("It's a test, isn't it?"), 5)
        self.assertTrue(is_palindrome("A man, a plan, a canal: Panama"))
        self.assertFalse(is_palindrome("autopack"))


if __name__ == "__main__":
    unittest.main()
