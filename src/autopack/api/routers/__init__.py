"""One router per resource; routers translate HTTP to calls into :mod:`autopack.db`."""
