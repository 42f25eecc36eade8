"""``autopack telemetry calibrate``: fit a predictive estimator from telemetry and judge it.

1. Rows become one observation per phase (:mod:`~autopack.estimation.rows`): its
   successful call, or its largest truncation bound as a censored observation.
2. The fit (:mod:`~autopack.estimation.fit`) is pooled over models with a per-family
   offset; each family with at least ``min_model_phases`` phases also gets its own fit,
   centred on the pooled one. The result is a schema-2 estimator file whose budget is the
   ``1 - target_truncation`` quantile of the predictive distribution.
3. The judgement is a **time-ordered holdout**: the latest ``holdout`` share of phases is
   predicted by the old estimator and by a fit on the earlier phases only, and scored with
   :mod:`~autopack.estimation.evaluate`. Random folds would let a phase's future leak into
   its own prediction and hide drift (a new model, a new kind of task).
4. The verdict is one line, ``write``, ``keep`` or ``wait``, with the numbers behind it.
   Nothing is written without :meth:`CalibrationResult.write`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from autopack.errors import ConfigError
from autopack.estimation.build import (
    DEFAULT_MARGIN_SD,
    DEFAULT_TARGET,
    MIN_MODEL_PHASES,
    FitOutcome,
    fit_estimator,
)
from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.evaluate import Scored, Scores, by_key, rate_text, score
from autopack.estimation.fit import Move
from autopack.estimation.rows import EstimationRow, PhaseObservation, phase_observations
from autopack.estimation.stats import above_rate

Event = EstimationRow | Mapping[str, Any]
ModelLimits = int | Mapping[str, int]
Action = Literal["write", "keep", "wait"]

DEFAULT_MODEL_MAX_OUTPUT = 128_000
MIN_FIT_PHASES = 5
"""Below this many phases nothing is fitted: the prior is returned unchanged."""
MIN_JUDGED_PHASES = 10
"""Below this many phases no holdout is taken (nothing would be left to fit)."""
MAX_FIT_PARAMETERS = 1000
"""The most parameters one fit may have. Its Hessian is dense: 2000 categories (free text a
worker may post) took 4 GB and ran for more than five minutes, unfinished; runs Autopack
writes have six categories and three complexities (about 250 parameters at most)."""


def refuse_too_many_parameters(data: Sequence[PhaseObservation]) -> None:
    """A ConfigError naming what the events hold too many of, before any fit starts (the
    count is the pooled fit's: three per cell, one per category, stratum and model)."""
    cells = {o.cell for o in data}
    categories = {c.split("/")[0] for c in cells}
    strata = {o.stratum for o in data}
    families = {o.family for o in data}
    count = 3 * len(cells) + len(categories) + len(strata) + len(families)
    if count > MAX_FIT_PARAMETERS:
        raise ConfigError(
            f"the estimation events hold {len(categories)} categories, {len(cells)} "
            f"category/complexity cells, {len(strata)} strata and {len(families)} model "
            f"families: {count} parameters to fit, more than {MAX_FIT_PARAMETERS}; "
            "--run fits one run's events"
        )


def _cap(limits: ModelLimits, model: str) -> int:
    if isinstance(limits, int):
        return limits
    return int(limits.get(model, DEFAULT_MODEL_MAX_OUTPUT))


# -- the held-out verdict -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """``write`` (the new estimator is better), ``keep`` (it is not) or ``wait`` (can't tell)."""

    action: Action
    line: str


@dataclass(frozen=True)
class Holdout:
    """Old vs new on the latest phases, overall, per stratum and per model family."""

    n_train: int
    n_holdout: int
    since: str | None
    old: Scores
    new: Scores
    strata: dict[str, tuple[Scores, Scores]]
    models: dict[str, tuple[Scores, Scores]]


def _scored(
    estimator: TokenEstimator, data: Sequence[PhaseObservation], limits: ModelLimits
) -> list[Scored]:
    found = []
    for obs in data:
        cap = _cap(limits, obs.model)
        est = estimator.estimate(obs.features, model_max_output=cap, model=obs.model)
        found.append(
            Scored(
                obs.stratum,
                obs.family,
                obs.value,
                obs.censored,
                est.p50,
                est.p90,
                est.budget,
                est.exceeds_model_max,
                cap,
            )
        )
    return found


def _holdout(
    old: TokenEstimator,
    new: TokenEstimator,
    train: int,
    held: Sequence[PhaseObservation],
    limits: ModelLimits,
    escalation_factor: float,
    max_attempts: int,
) -> Holdout:
    def scores(items: list[Scored]) -> Scores:
        return score(items, escalation_factor=escalation_factor, max_attempts=max_attempts)

    before, after = _scored(old, held, limits), _scored(new, held, limits)

    def grouped(key: str) -> dict[str, tuple[Scores, Scores]]:
        a, b = by_key(before, key), by_key(after, key)
        return {k: (scores(a[k]), scores(b[k])) for k in a}

    return Holdout(
        n_train=train,
        n_holdout=len(held),
        since=held[0].ts.isoformat() if held else None,
        old=scores(before),
        new=scores(after),
        strata=grouped("stratum"),
        models=grouped("family"),
    )


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}×"


