"""Token-estimator accuracy against a known ground truth (docs/ESTIMATOR_BENCHMARK.md).

    python -m bench.estimator --truth bench/estimator_truth.json --phases 500 --seed 1 \
        [--json OUT] [--score-phases 20000] [--continuation-overlap 128] [--margin-sd 0.5]

1. **Telemetry**: ``--phases`` phases are drawn from the truth file and run against the
   packaged default estimator the way the executor runs them (budget from the estimator,
   a truncated answer retried with the budget x escalation factor, at most ``max_attempts``
   calls, a failed check retried at the estimator's budget). Every call becomes a
   ``TokenEstimationIn`` written with the project's own writer into a real SQLite file and
   read back with ``estimation_events`` (:func:`write_and_read`).
2. **Calibration**: :func:`autopack.estimation.calibrate.calibrate` on those rows, exactly
   as ``autopack telemetry calibrate`` runs it; its fitted estimator is "calibrated".
3. **Scoring**: ``--score-phases`` fresh phases from the same truth (another seed stream)
   are scored for "default" (the packaged v1 file), "calibrated" and "oracle" (the true
   distribution's quantile at the same target, same floor and cap).

Measures (overall, per stratum ``category/complexity/bucket``, per model): truncation of
the first call; need > stated p90; reserved/needed (first-call budgets / needs); billed
waste on truncated calls / needs, with continuation off (the truncated answer is
discarded and retried with the budget x escalation factor, capped at the model maximum,
as the executor does today) and on (the truncated answer is kept and continued; each
continuation call re-emits ``--continuation-overlap`` tokens to resume from a clean
point, and only those are waste: :func:`autopack.estimation.evaluate.continuation_waste`);
SMAPE of p50.

The truth file (``bench/estimator_truth.json`` is the shipped one) describes, per
``category/complexity`` cell: ``median`` output tokens of a one-deliverable phase, ``sigma``
of log tokens, ``deliverable_exponent`` (need ∝ n^exponent), optional ``bucket_factor``
({"6+": 1.2}) and per-model ``verbosity`` overrides; per category the deliverable kinds
and new-file share; per model its verbosity and maximum output; the training schedule
(``train``: shares, or consecutive phase counts) and the scoring mix (``score``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np

from autopack.estimation.build import DEFAULT_MARGIN_SD
from autopack.estimation.calibrate import calibrate
from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.evaluate import continuation_waste, retry_waste
from autopack.estimation.features import BUCKETS, Deliverable, Kind, PhaseFeatures, bucket_of
from autopack.estimation.metrics import smape
from autopack.estimation.predictive import MARGIN_SD_MAX
from autopack.estimation.stats import binomial_upper, normal_quantile
from autopack.telemetry.events import TokenEstimationIn
from bench.truth_checks import TruthError, check_truth

_PATHS: dict[str, str] = {
    "python": "src/pkg/mod{}.py",
    "test": "tests/test_mod{}.py",
    "doc": "docs/page{}.md",
    "config": "config/conf{}.toml",
    "frontend": "web/view{}.ts",
    "sql": "db/q{}.sql",
    "other": "misc/file{}.txt",
}
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


# -- the truth --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    category: str
    complexity: str
    weight: float
    median: float
    sigma: float
    exponent: float
    bucket_factor: dict[str, float]
    verbosity: dict[str, float]


@dataclass(frozen=True)
class Phase:
    features: PhaseFeatures
    model: str
    median: float
    sigma: float

    @property
    def stratum(self) -> str:
        f = self.features
        return f"{f.category}/{f.complexity}/{bucket_of(f.deliverable_count)}"


class Truth:
    """A parsed truth file and the sampler of phases from it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.name = str(doc.get("name", "truth"))
        self.cells = [
            Cell(
                category=key.split("/")[0],
                complexity=key.split("/")[1],
                weight=float(c.get("weight", 1.0)),
                median=float(c["median"]),
                sigma=float(c["sigma"]),
                exponent=float(c.get("deliverable_exponent", 1.0)),
                bucket_factor={k: float(v) for k, v in c.get("bucket_factor", {}).items()},
                verbosity={k: float(v) for k, v in c.get("verbosity", {}).items()},
            )
            for key, c in doc["strata"].items()
        ]
        self.categories: dict[str, Any] = doc.get("categories", {})
        self.buckets = {b: float(doc.get("deliverables", {}).get(b, 1.0)) for b in BUCKETS}
        self.max_deliverables = int(doc.get("max_deliverables", 10))
        self.kb = doc.get("existing_kb", {"low": 0.5, "high": 40})
        self.attempt_sigma = float(doc.get("attempt_sigma", 0.05))
        self.check_failure = float(doc.get("check_failure_rate", 0.0))
        self.max_attempts = int(doc.get("max_attempts", 3))
        self.escalation = float(doc.get("escalation_factor", 1.5))
        self.models: dict[str, dict[str, Any]] = doc.get("models") or {"model": {}}
        self.train: list[dict[str, Any]] = doc.get("train") or [
            {"model": m, "share": 1.0} for m in self.models
        ]
        self.score: dict[str, float] = doc.get("score") or {
            str(t["model"]): float(t.get("share", t.get("phases", 1))) for t in self.train
        }

    def max_output(self, model: str) -> int:
        return int(self.models.get(model, {}).get("max_output_tokens", 64_000))

    def training_models(self, n: int, rng: np.random.Generator) -> list[str]:
        """Consecutive blocks when the schedule gives phase counts, else i.i.d. by share."""
        if all("phases" in t for t in self.train):
            total = sum(int(t["phases"]) for t in self.train)
            found: list[str] = []
            for t in self.train:
                found += [str(t["model"])] * round(int(t["phases"]) * n / total)
            return (found + [found[-1]] * n)[:n]
        names = [str(t["model"]) for t in self.train]
        weights = np.array([float(t.get("share", 1.0)) for t in self.train])
        return [names[i] for i in rng.choice(len(names), size=n, p=weights / weights.sum())]

    def scoring_models(self, n: int, rng: np.random.Generator) -> list[str]:
        names = list(self.score)
        weights = np.array([self.score[m] for m in names])
        return [names[i] for i in rng.choice(len(names), size=n, p=weights / weights.sum())]

    def phase(self, rng: np.random.Generator, model: str, index: int) -> Phase:
        weights = np.array([c.weight for c in self.cells])
        cell = self.cells[int(rng.choice(len(self.cells), p=weights / weights.sum()))]
        bw = np.array([self.buckets[b] for b in BUCKETS])
        bucket = BUCKETS[int(rng.choice(len(BUCKETS), p=bw / bw.sum()))]
        count = {
            "1": 1,
            "2-5": int(rng.integers(2, 6)),
            "6+": int(rng.integers(6, self.max_deliverables + 1)),
        }[bucket]
        spec = self.categories.get(cell.category, {})
        kinds: dict[str, float] = spec.get("kinds", {"python": 1.0})
        names = list(kinds)
        kw = np.array([kinds[k] for k in names])
        items = []
        for j in range(count):
            kind = cast(Kind, names[int(rng.choice(len(names), p=kw / kw.sum()))])
            is_new = bool(rng.random() < float(spec.get("new_share", 0.5)))
            low, high = math.log(self.kb["low"] * 1024), math.log(self.kb["high"] * 1024)
            size = 0 if is_new else int(math.exp(rng.uniform(low, high)))
            items.append(Deliverable(_PATHS[kind].format(f"{index}_{j}"), kind, is_new, size))
        verbosity = cell.verbosity.get(
            model, float(self.models.get(model, {}).get("verbosity", 1.0))
        )
        median = (
            cell.median * count**cell.exponent * verbosity * cell.bucket_factor.get(bucket, 1.0)
        )
        features = PhaseFeatures(cell.category, cell.complexity, tuple(items))
        return Phase(features, model, median, cell.sigma)

    def need(self, rng: np.random.Generator, phase: Phase) -> float:
        """A phase's need (one draw; each attempt then jitters it by ``attempt_sigma``)."""
        return phase.median * math.exp(phase.sigma * float(rng.standard_normal()))

    def produced(self, rng: np.random.Generator, need: float) -> float:
        """What one attempt writes: the need, jittered (a retry is a fresh answer)."""
        return need * math.exp(self.attempt_sigma * float(rng.standard_normal()))


