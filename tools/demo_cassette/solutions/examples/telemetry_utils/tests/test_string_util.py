import pytest

from examples.telemetry_utils.string_util import (
    camel_to_snake,
    is_palindrome,
    normalize_whitespace,
    slugify,
    snake_to_camel,
    truncate,
    word_count,
)


@pytest.mark.parametrize(
    ("text", "slug"),
    [("Hello World", "hello-world"), ("Héllo, Wörld!", "hello-world"), ("  --a  b--  ", "a-b"),
     ("", "")],
)
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_slugify_separator() -> None:
    assert slugify("Hello World", separator="_") == "hello_world"


def test_truncate() -> None:
    assert truncate("hello world", 20) == "hello world"
    assert truncate("hello world", 8) == "hello..."
    assert truncate("hello world", 2) == ".."
    with pytest.raises(ValueError):
        truncate("x", -1)


def test_case_conversion_round_trip() -> None:
    assert camel_to_snake("parseHTTPResponse") == "parse_http_response"
    assert snake_to_camel("parse_http_response") == "parseHttpResponse"
    assert snake_to_camel("parse_http_response", upper_first=True) == "ParseHttpResponse"
    assert snake_to_camel("") == ""


def test_whitespace_words_and_palindromes() -> None:
    assert normalize_whitespace("  a \n\t b  ") == "a b"
    assert word_count("It's a test, isn't it?") == 5
    assert is_palindrome("A man, a plan, a canal: Panama")
    assert not is_palindrome("autopack")
