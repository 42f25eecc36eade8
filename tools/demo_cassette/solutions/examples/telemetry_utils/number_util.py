"""Small numeric helpers with explicit edge cases."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def clamp(value: float, low: float, high: float) -> float:
    """``value`` limited to the closed interval [low, high]."""
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    return max(low, min(value, high))


def is_prime(n: int) -> bool:
    """Deterministic primality test by trial division (fine for n < 10**12)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def gcd(a: int, b: int) -> int:
    """Greatest common divisor, always >= 0."""
    return math.gcd(a, b)


def lcm(a: int, b: int) -> int:
    """Least common multiple; 0 when either argument is 0."""
    return abs(a * b) // math.gcd(a, b) if a and b else 0


def round_half_up(value: float, digits: int = 0) -> float:
    """School rounding: 2.5 -> 3.0 and 2.675 -> 2.68 (unlike round())."""
    quantum = Decimal(1).scaleb(-digits)
    return float(Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_UP))


def percent(part: float, whole: float, digits: int = 1) -> float:
    """``part`` as a percentage of ``whole``, rounded half up; 0.0 when whole is 0."""
    if whole == 0:
        return 0.0
    return round_half_up(100.0 * part / whole, digits)


def format_bytes(size: int) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB', 0 -> '0 B'."""
    if size < 0:
        raise ValueError("size must be >= 0")
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
