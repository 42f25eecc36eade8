"""What a truth file (``python -m bench.estimator --truth FILE``) may say, checked before
anything is drawn from it.

The sampler draws with numpy and ``math``: a NaN or negative weight, a zero median, a
sigma of a million, an unknown deliverable kind or ``max_attempts: 0`` ended in a
traceback deep inside the run (``Probabilities contain NaN``, ``math range error``,
``IndexError``). Each check here names the field instead, so ``main`` can exit 2 with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from autopack.estimation.features import BUCKETS, KINDS, TOKENS_MAX

WEIGHT_MAX = 1e6
FACTOR_MAX = 100.0
SIGMA_MAX = 5.0
"""Above this exp(sigma x z) overflows a float for the draws a benchmark makes."""


class TruthError(ValueError):
    """A truth file field that cannot be used, named by its path (``strata.a/b.sigma``)."""


def _number(path: str, value: Any, low: float, high: float, *, above: bool = False) -> float:
    """A finite JSON number in [low, high] (``above``: strictly greater than ``low``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > low if above else value >= low) and value <= high:
        return float(value)
    interval = f"{'(' if above else '['}{_show(low)}, {_show(high)}]"
    raise TruthError(f"{path} must be a number in {interval}, got {value!r}")


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e12 else f"{bound:g}"


def _integer(path: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    raise TruthError(f"{path} must be an integer in [{low}, {high}], got {value!r}")


def _object(path: str, value: Any, *, keys: tuple[str, ...] | None = None) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TruthError(f"{path} must be a JSON object, got {value!r}")
    unknown = sorted(set(value) - set(keys)) if keys is not None else []
    if unknown:
        raise TruthError(f"{path} has unknown key(s) {unknown} (known: {list(keys or ())})")
    return value


def _weights(path: str, weights: Mapping[str, Any]) -> dict[str, float]:
    """Sampling weights: each finite and >= 0, and not all zero."""
    found = {k: _number(f"{path}.{k}", v, 0, WEIGHT_MAX) for k, v in weights.items()}
    if not any(found.values()):
        raise TruthError(f"{path} needs at least one weight above 0, got {dict(weights)!r}")
    return found


def _strata(doc: Mapping[str, Any]) -> None:
    if "strata" not in doc:
        raise TruthError("strata is missing (per category/complexity cell: median, sigma)")
    strata = _object("strata", doc["strata"])
    if not strata:
        raise TruthError("strata must name at least one category/complexity cell")
    for key, raw in strata.items():
        parts = key.split("/")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise TruthError(f"strata key {key!r} must be 'category/complexity'")
        where = f"strata.{key}"
        cell = _object(where, raw)
        for field in ("median", "sigma"):
            if field not in cell:
                raise TruthError(f"{where}.{field} is missing")
        _number(f"{where}.median", cell["median"], 0, TOKENS_MAX, above=True)
        _number(f"{where}.sigma", cell["sigma"], 0, SIGMA_MAX, above=True)
        _number(f"{where}.weight", cell.get("weight", 1.0), 0, WEIGHT_MAX)
        _number(f"{where}.deliverable_exponent", cell.get("deliverable_exponent", 1.0), 0, 3)
        factors = _object(f"{where}.bucket_factor", cell.get("bucket_factor", {}), keys=BUCKETS)
        for bucket, factor in factors.items():
            _number(f"{where}.bucket_factor.{bucket}", factor, 0, FACTOR_MAX, above=True)
        for model, v in _object(f"{where}.verbosity", cell.get("verbosity", {})).items():
            _number(f"{where}.verbosity.{model}", v, 0, FACTOR_MAX, above=True)
    _weights("strata (weight)", {k: c.get("weight", 1.0) for k, c in strata.items()})


def _phases(doc: Mapping[str, Any]) -> None:
    for name, raw in _object("categories", doc.get("categories", {})).items():
        where = f"categories.{name}"
        spec = _object(where, raw, keys=("kinds", "new_share"))
        kinds = _object(f"{where}.kinds", spec.get("kinds", {"python": 1.0}), keys=KINDS)
        _weights(f"{where}.kinds", kinds)
        _number(f"{where}.new_share", spec.get("new_share", 0.5), 0, 1)
    buckets = _object("deliverables", doc.get("deliverables", {}), keys=BUCKETS)
    weights = _weights("deliverables", {b: buckets.get(b, 1.0) for b in BUCKETS})
    if weights["6+"] > 0:
        _integer("max_deliverables", doc.get("max_deliverables", 10), 6, 1000)
    kb = _object("existing_kb", doc.get("existing_kb", {"low": 0.5, "high": 40}))
    for field in ("low", "high"):
        if field not in kb:
            raise TruthError(f"existing_kb.{field} is missing")
    low = _number("existing_kb.low", kb["low"], 0, 1e6, above=True)
    _number("existing_kb.high", kb["high"], low, 1e6)


def _models(doc: Mapping[str, Any]) -> None:
    models = _object("models", doc.get("models") or {"model": {}})
    for name, raw in models.items():
        where = f"models.{name}"
        spec = _object(where, raw, keys=("verbosity", "max_output_tokens"))
        _number(f"{where}.verbosity", spec.get("verbosity", 1.0), 0, FACTOR_MAX, above=True)
        cap = spec.get("max_output_tokens", 64_000)
        _integer(f"{where}.max_output_tokens", cap, 1, TOKENS_MAX)

    def known(path: str, model: Any) -> str:
        if not isinstance(model, str) or model not in models:
            raise TruthError(f"{path} {model!r} is not one of models {sorted(models)}")
        return model

    train = doc.get("train") or [{"model": m, "share": 1.0} for m in models]
    if not isinstance(train, list):
        raise TruthError(f"train must be a list of {{model, share | phases}}, got {train!r}")
    by_phases = all(isinstance(t, dict) and "phases" in t for t in train)
    amounts: dict[str, Any] = {}
    for i, raw in enumerate(train):
        item = _object(f"train[{i}]", raw, keys=("model", "share", "phases"))
        known(f"train[{i}].model", item.get("model"))
        if by_phases:
            amounts[f"[{i}]"] = _integer(f"train[{i}].phases", item["phases"], 0, 10**9)
        else:
            amounts[f"[{i}]"] = item.get("share", 1.0)
    _weights("train (phases)" if by_phases else "train (share)", amounts)
    score = _object("score", doc.get("score") or {})
    for model in score:
        known("score model", model)
    if score:
        _weights("score", score)


def check_truth(doc: Any) -> None:
    """Raise :class:`TruthError` naming the first field the benchmark cannot draw from."""
    if not isinstance(doc, dict):
        raise TruthError("a truth file is a JSON object")
    _strata(doc)
    _phases(doc)
    _models(doc)
    _number("attempt_sigma", doc.get("attempt_sigma", 0.05), 0, SIGMA_MAX)
    _number("check_failure_rate", doc.get("check_failure_rate", 0.0), 0, 1)
    _integer("max_attempts", doc.get("max_attempts", 3), 1, 100)
    _number("escalation_factor", doc.get("escalation_factor", 1.5), 1, FACTOR_MAX)
