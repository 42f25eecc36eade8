"""Which database is this, provably? The value every process logs and ``/health`` returns.

A database's identity is the random ``instance_id`` born with it (``db_meta``), plus where
it physically lives: a SQLite file's device and inode, or PostgreSQL's
``current_database()`` and cluster ``system_identifier``. The *fingerprint* hashes both, so
a copied SQLite file or a restored dump (same instance_id, another place) is a different
database, while one PostgreSQL reached under two host names, or one SQLite file under two
paths (a bind mount), is the same one.

A plain value with no database code: the HTTP client compares identities without loading
SQLAlchemy (:mod:`autopack.db.identity` reads one from a live database).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PublicIdentity(BaseModel):
    """The part of an identity that is safe to serve over HTTP: no password, user or host."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    instance_id: str
    backend: str
    public_url: str
    """URL with password, user and host hidden."""
    fingerprint: str
    schema_revision: str | None
    code_revision: str
    in_sync: bool
    database_name: str | None = None
    system_identifier: str | None = None

    @property
    def location(self) -> str:
        """Where the database is, as messages name it: all a client that only reached the
        server may know (see :class:`DbIdentity`)."""
        return self.public_url

    def describe(self) -> str:
        """``URL (instance_id …)``: how messages name this database."""
        return f"{self.location} (instance_id {self.instance_id})"


class DbIdentity(PublicIdentity):
    """The full identity, as the process that opened the database knows it."""

    url: str
    """Redacted URL (password hidden), for logs and terminals."""

    def public(self) -> PublicIdentity:
        return PublicIdentity.model_validate(self.model_dump(exclude={"url"}))

    @property
    def location(self) -> str:
        return self.url

    def same_database(self, other: PublicIdentity) -> bool:
        return self.fingerprint == other.fingerprint
