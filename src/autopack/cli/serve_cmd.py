"""``autopack serve``: the API server on this process's database."""

from __future__ import annotations

import os

import typer

from autopack.cli._common import state
from autopack.errors import ConfigError


def serve(
    ctx: typer.Context,
    host: str = typer.Option(
        "127.0.0.1", help="Interface to bind (anything but loopback needs AUTOPACK_API_TOKEN)."
    ),
    port: int | None = typer.Option(
        None, min=1, max=65535, help="Port (default: AUTOPACK_DEFAULT_API_PORT, 8000)."
    ),
    workers: int = typer.Option(
        1,
        min=1,
        # unbounded, --workers 100000 forked API processes until the machine (or
        # PostgreSQL's connection limit) gave out
        max=64,
        help="API processes (more than one needs PostgreSQL); one per core is plenty.",
    ),
) -> None:
    """Serve the control plane API (same as `uvicorn autopack.main:app`).

    Creates the database if there is none yet (and says so). With --workers N, uvicorn
    starts N processes that resolve nothing themselves: each gets every setting this
    command resolved and the database's instance_id, so all N serve this database or
    refuse to start.
    """
    from sqlalchemy.engine import make_url

    from autopack.api.auth import check_bind
    from autopack.config import child_env
    from autopack.dburl import redact_url

    cli = state(ctx)
    settings = cli.settings
    check_bind(host, settings)  # anything but loopback needs tokens (exit 2 otherwise)
    port = port or settings.autopack_default_api_port
    backend = make_url(settings.database_url).get_backend_name()
    if workers > 1 and backend != "postgresql":
        url = redact_url(settings.database_url)
        raise ConfigError(
            f"--workers {workers} needs PostgreSQL; {url} is {backend}, which takes one "
            "writer at a time, so more API processes only queue at its file lock. Serve it "
            "with one process, or move to DATABASE_URL=postgresql://...",
            workers=workers,
            url=url,
        )
    check_listen(host, port)
    # Open it here first: a missing file is created (and announced), a partial schema is
    # one line and exit 3, before any server starts.
    identity = cli.database(create=True).identity
    import uvicorn  # the web stack loads only for the commands that serve

    if workers == 1:
        from autopack.api.app import create_app

        cli.close()
        uvicorn.run(create_app(settings), host=host, port=port)
        return
    cli.close()
    os.environ.update(child_env(settings, AUTOPACK_EXPECTED_INSTANCE_ID=identity.instance_id))
    uvicorn.run("autopack.main:app", host=host, port=port, workers=workers)


def check_listen(host: str, port: int) -> None:
    """Exit 2 naming ``host:port`` when nothing can listen there (taken, not an address
    of this machine): uvicorn said so with exit 3, which means an out-of-date schema."""
    import socket

    try:
        family, kind, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            sock.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}", host=host, port=port
        ) from None