def verdict(holdout: Holdout | None, *, target: float, min_holdout: int, n_phases: int) -> Verdict:
    """The decision rule, stated so a reader can check it.

    A truncation count "meets the target" unless it rejects it (binomial test, 5 %), with
    undecided phases counted as truncated (never in the new estimator's favour). The new
    estimator is written when it meets the target and the old one does not; when both do,
    only if it reserves less; when neither does, only if it truncates less.
    """
    if holdout is None:
        return Verdict(
            "wait",
            f"wait: {n_phases} usable phases; a held-out judgement needs {MIN_JUDGED_PHASES}",
        )
    old, new = holdout.old, holdout.new
    numbers = (
        f"truncation {rate_text(old)} → {rate_text(new)}, "
        f"reservation {_times(old.reserved_per_needed)} → {_times(new.reserved_per_needed)}"
    )
    if holdout.n_holdout < min_holdout:
        return Verdict(
            "wait",
            f"wait: {numbers} — only {holdout.n_holdout} held-out phases "
            f"(need {min_holdout} to judge)",
        )
    n = holdout.n_holdout
    old_ok = above_rate(old.truncated, n, target) >= 0.05
    new_ok = above_rate(new.truncated, n, target) >= 0.05
    aim = f"the {100 * target:g} % target"
    cheaper = (new.reserved_per_needed or math.inf) < (old.reserved_per_needed or math.inf)
    action: Action
    if new_ok and not old_ok:
        action, why = "write", f"the new estimator meets {aim}, the current one does not"
    elif new_ok and old_ok:
        action = "write" if cheaper else "keep"
        why = f"both meet {aim}; the new one reserves {'less' if cheaper else 'no less'}"
    elif not old_ok and new.truncated < old.truncated:
        action, why = "write", f"neither meets {aim} yet; the new one truncates less"
    else:
        action, why = "keep", f"the new estimator does not meet {aim} and is no better"
    return Verdict(action, f"{action}: {numbers} — {why}")


# -- the result ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThinStratum:
    """A stratum with too few phases to stand on its own, and what its estimate rests on."""

    stratum: str
    phases: int
    falls_back_to: str


@dataclass(frozen=True)
class ModelInfo:
    """A model family in the data: its phases, the names it appeared under, its fit."""

    family: str
    phases: int
    names: tuple[str, ...]
    fit: str