# -- telemetry through the project's writer --------------------------------------------------


def simulate(truth: Truth, estimator: TokenEstimator, n: int, seed: int) -> list[TokenEstimationIn]:
    """Run ``n`` phases against ``estimator`` as the executor would; one event per call."""
    rng = np.random.default_rng([seed, 1])
    events: list[TokenEstimationIn] = []
    for index, model in enumerate(truth.training_models(n, rng)):
        phase = truth.phase(rng, model, index)
        need = truth.need(rng, phase)
        cap = truth.max_output(model)
        est = estimator.estimate(phase.features, model_max_output=cap, model=model)
        budget, previous_truncated = est.budget, False
        outcome_rows: list[TokenEstimationIn] = []
        for attempt in range(1, truth.max_attempts + 1):
            if previous_truncated:
                budget = max(est.budget, min(math.ceil(budget * truth.escalation), cap))
            else:
                budget = est.budget
            produced = truth.produced(rng, need)
            truncated = produced > budget
            checks_ok = truncated or rng.random() >= truth.check_failure
            success = not truncated and checks_ok
            f = phase.features
            outcome_rows.append(
                TokenEstimationIn(
                    ts=START + timedelta(minutes=10 * index + attempt),
                    run_id=f"bench-{seed}",
                    phase_id=f"p{index:05d}",
                    attempt=attempt,
                    estimator_version=est.version,
                    category=f.category,
                    complexity=f.complexity,
                    deliverable_count=f.deliverable_count,
                    deliverables_json=[d.path for d in f.deliverables],
                    features=f.to_json(),
                    predicted_output_tokens=est.p50,
                    predicted_p90_tokens=est.p90,
                    selected_budget=est.budget,
                    budget_decided_by=est.decided_by,
                    max_tokens_sent=budget,
                    actual_output_tokens=budget if truncated else max(1, round(produced)),
                    truncated=truncated,
                    stop_reason="max_tokens" if truncated else "end_turn",
                    model=model,
                    parse_success=not truncated,
                    success=success,
                )
            )
            previous_truncated = truncated
            if success:
                break
        final = "COMPLETE" if outcome_rows[-1].success else "FAILED"
        events += [row.model_copy(update={"phase_outcome": final}) for row in outcome_rows]
    return events


