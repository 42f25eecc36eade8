"""``GET /ui``: one server-rendered page an operator keeps open while executors drain.

It shows which database this server uses, every run with its progress, the phases of one
run with who holds each lease and until when, pending approvals with the command that
decides them (buttons, or the command), and what the LLM calls cost. Plain HTML refreshed
every few seconds: no JavaScript, no template engine, nothing to build. With tokens it
asks for the operator token once (:mod:`autopack.api.routers.ui_session`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from autopack import __version__
from autopack.api.auth import SESSION_COOKIE
from autopack.api.deps import DatabaseDep
from autopack.api.routers.ui_session import PAGE_HEADERS, ui_access
from autopack.bounds import ID_PATTERN
from autopack.clock import utcnow
from autopack.contract import ApprovalList, PhaseView, RunSummary, RunView
from autopack.control import approvals, runs, telemetry
from autopack.estimation.report import estimation_report
from autopack.states import RUN_ACTIVE, PhaseState
from autopack.telemetry.events import UsageSummaryRow

router = APIRouter(tags=["dashboard"])
REFRESH_SECONDS = 5

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:20px;margin:0}h2{font-size:16px;margin:1.4em 0 .4em}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4}.muted{color:#777}.COMPLETE,.DONE_SUCCESS{color:#1a7f37}
.FAILED,.SKIPPED{color:#c62828}[class^=DONE_FAILED],.DONE_CANCELLED{color:#c62828}
.EXECUTING,.CI_RUNNING,.RUNNING{color:#1f5fbf}.AWAITING_APPROVAL{color:#b26a00}
code{background:#f4f4f4;padding:1px 4px}
"""


def _cell(value: Any) -> str:
    if value is None:
        return '<td class="muted">–</td>'
    if isinstance(value, float):
        return f"<td>{value:.4f}</td>"
    if isinstance(value, datetime):
        return f"<td>{value:%Y-%m-%d %H:%M:%S}</td>"
    return f"<td>{escape(str(value))}</td>"


def _state(value: str) -> str:
    return f'<td class="{escape(value)}">{escape(value)}</td>'


def _table(headers: Sequence[str], body: Iterable[str], empty: str) -> str:
    lines = list(body)
    if not lines:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _runs(items: list[RunSummary]) -> str:
    body = []
    for run in items:
        done = run.counts.get(PhaseState.COMPLETE, 0)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items()))
        body.append(
            f'<tr><td><a href="?run={escape(run.run_id)}">{escape(run.run_id)}</a></td>'
            f"{_state(run.state)}<td>{done}/{run.phase_count}</td>{_cell(counts)}"
            f"{_cell(run.tokens_used)}{_cell(run.cost(4))}{_cell(run.created_at)}</tr>"
        )
    return _table(
        ["run", "state", "complete", "phases by state", "tokens", "cost", "created"],
        body,
        "no runs yet: autopack run create FILE",
    )


def _lease(phase: PhaseView) -> str:
    expires = phase.lease_expires_at
    if not phase.lease_owner or expires is None:
        return _cell(None)
    left = (expires - utcnow()).total_seconds()
    return _cell(f"{phase.lease_owner} ({left:+.0f}s)")


def _phases(run: RunView) -> str:
    body = []
    for tier in run.tiers:
        for phase in tier.phases:
            body.append(
                f"<tr>{_cell(tier.tier_id)}{_cell(phase.phase_id)}{_state(phase.state)}"
                f"<td>{phase.attempts}/{phase.max_attempts}</td>{_lease(phase)}"
                f"{_cell(phase.tokens_used)}{_cell(phase.cost_usd)}"
                f"{_cell(phase.last_failure_reason)}</tr>"
            )
    return _table(
        [
            "tier",
            "phase",
            "state",
            "attempts",
            "lease (owner, expires in)",
            "tokens",
            "cost USD",
            "last failure",
        ],
        body,
        "this run has no phases",
    )


def _decide_forms(approval_id: int, csrf: str) -> str:
    """Approve / reject buttons: POST forms carrying the session's CSRF token."""
    forms = []
    for verb in ("approve", "reject"):
        forms.append(
            f"<form method='post' action='/ui/approvals/{approval_id}/{verb}' "
            f"style='display:inline'><input type='hidden' name='csrf' value='{escape(csrf)}'>"
            f"<button>{verb}</button></form>"
        )
    return " ".join(forms)


