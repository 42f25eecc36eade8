import pytest

from examples.telemetry_utils.number_util import (
    clamp,
    format_bytes,
    gcd,
    is_prime,
    lcm,
    percent,
    round_half_up,
)


def test_clamp() -> None:
    assert clamp(5, 0, 10) == 5
    assert clamp(-1, 0, 10) == 0
    assert clamp(11, 0, 10) == 10
    with pytest.raises(ValueError):
        clamp(1, 10, 0)


def test_primes() -> None:
    assert [n for n in range(20) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19]


def test_gcd_lcm() -> None:
    assert gcd(12, 18) == 6
    assert lcm(4, 6) == 12
    assert lcm(0, 5) == 0


def test_rounding_and_percent() -> None:
    assert round_half_up(2.5) == 3.0
    assert round_half_up(2.675, 2) == 2.68
    assert percent(1, 3) == 33.3
    assert percent(1, 0) == 0.0


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 * 1024**3) == "5.0 GiB"
    with pytest.raises(ValueError):
        format_bytes(-1)
