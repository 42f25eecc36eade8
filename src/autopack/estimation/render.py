"""What ``telemetry report`` and ``calibrate`` print, as Rich renderables that never parse markup.

Every piece of data (model names, strata, versions, the diff) goes in as a ``Text`` object,
never as a markup string: a line like ``"[v1] notes"`` or a model called ``[bold]x`` must be
printed as written, not eaten as a style tag. The printed diff had lost exactly such text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from autopack.bounds import spelled_controls
from autopack.estimation.evaluate import Scores, rate_text
from autopack.estimation.report import EstimationReport

if TYPE_CHECKING:  # ``telemetry report`` renders without loading the fit (numpy)
    from autopack.estimation.calibrate import CalibrationResult


def _t(value: object, style: str = "") -> Text:
    """``value`` as text shown, never obeyed: ``Text`` parses no markup but passed control
    characters through, so a category or model posted as ``ESC ] 0 ; ...`` retitled the
    terminal of whoever ran ``telemetry report`` (and ``ESC [ 2 J`` erased it)."""
    return Text(spelled_controls(str(value)), style=style)


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f} %"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _arrow(old: str, new: str) -> Text:
    return Text(f"{old} → {new}")


def _scores_row(key: str, old: Scores, new: Scores, note: str, style: str = "") -> list[Text]:
    return [
        _t(key, style),
        _t(new.n),
        _t(new.n_censored),
        _arrow(rate_text(old), rate_text(new)),
        _arrow(_pct(old.truncation_upper), _pct(new.truncation_upper)),
        _arrow(_pct(old.over_p90), _pct(new.over_p90)),
        _arrow(_times(old.reserved_per_needed), _times(new.reserved_per_needed)),
        _arrow(_pct(old.waste), _pct(new.waste)),
        _t(new.split or ""),
        _t(note),
    ]


def render_calibration(result: CalibrationResult) -> RenderableType:
    """Data, models, held-out old → new per stratum and model, warnings, then the verdict."""
    parts: list[RenderableType] = []
    skipped = ", ".join(f"{k}={v}" for k, v in result.skipped.items()) or "none"
    parts.append(
        _t(
            f"{result.n_phases} phases ({result.n_exact} exact, {result.n_censored} with every "
            f"attempt truncated, used as lower bounds); phases skipped: {skipped}; "
            f"target truncation {100 * result.target_truncation:g} %; "
            f"estimator {result.prior.version} → {result.fitted.version}"
        )
    )
    models = Table(title="Models in the data")
    for name in ("family", "phases", "names seen", "estimated by"):
        models.add_column(name)
    for info in result.models:
        models.add_row(_t(info.family), _t(info.phases), _t(", ".join(info.names)), _t(info.fit))
    if result.models:
        parts.append(models)
    h = result.holdout
    if h is not None:
        title = (
            f"Held out: the latest {h.n_holdout} phases (since {h.since}); old = "
            f"{result.prior.version}, new = fitted on the {h.n_train} phases before them"
        )
        table = Table(title=_t(title))
        columns = ("stratum", "n", "cut", "truncation", "≤ (95 %)", "> p90", "reserved/needed")
        for name in (*columns, "waste", "split", "note"):
            table.add_column(name, justify="left" if name in ("stratum", "note") else "right")
        judge = result.min_holdout_phases
        for key, (old, new) in h.strata.items():
            note = f"too few to judge (< {judge})" if new.n < judge else ""
            table.add_row(*_scores_row(key, old, new, note))
        if len(h.models) > 1:
            for key, (old, new) in h.models.items():
                table.add_row(*_scores_row(f"model {key}", old, new, ""))
        table.add_row(*_scores_row("overall", h.old, h.new, "", "bold"))
        parts.append(table)
        parts.append(
            _t(
                "cut: held-out phases whose every attempt was truncated (need > bound); a budget "
                "above the bound is undecided and counted as truncated. reserved/needed and "
                "waste (billed tokens of truncated attempts / tokens needed, retrying with "
                "escalation) use exactly known phases only."
            )
        )
    if result.thin_strata:
        listed = "; ".join(
            f"{t.stratum} ({t.phases} phases → {t.falls_back_to})" for t in result.thin_strata
        )
        parts.append(_t(f"Too few phases to stand alone, estimated from the level above: {listed}"))
    if result.censored_only:
        parts.append(
            _t(
                "Every phase truncated (estimate rests on lower bounds only): "
                + ", ".join(result.censored_only),
                "yellow",
            )
        )
    if result.moves:
        moves = Table(title=f"Parameters moved more than {result.flag_sd:g} prior sd")
        for name in ("parameter", "prior", "fitted", "prior sd", "moved"):
            moves.add_column(name, justify="left" if name == "parameter" else "right")
        for m in result.moves:
            moves.add_row(
                _t(m.name),
                _t(f"{m.prior:.3f}"),
                _t(f"{m.fitted:.3f}"),
                _t(f"{m.prior_sd:.3f}"),
                _t(f"{m.z:+.1f} sd"),
            )
        parts.append(moves)
    style = {"write": "bold green", "keep": "bold yellow", "wait": "bold"}[result.verdict.action]
    parts.append(_t(result.verdict.line, style))
    return Group(*parts)


def render_diff(result: CalibrationResult) -> Text:
    """The estimator-file diff as ``Text`` (+ green, - red), never interpreted as markup."""
    diff = result.diff()
    if not diff:
        return Text("(no change to the estimator file)")
    text = Text()
    for line in diff.splitlines(keepends=True):
        style = ""
        if line.startswith("+") and not line.startswith("+++"):
            style = "green"
        elif line.startswith("-") and not line.startswith("---"):
            style = "red"
        text.append(line, style=style)
    return text


def render_report(report: EstimationReport) -> Table:
    """The accuracy table of ``telemetry report``: a line per stratum, the overall one last."""
    table = Table(title="Token estimator accuracy", show_footer=False)
    for name in (
        "stratum",
        "n",
        "exact",
        "trunc",
        "under",
        "p90 cov",
        "waste p50",
        "waste p90",
        "SMAPE mean",
        "SMAPE med",
        "floor",
    ):
        table.add_column(name, justify="left" if name == "stratum" else "right")
    for stats in (*report.strata, report.overall):
        table.add_row(
            _t(stats.key),
            str(stats.n),
            str(stats.n_exact),
            _pct(stats.truncation_rate, 0),
            _pct(stats.underestimation_rate, 0),
            _pct(stats.p90_coverage, 0),
            _num(stats.waste_p50),
            _num(stats.waste_p90),
            _num(stats.smape_mean, 1),
            _num(stats.smape_median, 1),
            _pct(stats.floor_rate, 0),
            style="bold" if stats is report.overall else None,
        )
    return table
