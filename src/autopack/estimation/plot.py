"""Actual vs predicted output tokens as an image: does the fit cover what phases really needed?

One point per phase (its exact need, or a hollow up-triangle at its largest truncation
bound when every attempt was cut off: the truth lies above it). Log-log axes, the y = x
line, and per estimator panel the p90 and budget *bands*: y = x times the p90/p50 and
budget/p50 ratios the estimator used (median line, min-max shaded), so points above the
budget band are the phases that estimator would truncate. Panels: the old estimator and the
new one side by side; without estimators, the predictions recorded in the rows.

Matplotlib is imported inside the function and drawn through the Agg canvas directly (no
pyplot, no global backend switch, no display), so importing this module stays cheap.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopack.errors import ConfigError
from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.rows import EstimationRow, PhaseObservation, phase_observations
from autopack.paths import absolute, write_atomic

Event = EstimationRow | Mapping[str, Any]
DEFAULT_CAP = 128_000


@dataclass(frozen=True)
class _Point:
    p50: float
    p90: float
    budget: float
    value: float
    censored: bool


def _points(
    phases: list[PhaseObservation],
    estimator: TokenEstimator | None,
    limits: int | Mapping[str, int],
) -> list[_Point]:
    found = []
    for obs in phases:
        if estimator is None:
            p50, p90, budget = obs.recorded_p50, obs.recorded_p90, obs.first_budget
            if not p50 or not p90 or not budget:
                continue
        else:
            cap = limits if isinstance(limits, int) else limits.get(obs.model, DEFAULT_CAP)
            est = estimator.estimate(obs.features, model_max_output=cap, model=obs.model)
            p50, p90, budget = est.p50, est.p90, est.budget
        found.append(_Point(float(p50), float(p90), float(budget), obs.value, obs.censored))
    return found


def plot_predicted_vs_actual(
    events: Iterable[Event],
    path: Path,
    *,
    old: TokenEstimator | None = None,
    new: TokenEstimator | None = None,
    estimator: TokenEstimator | None = None,
    model_max_output: int | Mapping[str, int] = DEFAULT_CAP,
    title: str | None = None,
) -> int:
    """Write the plot to ``path`` (a PNG, or the format its suffix names: ``.svg``,
    ``.pdf``, …); returns how many phases were plotted.

    ``old``/``new``: one panel each (``estimator`` is the old name of ``new``). With
    neither, one panel of the predictions recorded in the rows. Phases without a recorded
    prediction (recorded panel) are left out.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    phases, _ = phase_observations(events)
    new = new or estimator
    panels: list[tuple[str, TokenEstimator | None]] = [
        (label, est) for label, est in (("old", old), ("new", new)) if est is not None
    ] or [("recorded", None)]
    figure = Figure(figsize=(7 * len(panels), 6.2), dpi=100)
    FigureCanvasAgg(figure)
    kind = image_format(path)
    plotted = 0
    for index, (label, est) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        points = _points(phases, est, model_max_output)
        plotted = max(plotted, len(points))
        _panel(axes, points, Line2D)
        version = "as recorded" if est is None else est.version
        cut = sum(p.censored for p in points)
        over = sum(p.value >= p.budget for p in points)
        share = f"; {100 * over / len(points):.1f} % surely above its budget" if points else ""
        axes.set_title(
            f"{label}: {version}\nn = {len(points)} phases ({cut} cut off){share}", fontsize=10
        )
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    image = io.BytesIO()  # drawn whole first: a killed draw left half a PNG over the old
    figure.savefig(image, format=kind)
    try:
        write_atomic(absolute(Path(path), "--plot"), image.getvalue())  # a link: its target
    except OSError as exc:
        raise ConfigError(f"cannot write plot {path}: {exc}") from exc
    return plotted


def image_format(path: Path) -> str:
    """The image format ``path``'s suffix names (``png`` without one). ``x.svg`` was
    written as a PNG under that name, which no SVG viewer opens."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    supported = FigureCanvasAgg.get_supported_filetypes()
    kind = Path(path).suffix.lower().lstrip(".") or "png"
    if kind not in supported:
        known = ", ".join(f".{name}" for name in sorted(supported))
        raise ConfigError(f"cannot write plot {path}: .{kind} is not an image format ({known})")
    return kind


def _panel(axes: Any, points: list[_Point], line: Any) -> None:
    exact = [p for p in points if not p.censored]
    cut = [p for p in points if p.censored]
    values = [v for p in points for v in (p.p50, p.value, p.budget)]
    low, high = (min(values) / 1.5, max(values) * 1.5) if values else (100.0, 100_000.0)
    grid = [low, high]
    handles: list[Any] = []
    for name, colour in (("p90", "tab:orange"), ("budget", "tab:red")):
        ratios = [(p.p90 if name == "p90" else p.budget) / p.p50 for p in points]
        if not ratios:
            continue
        middle = statistics.median(ratios)
        axes.fill_between(
            grid,
            [x * min(ratios) for x in grid],
            [x * max(ratios) for x in grid],
            color=colour,
            alpha=0.12,
            linewidth=0,
        )
        axes.plot(grid, [x * middle for x in grid], color=colour, linestyle="--", linewidth=1)
        handles.append(
            line([], [], color=colour, linestyle="--", label=f"{name} band (median ×{middle:.2f})")
        )
    axes.scatter([p.p50 for p in exact], [p.value for p in exact], s=14, alpha=0.6, c="tab:blue")
    axes.scatter(
        [p.p50 for p in cut],
        [p.value for p in cut],
        marker="^",
        s=40,
        facecolors="none",
        edgecolors="black",
        zorder=3,
    )
    axes.plot(grid, grid, color="black", linewidth=1)
    handles += [
        line([], [], color="black", linewidth=1, label="y = x (p50 exact)"),
        line([], [], color="tab:blue", marker="o", linestyle="", label="phase: tokens needed"),
        line(
            [],
            [],
            color="black",
            marker="^",
            markerfacecolor="none",
            linestyle="",
            label="phase cut off every attempt (need above)",
        ),
    ]
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel("predicted median output tokens (p50)")
    axes.set_ylabel("output tokens the phase needed")
    axes.grid(True, which="both", alpha=0.25)
    if not points:
        axes.text(0.5, 0.5, "no phases with tokens yet", transform=axes.transAxes, ha="center")
    axes.legend(handles=handles, loc="upper left", fontsize=8, frameon=True)
