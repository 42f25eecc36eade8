"""``uvicorn autopack.main:app``: the app reads DATABASE_URL when it starts, not on import."""

from autopack.api.app import create_app

app = create_app()