@dataclass(frozen=True)
class CalibrationResult:
    """The proposed estimator, what the data say about it, and the verdict."""

    prior: TokenEstimator
    fitted: TokenEstimator
    target_truncation: float
    n_phases: int
    n_exact: int
    n_censored: int
    skipped: dict[str, int]
    models: tuple[ModelInfo, ...]
    thin_strata: tuple[ThinStratum, ...]
    censored_only: tuple[str, ...]
    moves: tuple[Move, ...]
    flag_sd: float
    holdout: Holdout | None
    verdict: Verdict
    min_holdout_phases: int = 20

    @property
    def changed(self) -> bool:
        return self.fitted.to_json() != self.prior.to_json()

    def diff(self, old_name: str = "a/estimator.json", new_name: str = "b/estimator.json") -> str:
        """A unified diff of the estimator file (empty: no change). Plain text: print it
        without markup (``render_diff`` gives a Rich ``Text`` that cannot be eaten)."""
        return "".join(
            difflib.unified_diff(
                self.prior.dumps().splitlines(keepends=True),
                self.fitted.dumps().splitlines(keepends=True),
                fromfile=old_name,
                tofile=new_name,
            )
        )

    def write(self, path: Path) -> None:
        """Write the new estimator file (the CLI does this only with ``--write``)."""
        self.fitted.write(path)

    def to_json(self) -> dict[str, Any]:
        h = self.holdout

        def pair(old: Scores, new: Scores) -> dict[str, Any]:
            return {"old": old.to_json(), "new": new.to_json()}

        return {
            "prior_version": self.prior.version,
            "fitted_version": self.fitted.version,
            "changed": self.changed,
            "target_truncation": self.target_truncation,
            "n_phases": self.n_phases,
            "n_exact": self.n_exact,
            "n_censored": self.n_censored,
            "skipped": dict(self.skipped),
            "models": [asdict(m) for m in self.models],
            "thin_strata": [asdict(t) for t in self.thin_strata],
            "censored_only_strata": list(self.censored_only),
            "flag_sd": self.flag_sd,
            "flagged_moves": [asdict(m) | {"z": m.z} for m in self.moves],
            "holdout": None
            if h is None
            else {
                "n_train": h.n_train,
                "n_holdout": h.n_holdout,
                "since": h.since,
                "overall": pair(h.old, h.new),
                "strata": {k: pair(*v) for k, v in h.strata.items()},
                "models": {k: pair(*v) for k, v in h.models.items()},
            },
            "verdict": {"action": self.verdict.action, "line": self.verdict.line},
            "estimator": self.fitted.to_json(),
        }


