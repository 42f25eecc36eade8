"""The token estimator the executor calls: features (and model) → p50, p90 and ``max_tokens``.

An estimator is a data file (``autopack/data/estimator/``, or ``AUTOPACK_ESTIMATOR_FILE``),
never code, so calibration can propose a new one as a reviewable file. Two schemas load:

* schema 1 (:mod:`~autopack.estimation.linear`): the packaged default
  ``coefficients-v1.json``; budget = p90 x buffer;
* schema 2 (:mod:`~autopack.estimation.predictive`): what ``autopack telemetry calibrate
  --write`` produces; a predictive distribution per call, per model family, and the budget
  at a quantile: ``target_truncation`` 0.02 means "truncate one call in fifty".

``p50``/``p90`` are always what they say (the median and the 90th percentile of the
predicted output), so the telemetry they are recorded in can score them as such.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from autopack.bounds import unreadable_value
from autopack.errors import ConfigError, InvalidInput
from autopack.estimation.features import PhaseFeatures
from autopack.estimation.linear import LinearModel, stratum_key
from autopack.estimation.predictive import Distribution, PredictiveModel
from autopack.paths import absolute, read_text_file, write_atomic

DecidedBy = Literal["estimate", "floor", "ceiling"]

PACKAGED_FILE = "coefficients-v1.json"
DEFAULT_TARGET = 0.02
__all__ = ["PACKAGED_FILE", "DecidedBy", "Estimate", "TokenEstimator", "stratum_key"]


@dataclass(frozen=True)
class Estimate:
    """One prediction. ``decided_by`` says which bound chose the budget.

    ``exceeds_model_max``: the budget the target asks for is above the model's maximum
    output, so even the largest allowed ``max_tokens`` truncates more often than the
    target: split this phase (fewer deliverables per phase) rather than retry it.
    ``wanted`` is that uncapped budget; ``quantile`` the predictive quantile it sits at
    (``None`` for the schema-1 rule p90 x buffer); ``fit`` which parameter set answered.
    """

    p50: int
    p90: int
    budget: int
    decided_by: DecidedBy
    version: str
    exceeds_model_max: bool = False
    wanted: int = 0
    quantile: float | None = None
    fit: str = "v1"


class TokenEstimator:
    """A validated estimator file of either schema; the executor's single entry point."""

    def __init__(
        self, document: dict[str, Any], *, source: str = "<memory>", clamp: bool = False
    ) -> None:
        """``clamp``: a fitted schema-2 document, its out-of-range numbers set to their
        bounds in ``document`` (a file on disk is refused instead)."""
        schema = document.get("schema", 1)
        version = document.get("version")
        if isinstance(version, str) and not version.isprintable():
            # it is recorded with every estimation event: a NUL cannot be stored
            raise ConfigError(f"estimator file {source}: version {version!r} must be printable")
        self.source = source
        self.linear: LinearModel | None = None
        self.predictive: PredictiveModel | None = None
        if isinstance(schema, bool) or not isinstance(schema, int):
            # true == 1 in Python: "schema": true loaded as schema 1 and was refused for
            # a missing margin; 2.0 == 2 loaded a file its own writer never writes
            shown = json.dumps(schema)
            raise ConfigError(f"estimator file {source}: unknown schema {shown} (1 or 2)")
        if schema == 1:
            self.linear = LinearModel(document, source=source)
        elif schema == 2:
            self.predictive = PredictiveModel(document, source, clamp=clamp)
        else:
            raise ConfigError(f"estimator file {source}: unknown schema {schema!r} (1 or 2)")
        self.schema: int = int(schema)
        self._doc = json.loads(json.dumps(document))
        self.version: str = str(document["version"])

    # -- loading and saving -------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | None = None) -> TokenEstimator:
        """Read an estimator file; ``None`` means the one shipped in the package."""
        if path is None:
            packaged = resources.files("autopack") / "data" / "estimator" / PACKAGED_FILE
            text = packaged.read_text(encoding="utf-8")
            return cls(_parse(text, PACKAGED_FILE), source=f"package:{PACKAGED_FILE}")
        try:
            text = read_text_file(Path(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read estimator file {path}: {exc}") from exc
        return cls(_parse(text, str(path)), source=str(path))

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(json.dumps(self._doc))
        return result

    def dumps(self) -> str:
        """The file text: one line per stratum/cell, so a diff shows what moved."""
        if self.linear is not None:
            return self.linear.dumps()
        return _compact(self._doc) + "\n"

    def write(self, path: Path) -> None:
        """Write the file whole or not at all (through a symlink: its target), so a drain
        never loads half an estimator; a path that cannot be written is a ConfigError."""
        target = absolute(Path(path), "estimator file")
        if target.exists() and not target.is_file():
            raise ConfigError(f"cannot write estimator file {path}: not a regular file")
        try:
            write_atomic(target, self.dumps().encode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot write estimator file {path}: {exc.strerror or exc}") from exc

    # -- the estimate --------------------------------------------------------------------

    @property
    def target_truncation(self) -> float | None:
        """The file's target truncation rate (schema 2), ``None`` for the p90 x buffer rule."""
        return None if self.predictive is None else self.predictive.target_truncation

    def distribution(self, features: PhaseFeatures, model: str | None = None) -> Distribution:
        """The predictive lognormal of this call's output (schema 1: implied by p90 ratio)."""
        if self.predictive is not None:
            return self.predictive.distribution(features, model)
        assert self.linear is not None
        key = stratum_key(features.category, features.complexity, features.deliverable_count)
        sigma = self.linear.sigma(key)
        mu = math.log(max(self.linear.p50_exact(features), 1.0))
        return Distribution(mu, sigma, sigma, 0.0, "v1", "v1")

    def estimate(
        self,
        features: PhaseFeatures,
        *,
        model_max_output: int,
        model: str | None = None,
        target_truncation: float | None = None,
    ) -> Estimate:
        """p50, p90 and the budget for one Builder call, capped at ``model_max_output``.

        ``model``: the Builder model (a dated id or an alias; both find the same family).
        ``target_truncation`` overrides the file's target; on a schema-1 file it switches
        from p90 x buffer to the same quantile rule on the lognormal the p90 ratio implies.
        """
        if model_max_output < 1:
            raise InvalidInput(f"model_max_output must be positive, got {model_max_output}")
        if target_truncation is not None and not 0.0 < target_truncation < 0.5:
            raise InvalidInput(f"target_truncation must be in (0, 0.5), got {target_truncation}")
        quantile: float | None = None
        if self.linear is not None and target_truncation is None:
            numbers = self.linear.budget(features)
            p50, p90, wanted, fit = numbers.p50, numbers.p90, numbers.wanted, "v1"
            floor = self.linear.floor
        else:
            dist = self.distribution(features, model)
            target = target_truncation or self.target_truncation or DEFAULT_TARGET
            quantile = 1.0 - target
            margin, floor = 0.0, self.linear.floor if self.linear is not None else 1
            if self.predictive is not None:
                margin, floor = self.predictive.margin_sd, self.predictive.floor
            p50 = max(1, round(dist.median))
            p90 = max(p50, round(dist.quantile(0.9)))
            wanted = max(p90, math.ceil(dist.quantile(quantile, margin)))
            fit = dist.fit
        decided_by: DecidedBy = "estimate"
        budget = wanted
        if wanted < floor:
            budget, decided_by = floor, "floor"
        if budget > model_max_output:
            budget, decided_by = model_max_output, "ceiling"
        return Estimate(
            p50=p50,
            p90=p90,
            budget=budget,
            decided_by=decided_by,
            version=self.version,
            exceeds_model_max=wanted > model_max_output,
            wanted=wanted,
            quantile=quantile,
            fit=fit,
        )


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: JSON's own, or an int of 5000 digits
        reason = unreadable_value(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ConfigError(f"estimator file {source} is not valid JSON: {reason}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"estimator file {source} must be a JSON object")
    return document


def _compact(value: Any, indent: int = 0) -> str:
    """JSON with every object whose values are all scalars or flat lists on one line
    (one line per cell, stratum or model offset), and long lists of text one per line."""
    pad = "  " * (indent + 1)
    if isinstance(value, list) and len(json.dumps(value)) > 100:
        items = [f"{pad}{_compact(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    if isinstance(value, dict) and value and not _is_leaf(value):
        items = [f"{pad}{json.dumps(k)}: {_compact(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, list) and value and any(isinstance(x, dict | list) for x in value):
        items = [f"{pad}{_compact(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    return json.dumps(value, ensure_ascii=False)


def _is_leaf(value: dict[str, Any]) -> bool:
    def flat(x: Any) -> bool:
        return not isinstance(x, dict | list) or (
            isinstance(x, list) and not any(isinstance(y, dict | list) for y in x)
        )

    return all(flat(x) for x in value.values())
