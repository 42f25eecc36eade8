"""The control plane as the CLI sees it: over HTTP when an API URL is given, else straight
on the resolved database (no server needed for local use).

Both answer with the same JSON-ready dicts (validated by the API's response models), so
``--json`` output does not depend on where the answer came from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import typer
from pydantic import BaseModel, TypeAdapter

from autopack.api import schemas
from autopack.cli._common import state
from autopack.client import ApiClient
from autopack.db import Database, runs, work
from autopack.rundef import RunDefinition


class ControlPlane(Protocol):
    where: str

    def create_run(self, definition: RunDefinition) -> dict[str, Any]: ...
    def list_runs(self, state: str | None, limit: int, offset: int) -> dict[str, Any]: ...
    def get_run(self, run_id: str) -> dict[str, Any]: ...
    def cancel_run(self, run_id: str, reason: str | None) -> dict[str, Any]: ...
    def get_phase(self, run_id: str, phase_id: str) -> dict[str, Any]: ...
    def requeue_phase(
        self, run_id: str, phase_id: str, requested_by: str | None, reason: str | None
    ) -> dict[str, Any]: ...
    def list_approvals(self, status: str | None, run_id: str | None) -> list[dict[str, Any]]: ...
    def decide(
        self, approval_id: int, approve: bool, responder: str, note: str | None
    ) -> dict[str, Any]: ...


class HttpControlPlane:
    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.where = f"API {client.base_url}"

    def create_run(self, definition: RunDefinition) -> dict[str, Any]:
        return self.client.create_run(definition)

    def list_runs(self, state: str | None, limit: int, offset: int) -> dict[str, Any]:
        return self.client.list_runs(state, limit, offset)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.client.get_run(run_id)

    def cancel_run(self, run_id: str, reason: str | None) -> dict[str, Any]:
        return self.client.cancel_run(run_id, reason)

    def get_phase(self, run_id: str, phase_id: str) -> dict[str, Any]:
        return self.client.get_phase(run_id, phase_id)

    def requeue_phase(
        self, run_id: str, phase_id: str, requested_by: str | None, reason: str | None
    ) -> dict[str, Any]:
        return self.client.requeue_phase(run_id, phase_id, requested_by=requested_by, reason=reason)

    def list_approvals(self, status: str | None, run_id: str | None) -> list[dict[str, Any]]:
        return self.client.list_approvals(status, run_id)

    def decide(
        self, approval_id: int, approve: bool, responder: str, note: str | None
    ) -> dict[str, Any]:
        decide = self.client.approve if approve else self.client.reject
        return decide(approval_id, responder, note)


def _as_json(model: type[BaseModel], produce: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return model.model_validate(produce()).model_dump(mode="json")


_APPROVALS = TypeAdapter(list[schemas.ApprovalView])


class LocalControlPlane:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.where = f"database {database.identity.url}"

    def create_run(self, definition: RunDefinition) -> dict[str, Any]:
        return _as_json(schemas.RunView, lambda: runs.create_run(self.database, definition))

    def list_runs(self, state: str | None, limit: int, offset: int) -> dict[str, Any]:
        return _as_json(
            schemas.RunList,
            lambda: runs.list_runs(self.database, state=state, limit=limit, offset=offset),
        )

    def get_run(self, run_id: str) -> dict[str, Any]:
        return _as_json(schemas.RunView, lambda: runs.get_run(self.database, run_id))

    def cancel_run(self, run_id: str, reason: str | None) -> dict[str, Any]:
        return _as_json(schemas.RunView, lambda: runs.cancel_run(self.database, run_id, reason))

    def get_phase(self, run_id: str, phase_id: str) -> dict[str, Any]:
        return _as_json(
            schemas.PhaseDetail, lambda: runs.get_phase(self.database, run_id, phase_id)
        )

    def requeue_phase(
        self, run_id: str, phase_id: str, requested_by: str | None, reason: str | None
    ) -> dict[str, Any]:
        return _as_json(
            schemas.PhaseView,
            lambda: runs.requeue_phase(
                self.database, run_id, phase_id, requested_by=requested_by, reason=reason
            ),
        )

    def list_approvals(self, status: str | None, run_id: str | None) -> list[dict[str, Any]]:
        found = work.list_approvals(self.database, status=status, run_id=run_id)
        dumped: list[dict[str, Any]] = _APPROVALS.dump_python(
            _APPROVALS.validate_python(found), mode="json"
        )
        return dumped

    def decide(
        self, approval_id: int, approve: bool, responder: str, note: str | None
    ) -> dict[str, Any]:
        return _as_json(
            schemas.DecidedApproval,
            lambda: work.decide_approval(
                self.database, approval_id, approve=approve, responder=responder, note=note
            ),
        )


def control_plane(ctx: typer.Context) -> ControlPlane:
    """HTTP when ``--api-url``/``AUTOPACK_API_URL`` is set, else the local database."""
    cli = state(ctx)
    api_url = cli.settings.autopack_api_url
    if api_url:
        client = ApiClient(api_url)
        ctx.call_on_close(client.close)
        return HttpControlPlane(client)
    return LocalControlPlane(cli.database())
