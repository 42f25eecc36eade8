"""The HTTP control plane: an app factory, typed dependencies and one router per resource."""

from autopack.api.app import create_app

__all__ = ["create_app"]
