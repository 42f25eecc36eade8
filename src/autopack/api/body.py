"""JSON request bodies read as run files are: a key given twice in one object is refused.

FastAPI reads a body with ``json.loads``, which keeps the last of two equal keys
silently: ``{"run_id": "a", "run_id": "b"}`` created run ``b``, and a second ``checks``
in a phase replaced the one a reviewer read first, while ``autopack run create`` refused
the same file. Routers that take JSON bodies use :class:`UniqueKeysRoute`; its refusal
is a 422 naming the key (through :func:`autopack.api.errors.unreadable_body`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from autopack.bounds import DuplicateKey, unique_pairs
from autopack.errors import InvalidInput


class _UniqueKeysRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body, object_pairs_hook=unique_pairs)
            except DuplicateKey as exc:
                raise InvalidInput(
                    f"request body is ambiguous: {exc}",
                    errors=[{"field": "body", "message": str(exc)}],
                ) from exc
        return self._json


class UniqueKeysRoute(APIRoute):
    """A route whose handler reads its JSON body with duplicate keys refused."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def unique_keys(request: Request) -> Response:
            return await handler(_UniqueKeysRequest(request.scope, request.receive))

        return unique_keys