def _approvals(pending: ApprovalList, csrf: str) -> str:
    body = [
        f"<tr>{_cell(a.id)}{_cell(a.run_id)}{_cell(a.phase_id)}{_cell(a.reason)}"
        f"{_cell(a.timeout_at)}<td>{_decide_forms(a.id, csrf)} or "
        f"<code>autopack approvals approve {a.id}</code></td></tr>"
        for a in pending.items
    ]
    table = _table(
        ["id", "run", "phase", "reason", "times out", "decide with"], body, "no approval is waiting"
    )
    shown = len(pending.items)
    if shown < pending.total:  # the oldest first; the rest are a page away
        table += (
            f'<p class="muted">the oldest {shown} of {pending.total} waiting; '
            f"<code>autopack approvals list --offset {shown}</code> lists the rest</p>"
        )
    return table


def _cost(usage: UsageSummaryRow) -> str:
    """A replayed call's cost is what it would have cost: shown, never as spending."""
    if usage.replayed and usage.cost_usd is not None:
        return _cell(f"{usage.cost_usd:.4f} replayed (not billed)")
    return _cell(usage.cost_usd)


def _telemetry(usage: list[UsageSummaryRow], events: list[dict[str, Any]]) -> str:
    body = [
        f"<tr>{_cell(u.model)}{_cell(u.role)}{_cell(u.calls)}{_cell(u.failed_calls)}"
        f"{_cell(u.input_tokens)}{_cell(u.output_tokens)}{_cost(u)}</tr>"
        for u in usage
    ]
    table = _table(
        ["model", "role", "calls", "failed", "input tokens", "output tokens", "cost USD"],
        body,
        "no LLM call recorded (TELEMETRY_DB_ENABLED=1 records)",
    )
    if not events:
        return table
    overall = estimation_report(events).overall
    rate = (
        f"{overall.underestimation_rate:.0%}" if overall.underestimation_rate is not None else "–"
    )
    waste = f"{overall.waste_p50:.2f}" if overall.waste_p50 is not None else "–"
    return table + (
        f"<p>Estimator: {overall.n} Builder calls, underestimated {rate}, truncated "
        f"{overall.truncation_rate:.0%}, waste (max_tokens/actual) p50 {waste}. "
        "Refit with <code>autopack telemetry calibrate</code>.</p>"
    )


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
def dashboard(
    request: Request,
    database: DatabaseDep,
    run: Annotated[str | None, Query(max_length=200, pattern=ID_PATTERN)] = None,
) -> Response:
    """Runs, phases and leases, approvals and LLM cost, refreshed every few seconds (after
    logging in with the operator token, when the server has tokens)."""
    access = ui_access(request)
    if access is None:
        return RedirectResponse("/ui/login", status_code=303)
    identity = database.identity
    listed = runs.list_runs(database, limit=50).items
    chosen = run or next(
        (r.run_id for r in listed if r.state in RUN_ACTIVE),
        listed[0].run_id if listed else None,
    )
    detail = ""
    if chosen is not None:
        detail = f"<h2>Run {escape(chosen)}</h2>{_phases(runs.get_run(database, chosen))}"
    usage = telemetry.usage_summary(database, chosen)
    events = telemetry.as_mappings(telemetry.all_estimation_events(database, chosen))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Autopack</title>"
        f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'><style>{_STYLE}</style>"
        f"</head><body><h1>Autopack {escape(__version__)}</h1>"
        f"<p class='muted'>database {escape(identity.public_url)} · instance "
        f"{escape(identity.instance_id)} · schema {escape(str(identity.schema_revision))}</p>"
        f"<h2>Runs</h2>{_runs(listed)}{detail}"
        f"<h2>Approvals waiting</h2>"
        f"{_approvals(approvals.list_approvals(database), access.csrf)}"
        f"<h2>LLM calls{' of ' + escape(chosen) if chosen else ''}</h2>"
        f"{_telemetry(usage, events)}{_logout(request, access.csrf)}</body></html>"
    )
    return HTMLResponse(page, headers=PAGE_HEADERS)


def _logout(request: Request, csrf: str) -> str:
    if not request.cookies.get(SESSION_COOKIE):
        return ""
    return (
        "<form method='post' action='/ui/logout'><input type='hidden' name='csrf' "
        f"value='{escape(csrf)}'><button>log out</button></form>"
    )