def calibrate(
    events: Iterable[Event],
    prior: TokenEstimator,
    *,
    holdout: float = 0.2,
    target_truncation: float | None = None,
    margin_sd: float = DEFAULT_MARGIN_SD,
    min_phases: int = 10,
    min_model_phases: int = MIN_MODEL_PHASES,
    min_holdout_phases: int = 20,
    flag_sd: float = 3.0,
    model_max_output: ModelLimits = DEFAULT_MODEL_MAX_OUTPUT,
    escalation_factor: float = 1.5,
    max_attempts: int = 3,
) -> CalibrationResult:
    """Fit a schema-2 estimator on every phase and judge it on the latest ones.

    ``holdout``: share of phases (the latest) scored but not used by the judged fit.
    ``target_truncation``: default the prior file's, else 2 %. ``margin_sd``: standard
    errors added to the budget quantile. ``min_phases``: a stratum with fewer phases is
    reported as resting on its cell (or the global level). ``min_model_phases``: a model
    family needs this many phases for its own fit. ``min_holdout_phases``: fewer held-out
    phases give "wait". ``flag_sd``: report parameters that moved more prior standard
    deviations than this. ``model_max_output``: the ceiling per model name (or one for
    all). ``escalation_factor``/``max_attempts``: the executor's retry policy, for the
    waste measure.
    """
    target = target_truncation or prior.target_truncation or DEFAULT_TARGET
    if not 0.0 < target <= 0.5:  # what an estimator file may hold (a prior's 0.5 was refused)
        raise ValueError(f"target_truncation must be a probability in (0, 0.5], got {target}")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout}")
    data, skipped = phase_observations(events)
    refuse_too_many_parameters(data)

    def refit(rows: Sequence[PhaseObservation]) -> FitOutcome:
        return fit_estimator(
            rows,
            prior,
            target_truncation=target,
            margin_sd=margin_sd,
            min_model_phases=min_model_phases,
        )

    outcome = refit(data) if len(data) >= MIN_FIT_PHASES else None
    # at least one phase once there are enough to judge: round(0.05 x 10) is 0, and the
    # verdict then said "10 usable phases; a held-out judgement needs 10"
    held_n = max(1, round(holdout * len(data))) if len(data) >= MIN_JUDGED_PHASES else 0
    judged: Holdout | None = None
    if held_n and len(data) - held_n >= MIN_FIT_PHASES:
        train, held = data[:-held_n], data[-held_n:]
        judged = _holdout(
            prior,
            refit(train).estimator,
            len(train),
            held,
            model_max_output,
            escalation_factor,
            max_attempts,
        )
    return CalibrationResult(
        prior=prior,
        fitted=outcome.estimator if outcome is not None else prior,
        target_truncation=target,
        n_phases=len(data),
        n_exact=sum(not o.censored for o in data),
        n_censored=sum(o.censored for o in data),
        skipped=skipped,
        models=_models(data, outcome),
        thin_strata=_thin(outcome, min_phases),
        censored_only=_censored_only(outcome),
        moves=_moves(outcome, flag_sd),
        flag_sd=flag_sd,
        holdout=judged,
        verdict=verdict(judged, target=target, min_holdout=min_holdout_phases, n_phases=len(data)),
        min_holdout_phases=min_holdout_phases,
    )


def _models(data: Sequence[PhaseObservation], outcome: FitOutcome | None) -> tuple[ModelInfo, ...]:
    families: dict[str, list[PhaseObservation]] = {}
    for obs in data:
        families.setdefault(obs.family, []).append(obs)

    def how(family: str) -> str:
        if outcome is not None and family in outcome.per_model:
            return "own fit"
        return "pooled (the only model)" if len(families) == 1 else "pooled + model offset"

    return tuple(
        ModelInfo(family, len(rows), tuple(sorted({o.model for o in rows})), how(family))
        for family, rows in sorted(families.items())
    )


def _thin(outcome: FitOutcome | None, min_phases: int) -> tuple[ThinStratum, ...]:
    if outcome is None:
        return ()
    counts = outcome.pooled.counts
    found = []
    for stratum in outcome.pooled.strata:
        phases = counts.get(stratum, (0, 0))[0]
        if phases < min_phases:
            cell = stratum.rsplit("/", 1)[0]
            enough = counts.get(cell, (0, 0))[0] >= min_phases
            found.append(ThinStratum(stratum, phases, f"cell {cell}" if enough else "global level"))
    return tuple(found)


def _censored_only(outcome: FitOutcome | None) -> tuple[str, ...]:
    """Strata whose every phase was cut off: their estimate rests on lower bounds alone."""
    if outcome is None:
        return ()
    counts = outcome.pooled.counts
    return tuple(
        k for k in outcome.pooled.strata if counts.get(k, (0, 0))[0] == counts.get(k, (0, 0))[1] > 0
    )


def _moves(outcome: FitOutcome | None, flag_sd: float) -> tuple[Move, ...]:
    """Parameters the data pushed beyond ``flag_sd`` prior sds (per-family fits prefixed)."""
    if outcome is None:
        return ()
    fits = {"": outcome.pooled, **{f"{k} ": v for k, v in outcome.per_model.items()}}
    moves = [
        Move(prefix + m.name, m.prior, m.fitted, m.prior_sd)
        for prefix, fitted in fits.items()
        for m in fitted.moves()
        if abs(m.z) > flag_sd
    ]
    return tuple(sorted(moves, key=lambda m: -abs(m.z)))
