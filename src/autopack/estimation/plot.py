"""Predicted vs actual output tokens as a PNG, for eyeballing where the estimator misses.

Log-log axes (phases span 100 to 100 000 tokens), one colour and marker per category, the
y = x line, and truncated calls drawn as hollow upward triangles: their actual value is a
lower bound, the truth lies somewhere above the marker.

Matplotlib is imported inside the function and drawn through the Agg canvas directly (no
pyplot, no global backend switch, no display), so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.features import features_from_event

Event = Mapping[str, Any]

_MARKERS = ("o", "s", "D", "v", "P", "X", "*", "h", "<", ">")


def plot_predicted_vs_actual(
    events: Iterable[Event],
    path: Path,
    *,
    estimator: TokenEstimator | None = None,
    title: str | None = None,
) -> int:
    """Write the PNG to ``path``; returns how many events were plotted.

    Predictions are the recorded p50 (``predicted_output_tokens``) unless ``estimator`` is
    given, in which case they are recomputed from each event's stored features (to show a
    calibrated model on the same events). Events without a positive actual or prediction
    cannot sit on log axes and are left out.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    by_category: dict[str, dict[bool, tuple[list[float], list[float]]]] = {}
    for event in events:
        actual = event.get("actual_output_tokens")
        predicted = _prediction(event, estimator)
        if actual is None or actual <= 0 or predicted is None or predicted <= 0:
            continue
        category = str(event.get("category") or "?")
        group = by_category.setdefault(category, {False: ([], []), True: ([], [])})
        xs, ys = group[bool(event.get("truncated"))]
        xs.append(float(predicted))
        ys.append(float(actual))

    figure = Figure(figsize=(7, 6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    handles: list[Any] = []
    count = 0
    values: list[float] = []
    for i, category in enumerate(sorted(by_category)):
        colour, marker = colours[i % len(colours)], _MARKERS[i % len(_MARKERS)]
        (ex_x, ex_y), (tr_x, tr_y) = by_category[category][False], by_category[category][True]
        axes.scatter(ex_x, ex_y, c=colour, marker=marker, s=28, alpha=0.75)
        axes.scatter(tr_x, tr_y, facecolors="none", edgecolors=colour, marker="^", s=46, zorder=3)
        handles.append(Line2D([], [], color=colour, marker=marker, linestyle="", label=category))
        count += len(ex_x) + len(tr_x)
        values += ex_x + ex_y + tr_x + tr_y
    if any(by_category[c][True][0] for c in by_category):
        handles.append(
            Line2D(
                [],
                [],
                color="grey",
                marker="^",
                markerfacecolor="none",
                linestyle="",
                label="truncated (actual is a lower bound)",
            )
        )
    low, high = (min(values) / 1.5, max(values) * 1.5) if values else (100.0, 100_000.0)
    axes.plot([low, high], [low, high], color="black", linewidth=1, label="y = x")
    handles.append(Line2D([], [], color="black", linewidth=1, label="y = x (perfect)"))
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel("predicted output tokens (p50)")
    axes.set_ylabel("actual output tokens")
    version = f" — estimator {estimator.version}" if estimator is not None else ""
    axes.set_title(title or f"Predicted vs actual, {count} calls{version}")
    axes.grid(True, which="both", alpha=0.25)
    if not values:
        axes.text(0.5, 0.5, "no events with tokens yet", transform=axes.transAxes, ha="center")
    axes.legend(handles=handles, loc="upper left", fontsize=8, frameon=True)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")
    return count


def _prediction(event: Event, estimator: TokenEstimator | None) -> float | None:
    if estimator is not None:
        features = features_from_event(event)
        if features is not None:
            return estimator.p50_exact(features)
        return None
    predicted = event.get("predicted_output_tokens")
    return None if predicted is None else float(predicted)
