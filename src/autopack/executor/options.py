"""How an executor works (its flags) and what its attempts talk to."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from autopack.builder.auditor import AuditMode
from autopack.client import ApiClient
from autopack.estimation.estimator import TokenEstimator
from autopack.executor.check_policy import CheckPolicy
from autopack.executor.integration import Integrator
from autopack.executor.repository import RunRepository
from autopack.executor.worktrees import Worktrees
from autopack.llm.base import LLMProvider
from autopack.llm.pricing import PriceTable
from autopack.telemetry.recorder import TelemetryRecorder

EventSink = Callable[..., None]
"""Progress events (``attempt_started``, ``llm_call``, ``attempt_finished``, …) for display."""


@dataclass(frozen=True)
class ExecutorOptions:
    """How an executor works: the drain commands' flags and the settings that shape LLM
    calls (``AUTOPACK_MAX_CONTINUATIONS``, ``AUTOPACK_CONTINUATION_TOKEN_CAP``,
    ``AUTOPACK_PROMPT_CACHE``, ``AUTOPACK_TARGET_TRUNCATION``)."""

    worker_id: str
    builder_model: str
    auditor_model: str
    lease_seconds: int = 60
    auditor: AuditMode = "llm"
    escalation_factor: float = 1.5
    target_truncation: float = 0.02
    check_timeout: float = 300.0
    max_file_bytes: int = 256 * 1024
    max_answer_bytes: int = 4 * 1024 * 1024
    context_chars: int = 120_000
    approval_timeout_seconds: float | None = None
    phase_token_cap: int | None = None
    phase_cost_cap_usd: float | None = None
    poll_seconds: float = 1.0
    check_policy: CheckPolicy | None = None
    """Checks this executor agrees to run (``--allow-check-prefix``); None: any."""
    max_continuations: int = 3
    """Continue a cut-off Builder answer this often before it counts as truncated."""
    continuation_token_cap: int | None = None
    """Output tokens one answer's continuations may use in all; None: no cap of its own."""
    prompt_cache: bool = True
    """Mark the system prompt and the stable prompt prefix for the provider's cache."""
    unreachable_seconds: float = 60.0
    """How long to wait for a provider nothing answers at before the drain stops."""


@dataclass
class Services:
    """What an attempt talks to; shared by every attempt of one executor."""

    client: ApiClient
    repository: RunRepository
    """The run's code: its branch, where attempts' commits are integrated."""
    worktrees: Worktrees
    """Where each attempt gets a checkout of its own."""
    integrator: Integrator
    """How completed attempts' commits reach the branch, one at a time."""
    provider: LLMProvider
    estimator: TokenEstimator
    prices: PriceTable
    telemetry: TelemetryRecorder
    options: ExecutorOptions
    events: EventSink = field(default=lambda *args, **kwargs: None)
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the drain stops claiming (Ctrl-C, a worker's provider refused or gone): a
    wait for a busy or unreachable provider ends then, handing its phase back, instead of
    keeping the drain up to AUTOPACK_LLM_UNREACHABLE_SECONDS after the others stopped."""
    stopped: threading.Event = field(default_factory=threading.Event)
    """Set when the executor is stopped (SIGTERM, a second Ctrl-C): no check starts after
    it (:func:`~autopack.executor.checks.terminate_running_checks`)."""
