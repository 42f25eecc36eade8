"""``autopack serve``: the API server on this process's database."""

from __future__ import annotations

import typer

from autopack.cli._common import state


def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int | None = typer.Option(None, help="Port (default: AUTOPACK_DEFAULT_API_PORT, 8000)."),
) -> None:
    """Serve the control plane API (same as `uvicorn autopack.main:app`)."""
    import uvicorn  # the web stack loads only for the commands that serve

    from autopack.api.app import create_app

    settings = state(ctx).settings
    uvicorn.run(create_app(settings), host=host, port=port or settings.autopack_default_api_port)
