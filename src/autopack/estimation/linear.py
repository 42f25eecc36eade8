"""The token estimator: chooses each Builder call's ``max_tokens`` from a coefficients file.

The coefficients are data (``autopack/data/estimator/coefficients-v1.json``, overridable with
``AUTOPACK_ESTIMATOR_FILE``), never code, so calibration can rewrite them as a reviewable
patch. The model is deliberately linear in the coefficients::

    p50    = (overhead[category][complexity]
              + sum over deliverables of marginal[kind][new]
                                      or marginal[kind][modify] + marginal[kind][per_kb] * KB)
             * margin
    p90    = p50 * p90_ratio[category/complexity/bucket]   (or p90_ratio.default)
    budget = clamp(p90 * buffer, floor, model_max_output)

Being linear, every estimate is a dot product of a *design row* (what the phase contains) and
the coefficient values; :meth:`TokenEstimator.design` exposes that row so calibration fits
exactly the function that predicts.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from autopack.errors import ConfigError, InvalidInput
from autopack.estimation.features import KINDS, PhaseFeatures, bucket_of, normalize_label

DecidedBy = Literal["estimate", "floor", "ceiling"]
ParamKey = tuple[str, str, str]
"""("overhead", category, complexity) or ("marginal", kind, "new" | "modify" | "per_kb")."""

PACKAGED_FILE = "coefficients-v1.json"
COMPLEXITIES = ("low", "medium", "high")
MARGINAL_FIELDS = ("new", "modify", "per_kb")
WILDCARD = "*"


@dataclass(frozen=True)
class Estimate:
    """One prediction. ``decided_by`` says which bound chose the budget."""

    p50: int
    p90: int
    budget: int
    decided_by: DecidedBy
    version: str


def stratum_key(category: str, complexity: str, deliverable_count: int) -> str:
    """The key of a report/p90 stratum: ``category/complexity/bucket`` (normalized)."""
    return (
        f"{normalize_label(category)}/{normalize_label(complexity)}/{bucket_of(deliverable_count)}"
    )


class TokenEstimator:
    """A validated coefficients document plus the arithmetic that turns features into budgets."""

    def __init__(self, document: dict[str, Any], *, source: str = "<memory>") -> None:
        self._doc = copy.deepcopy(document)
        self.source = source
        _validate(self._doc, source)
        self.version: str = self._doc["version"]

    # -- loading and saving -------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | None = None) -> TokenEstimator:
        """Read a coefficients file; ``None`` means the one shipped in the package."""
        if path is None:
            packaged = resources.files("autopack") / "data" / "estimator" / PACKAGED_FILE
            text = packaged.read_text(encoding="utf-8")
            return cls(_parse(text, PACKAGED_FILE), source=f"package:{PACKAGED_FILE}")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read estimator coefficients {path}: {exc}") from exc
        return cls(_parse(text, str(path)), source=str(path))

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(self._doc)

    def dumps(self) -> str:
        """The file text: stable layout so a calibration diff shows only changed numbers."""
        return json.dumps(self._doc, indent=2) + "\n"

    def write(self, path: Path) -> None:
        Path(path).write_text(self.dumps(), encoding="utf-8")

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

    # -- the estimate --------------------------------------------------------------------

    def estimate(self, features: PhaseFeatures, *, model_max_output: int) -> Estimate:
        """p50, p90 and the clamped budget for one Builder call."""
        if model_max_output < 1:
            raise InvalidInput(f"model_max_output must be positive, got {model_max_output}")
        raw = self.p50_exact(features)
        key = stratum_key(features.category, features.complexity, features.deliverable_count)
        p50 = max(1, round(raw))
        p90 = max(p50, round(raw * self.p90_ratio(key)))
        wanted = math.ceil(p90 * self.buffer)
        decided_by: DecidedBy = "estimate"
        budget = wanted
        if wanted < self.floor:
            budget, decided_by = self.floor, "floor"
        if budget > model_max_output:
            budget, decided_by = model_max_output, "ceiling"
        return Estimate(
            p50=p50, p90=p90, budget=budget, decided_by=decided_by, version=self.version
        )

    # -- deriving new coefficients (calibration) -----------------------------------------

    def with_changes(
        self,
        values: dict[ParamKey, float],
        *,
        p90_default: float | None = None,
        p90_strata: dict[str, float] | None = None,
        version: str | None = None,
    ) -> TokenEstimator:
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
        return TokenEstimator(doc, source="<calibrated>")


def _add(row: dict[ParamKey, float], key: ParamKey, amount: float) -> None:
    row[key] = row.get(key, 0.0) + amount


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"estimator coefficients {source} are not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"estimator coefficients {source} must be a JSON object")
    return document


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
