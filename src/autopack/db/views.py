"""Rows to the JSON shapes of the HTTP contract (PhaseView, AttemptView, RunView, ...).

Pure functions over row mappings: no statements here. The API validates these dicts with
the models in :mod:`autopack.api.schemas`, and the CLI's local mode prints the very same
dicts, so a run looks identical whether it was read over HTTP or straight from the database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from autopack.rundef import Policy

Row = Mapping[str, Any]


def budgets(run: Row) -> dict[str, Any]:
    return {
        "token_cap": run["token_cap"],
        "cost_cap_usd": run["cost_cap_usd"],
        "max_phases": run["max_phases"],
        "max_duration_minutes": run["max_duration_minutes"],
    }


def policy(run: Row) -> dict[str, Any]:
    """The stored policy with defaults filled in (older rows may lack newer keys)."""
    return Policy.model_validate(run["policy"] or {}).model_dump()


def phase_view(phase: Row, depends_on: Sequence[str]) -> dict[str, Any]:
    window_used = phase["attempts"] - phase["retry_window_start"]
    return {
        "run_id": phase["run_id"],
        "phase_id": phase["phase_id"],
        "tier_id": phase["tier_id"],
        "tier_index": phase["tier_index"],
        "phase_index": phase["phase_index"],
        "name": phase["name"],
        "description": phase["description"],
        "task_category": phase["task_category"],
        "complexity": phase["complexity"],
        "scope": {
            "paths": list(phase["scope"].get("paths", [])),
            "read_only_context": list(phase["scope"].get("read_only_context", [])),
            "deliverables": list(phase["scope"].get("deliverables", [])),
        },
        "checks": list(phase["checks"] or []),
        "depends_on": list(depends_on),
        "state": phase["state"],
        "attempts": phase["attempts"],
        "max_attempts": phase["max_attempts"],
        "attempts_left": max(phase["max_attempts"] - window_used, 0),
        "last_failure_reason": phase["last_failure_reason"],
        "failure_fingerprint": phase["failure_fingerprint"],
        "tokens_used": phase["tokens_used"],
        "cost_usd": phase["cost_usd"],
        "lease_owner": phase["lease_owner"],
        "lease_expires_at": phase["lease_expires_at"],
        "available_at": phase["available_at"],
        "created_at": phase["created_at"],
        "started_at": phase["started_at"],
        "finished_at": phase["finished_at"],
        "updated_at": phase["updated_at"],
    }


def attempt_view(attempt: Row) -> dict[str, Any]:
    return {
        "attempt": attempt["attempt"],
        "worker_id": attempt["worker_id"],
        "started_at": attempt["started_at"],
        "finished_at": attempt["finished_at"],
        "outcome": attempt["outcome"],
        "stop_reason": attempt["stop_reason"],
        "max_tokens": attempt["max_tokens"],
        "files_written": list(attempt["files_written"] or []),
        "check_results": list(attempt["check_results"] or []),
        "audit_verdict": attempt["audit_verdict"],
        "feedback": attempt["feedback"],
        "error": attempt["error"],
        "details": dict(attempt["details"] or {}),
        "tokens_used": attempt["tokens_used"],
        "cost_usd": attempt["cost_usd"],
    }


def approval_view(approval: Row) -> dict[str, Any]:
    return {
        "id": approval["id"],
        "run_id": approval["run_id"],
        "phase_id": approval["phase_id"],
        "attempt": approval["attempt"],
        "reason": approval["reason"],
        "context": dict(approval["context"] or {}),
        "status": approval["status"],
        "on_timeout": approval["on_timeout"],
        "requested_at": approval["requested_at"],
        "timeout_at": approval["timeout_at"],
        "responded_at": approval["responded_at"],
        "responder": approval["responder"],
        "note": approval["note"],
    }


def run_brief(run: Row) -> dict[str, Any]:
    """What a claim carries about its run: enough to check budgets before an LLM call."""
    return {
        "state": run["state"],
        "goal": run["goal"],
        "budgets": budgets(run),
        "policy": policy(run),
        "tokens_used": run["tokens_used"],
        "cost_usd": run["cost_usd"],
    }


def run_summary(run: Row, counts: Mapping[str, int]) -> dict[str, Any]:
    return {
        "run_id": run["id"],
        "state": run["state"],
        "goal": run["goal"],
        "tokens_used": run["tokens_used"],
        "cost_usd": run["cost_usd"],
        "created_at": run["created_at"],
        "started_at": run["started_at"],
        "finished_at": run["finished_at"],
        "failure_reason": run["failure_reason"],
        "phase_count": sum(counts.values()),
        "counts": dict(counts),
    }


def run_view(
    run: Row,
    tiers: Iterable[Row],
    phases: Iterable[Row],
    dependencies: Mapping[str, list[str]],
) -> dict[str, Any]:
    by_tier: dict[int, list[dict[str, Any]]] = {}
    counts: Counter[str] = Counter()
    for phase in sorted(phases, key=lambda p: (p["tier_index"], p["phase_index"])):
        by_tier.setdefault(phase["tier_index"], []).append(
            phase_view(phase, dependencies.get(phase["phase_id"], []))
        )
        counts[phase["state"]] += 1
    return {
        "run_id": run["id"],
        "state": run["state"],
        "goal": run["goal"],
        "budgets": budgets(run),
        "policy": policy(run),
        "tokens_used": run["tokens_used"],
        "cost_usd": run["cost_usd"],
        "created_at": run["created_at"],
        "started_at": run["started_at"],
        "finished_at": run["finished_at"],
        "failure_reason": run["failure_reason"],
        "counts": dict(counts),
        "tiers": [
            {
                "tier_id": tier["tier_id"],
                "tier_index": tier["tier_index"],
                "name": tier["name"],
                "state": tier["state"],
                "phases": by_tier.get(tier["tier_index"], []),
            }
            for tier in sorted(tiers, key=lambda t: t["tier_index"])
        ],
    }
