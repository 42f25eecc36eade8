"""The v1 estimator (file schema 1): p50 linear in the coefficients, budget = p90 x buffer.

Kept because the packaged default (``coefficients-v1.json``) and any file calibrated by
earlier versions use it, and because it is the "old estimator" every new calibration is
compared against. The model::

    p50    = (overhead[category][complexity]
              + sum over deliverables of marginal[kind][new]
                                      or marginal[kind][modify] + marginal[kind][per_kb] * KB)
             * margin
    p90    = p50 * p90_ratio[category/complexity/bucket]   (or p90_ratio.default)
    budget = clamp(p90 * buffer, floor, model_max_output)

Its weakness, and why schema 2 exists: complexity is an additive overhead (it cannot scale
each file), and the budget is a fixed multiple of p90, which truncates 5-7 % of calls even
when p90 is exact at the spreads LLM output shows.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

from autopack.errors import ConfigError
from autopack.estimation.features import (
    KINDS,
    TOKENS_MAX,
    PhaseFeatures,
    bucket_of,
    normalize_label,
)

ParamKey = tuple[str, str, str]
"""("overhead", category, complexity) or ("marginal", kind, "new" | "modify" | "per_kb")."""
Z90 = 1.2815515655446004

SCHEMA = 1
COMPLEXITIES = ("low", "medium", "high")
MARGINAL_FIELDS = ("new", "modify", "per_kb")
WILDCARD = "*"


def stratum_key(category: str, complexity: str, deliverable_count: int) -> str:
    """The key of a report/p90 stratum: ``category/complexity/bucket`` (normalized)."""
    return (
        f"{normalize_label(category)}/{normalize_label(complexity)}/{bucket_of(deliverable_count)}"
    )


@dataclass(frozen=True)
class LinearBudget:
    """The v1 arithmetic's numbers before the model's ceiling is applied."""

    p50: int
    p90: int
    wanted: int


class LinearModel:
    """A validated schema-1 coefficients document plus the arithmetic on it."""

    def __init__(self, document: dict[str, Any], *, source: str = "<memory>") -> None:
        self._doc = copy.deepcopy(document)
        self.source = source
        _validate(self._doc, source)
        self.version: str = self._doc["version"]

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(self._doc)

    def dumps(self) -> str:
        """The file text: stable layout so a calibration diff shows only changed numbers."""
        return json.dumps(self._doc, indent=2) + "\n"

    # -- coefficients --------------------------------------------------------------------

    @property
    def margin(self) -> float:
        return float(self._doc["margin"])

    @property
    def buffer(self) -> float:
        return float(self._doc["buffer"])

    @property
    def floor(self) -> int:
        return int(self._doc["floor"])

    @property
    def p90_default(self) -> float:
        return float(self._doc["p90_ratio"]["default"])

    @property
    def p90_strata(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._doc["p90_ratio"]["strata"].items()}

    def p90_ratio(self, key: str) -> float:
        """The p90/p50 ratio for a stratum key, falling back to the default."""
        return float(self._doc["p90_ratio"]["strata"].get(key, self.p90_default))

    def value(self, key: ParamKey) -> float:
        """The coefficient behind a design column, with the documented fallbacks.

        Overhead: ``[category][complexity]`` → ``["*"][complexity]`` → ``[category]["medium"]``
        → ``["*"]["medium"]``, so unknown categories and complexities still get a number.
        """
        group, first, second = key
        if group == "overhead":
            table: dict[str, dict[str, float]] = self._doc["overhead"]
            row = table.get(first, {})
            star = table[WILDCARD]
            for candidate in (row.get(second), star.get(second), row.get("medium")):
                if candidate is not None:
                    return float(candidate)
            return float(star["medium"])
        if group == "marginal":
            return float(self._doc["marginal"][first][second])
        raise KeyError(key)

    def design(self, features: PhaseFeatures) -> dict[ParamKey, float]:
        """How many of each coefficient this phase contains (existing sizes in KB)."""
        row: dict[ParamKey, float] = {
            (
                "overhead",
                normalize_label(features.category),
                normalize_label(features.complexity),
            ): 1.0
        }
        for item in features.deliverables:
            if item.is_new:
                _add(row, ("marginal", item.kind, "new"), 1.0)
            else:
                _add(row, ("marginal", item.kind, "modify"), 1.0)
                if item.existing_bytes > 0:
                    _add(row, ("marginal", item.kind, "per_kb"), item.existing_bytes / 1024)
        return row

    def p50_exact(self, features: PhaseFeatures) -> float:
        """The unrounded p50 (calibration compares against this)."""
        total = sum(count * self.value(key) for key, count in self.design(features).items())
        return total * self.margin

    # -- the budget ---------------------------------------------------------------------

    def sigma(self, key: str) -> float:
        """The lognormal spread the p90 ratio implies: ln(ratio) / z(0.9)."""
        return math.log(max(self.p90_ratio(key), 1.0 + 1e-9)) / Z90

    def budget(self, features: PhaseFeatures) -> LinearBudget:
        """p50, p90 and the wanted budget p90 x buffer (the v1 rule; no quantile)."""
        raw = min(self.p50_exact(features), TOKENS_MAX)
        key = stratum_key(features.category, features.complexity, features.deliverable_count)
        p50 = max(1, round(raw))
        p90 = max(p50, round(min(raw * self.p90_ratio(key), TOKENS_MAX)))
        return LinearBudget(p50, p90, math.ceil(min(p90 * self.buffer, TOKENS_MAX)))

    # -- deriving new coefficients (calibration) -----------------------------------------

    def with_changes(
        self,
        values: dict[ParamKey, float],
        *,
        p90_default: float | None = None,
        p90_strata: dict[str, float] | None = None,
        version: str | None = None,
    ) -> LinearModel:
        """A copy with some coefficients replaced; everything else is kept byte for byte."""
        doc = copy.deepcopy(self._doc)
        for (group, first, second), number in values.items():
            doc[group].setdefault(first, {})[second] = number
        if p90_default is not None:
            doc["p90_ratio"]["default"] = p90_default
        if p90_strata:
            doc["p90_ratio"]["strata"] = dict(sorted({**self.p90_strata, **p90_strata}.items()))
        if version is not None:
            doc["version"] = version
        return LinearModel(doc, source="<calibrated>")


def _add(row: dict[ParamKey, float], key: ParamKey, amount: float) -> None:
    row[key] = row.get(key, 0.0) + amount


def _validate(doc: dict[str, Any], source: str) -> None:
    """Refuse a coefficients file that would give nonsense budgets, naming the bad field."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"estimator coefficients {source}: {message}")

    def number(value: Any, where: str, minimum: float) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < minimum:
            raise fail(f"{where} must be a number >= {minimum}, got {value!r}")

    version = doc.get("version")
    if not isinstance(version, str) or not version or len(version) > 40:
        raise fail("version must be a non-empty string of at most 40 characters")
    number(doc.get("margin"), "margin", 0.01)
    number(doc.get("buffer"), "buffer", 1.0)
    number(doc.get("floor"), "floor", 1)
    ratio = doc.get("p90_ratio")
    if not isinstance(ratio, dict) or not isinstance(ratio.get("strata"), dict):
        raise fail("p90_ratio must be an object with 'default' and 'strata'")
    number(ratio.get("default"), "p90_ratio.default", 1.0)
    for key, value in ratio["strata"].items():
        number(value, f"p90_ratio.strata[{key!r}]", 1.0)
    overhead = doc.get("overhead")
    if not isinstance(overhead, dict) or not isinstance(overhead.get(WILDCARD), dict):
        raise fail("overhead must be an object with a '*' row")
    for complexity in COMPLEXITIES:
        if complexity not in overhead[WILDCARD]:
            raise fail(f"overhead['*'] needs '{complexity}'")
    for category, row in overhead.items():
        if not isinstance(row, dict):
            raise fail(f"overhead[{category!r}] must be an object")
        for complexity, value in row.items():
            number(value, f"overhead[{category!r}][{complexity!r}]", 0)
    marginal = doc.get("marginal")
    if not isinstance(marginal, dict):
        raise fail("marginal must be an object")
    for kind in KINDS:
        row = marginal.get(kind)
        if not isinstance(row, dict):
            raise fail(f"marginal needs a row for kind {kind!r}")
        for field in MARGINAL_FIELDS:
            number(row.get(field), f"marginal[{kind!r}][{field!r}]", 0)