def write_and_read(events: Sequence[TokenEstimationIn], directory: Path) -> list[dict[str, Any]]:
    """Write the events with the project's telemetry writer to SQLite and read them back.

    The one place this benchmark touches the database: the control plane's one telemetry
    writer and reader (:mod:`autopack.control.telemetry`).
    """
    from autopack.control import telemetry
    from autopack.db import open_database

    database = open_database(
        f"sqlite:///{directory / 'estimator-bench.db'}", role="bench", create=True
    )
    try:
        for event in events:
            telemetry.record(database, event)
        return telemetry.as_mappings(telemetry.all_estimation_events(database))
    finally:
        database.close()


# -- scoring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    p50: float
    p90: float
    budget: int


class Tally:
    """Running sums of the measures for one group of scored phases."""

    def __init__(self) -> None:
        self.n = self.truncated = self.over = 0
        self.reserved = self.needed = self.waste_off = self.waste_on = self.smape = 0.0

    def add(self, call: Call, need: float, cap: int, truth: Truth, overlap: int) -> None:
        self.n += 1
        self.truncated += need > call.budget
        self.over += need > call.p90
        self.reserved += call.budget
        self.needed += need
        off, _ = retry_waste(
            call.budget, need, cap=cap, factor=truth.escalation, max_attempts=truth.max_attempts
        )
        on, _ = continuation_waste(call.budget, need, overlap=overlap)
        self.waste_off += off
        self.waste_on += on
        self.smape += smape(call.p50, need)

    def to_json(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {
            "n": self.n,
            "truncation": self.truncated / n,
            "truncation_upper95": binomial_upper(self.truncated, self.n),
            "over_p90": self.over / n,
            "reserved_per_needed": self.reserved / self.needed if self.needed else None,
            "waste_off": self.waste_off / self.needed if self.needed else None,
            "waste_on": self.waste_on / self.needed if self.needed else None,
            "smape": self.smape / n,
        }


def score(
    truth: Truth,
    estimators: dict[str, TokenEstimator | None],
    n: int,
    seed: int,
    *,
    target: float,
    floor: int,
    overlap: int,
) -> dict[str, Any]:
    """Score each estimator (``None`` = the oracle) on ``n`` fresh phases."""
    rng = np.random.default_rng([seed, 2])
    z90, zq = normal_quantile(0.9), normal_quantile(1 - target)
    tallies: dict[str, dict[str, dict[str, Tally]]] = {
        name: {"overall": {}, "strata": {}, "models": {}} for name in estimators
    }
    for index, model in enumerate(truth.scoring_models(n, rng)):
        phase = truth.phase(rng, model, index)
        need = truth.produced(rng, truth.need(rng, phase))
        cap = truth.max_output(model)
        sigma = math.hypot(phase.sigma, truth.attempt_sigma)  # the first call's spread
        for name, estimator in estimators.items():
            if estimator is None:
                wanted = math.ceil(phase.median * math.exp(zq * sigma))
                call = Call(
                    phase.median,
                    phase.median * math.exp(z90 * sigma),
                    min(max(wanted, floor), cap),
                )
            else:
                est = estimator.estimate(phase.features, model_max_output=cap, model=model)
                call = Call(est.p50, est.p90, est.budget)
            groups = tallies[name]
            for group, key in (("overall", "all"), ("strata", phase.stratum), ("models", model)):
                groups[group].setdefault(key, Tally()).add(call, need, cap, truth, overlap)
    result: dict[str, Any] = {}
    for name, groups in tallies.items():
        overall = groups["overall"]["all"].to_json()
        strata = {k: t.to_json() for k, t in sorted(groups["strata"].items())}
        judged = [s for s in strata.values() if s["n"] >= 30]
        overall["strata"] = len(strata)
        overall["strata_at_or_below_2pct"] = sum(s["truncation"] <= 0.02 for s in judged)
        overall["worst_stratum_truncation"] = max((s["truncation"] for s in judged), default=None)
        overall["strata_above_4pct"] = sum(s["truncation"] > 0.04 for s in judged)
        result[name] = {
            "overall": overall,
            "strata": strata,
            "models": {k: t.to_json() for k, t in sorted(groups["models"].items())},
        }
    return result


def load_truth(path: Path) -> Truth:
    """Read and check a truth file (:class:`TruthError` names a field it cannot use)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    check_truth(doc)
    return Truth(doc)


def run(
    truth_path: Path,
    phases: int,
    seed: int,
    *,
    score_phases: int = 20_000,
    overlap: int = 128,
    margin_sd: float = DEFAULT_MARGIN_SD,
    workdir: Path | None = None,
) -> dict[str, Any]:
    truth = load_truth(truth_path)
    default = TokenEstimator.load()
    events = simulate(truth, default, phases, seed)
    with tempfile.TemporaryDirectory(prefix="estimator-bench-") as scratch:
        rows = write_and_read(events, workdir or Path(scratch))
    limits = {m: truth.max_output(m) for m in truth.models}
    started = time.perf_counter()
    result = calibrate(
        rows,
        default,
        model_max_output=limits,
        margin_sd=margin_sd,
        escalation_factor=truth.escalation,
        max_attempts=truth.max_attempts,
    )
    seconds = time.perf_counter() - started
    target = result.target_truncation
    floor = result.fitted.predictive.floor if result.fitted.predictive is not None else 1
    scores = score(
        truth,
        {"default": default, "calibrated": result.fitted, "oracle": None},
        score_phases,
        seed,
        target=target,
        floor=floor,
        overlap=overlap,
    )
    scores["meta"] = {
        "truth": truth.name,
        "phases": phases,
        "seed": seed,
        "score_phases": score_phases,
        "continuation_overlap": overlap,
        "margin_sd": margin_sd,
        "rows": len(rows),
        "training_truncated_calls": sum(bool(r["truncated"]) for r in rows),
        "calibrate_seconds": round(seconds, 3),
        "calibrated_version": result.fitted.version,
        "verdict": result.verdict.line,
        "models": {m.family: m.fit for m in result.models},
    }
    return scores


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def margin_sd(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= MARGIN_SD_MAX:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, {MARGIN_SD_MAX}], got {text}")
    return value


def check_truth_file(parser: argparse.ArgumentParser, path: Path) -> None:
    """Exit 2 (``parser.error``) naming ``path`` and what in it cannot be used, before a
    run draws from it (a traceback deep inside the run, otherwise)."""
    try:
        load_truth(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        parser.error(f"cannot read the truth file {path}: {exc}")
    except TruthError as exc:
        parser.error(f"the truth file {path}: {exc}")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        parser.error(f"the truth file {path} is not of the expected shape: {exc!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 2 naming the argument or file for anything it cannot use, never a traceback."""
    parser = argparse.ArgumentParser(prog="python -m bench.estimator", description=__doc__)
    parser.add_argument("--truth", type=Path, required=True)
    parser.add_argument("--phases", type=at_least(1), required=True, help="Training phases.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--score-phases", type=at_least(1), default=20_000)
    parser.add_argument(
        "--continuation-overlap",
        type=at_least(0),
        default=128,
        help="Tokens each continuation call re-emits (the only waste with continuation on).",
    )
    parser.add_argument(
        "--margin-sd",
        type=margin_sd,
        default=DEFAULT_MARGIN_SD,
        help="Passed to calibrate: standard errors added to the budget quantile.",
    )
    parser.add_argument("--json", type=Path, help="Write the scores here.")
    args = parser.parse_args(argv)
    check_truth_file(parser, args.truth)
    scores = run(
        args.truth,
        args.phases,
        args.seed,
        score_phases=args.score_phases,
        overlap=args.continuation_overlap,
        margin_sd=args.margin_sd,
    )
    if args.json:
        try:
            args.json.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            parser.error(f"cannot write --json {args.json}: {exc}")
    print(f"{scores['meta']['truth']}: {args.phases} phases, seed {args.seed}")
    print(f"calibrate: {scores['meta']['verdict']} ({scores['meta']['calibrate_seconds']} s)")
    header = "estimator    trunc  >p90  reserved  waste-off  waste-on  SMAPE  strata<=2%  worst"
    print(header)
    for name in ("default", "calibrated", "oracle"):
        o = scores[name]["overall"]
        print(
            f"{name:<11} {100 * o['truncation']:5.1f}% {100 * o['over_p90']:5.1f}% "
            f"{o['reserved_per_needed']:8.2f}× {100 * o['waste_off']:8.1f}% "
            f"{100 * o['waste_on']:8.2f}% {o['smape']:6.1f} "
            f"{o['strata_at_or_below_2pct']:>5}/{o['strata']:<5} "
            f"{100 * (o['worst_stratum_truncation'] or 0):5.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
