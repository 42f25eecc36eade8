"""``autopack doctor``: the legacy failure report's manual verification commands, as one.

One line per check, ✔ or ✘ with the fix; exit 0 only when every check passes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import typer

from autopack.cli._common import FAIL, OK, err, out, print_json, state
from autopack.client import ApiClient
from autopack.config import DEFAULT_DATABASE_URL, Settings, redact_url, source_values
from autopack.db import open_database, schema
from autopack.db.engine import make_engine
from autopack.errors import AutopackError, ServerUnavailable


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def doctor(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Check settings, schema, API server identity, telemetry flag and LLM credentials."""
    cli = state(ctx)
    checks = _database_url_sources(cli.database_url)
    try:
        settings = cli.settings
    except AutopackError as exc:
        checks.append(Check("settings", False, exc.message, "fix the value named above"))
        _report(checks, as_json)
        return
    checks.append(_schema(settings))
    if checks[-1].ok:
        checks.append(_server(settings))
    checks.append(
        Check(
            "telemetry",
            True,
            f"TELEMETRY_DB_ENABLED={'1' if settings.telemetry_db_enabled else '0'} "
            f"(from {cli.loaded().sources['telemetry_db_enabled']})",
            "" if settings.telemetry_db_enabled else "set TELEMETRY_DB_ENABLED=1 to record",
        )
    )
    checks.append(_credentials(settings))
    _report(checks, as_json)


def _database_url_sources(flag: str | None) -> list[Check]:
    offered = source_values({"database_url": flag} if flag else {})
    winner = next((src for src, vals in offered.items() if "database_url" in vals), "default")
    checks = []
    for source, values in [*offered.items(), ("default", {"database_url": DEFAULT_DATABASE_URL})]:
        value = values.get("database_url")
        if value is None:
            detail = "not set"
        else:
            detail = redact_url(str(value)) + ("  ← wins" if source == winner else "  (ignored)")
        checks.append(Check(f"DATABASE_URL from {source}", True, detail))
    return checks


def _schema(settings: Settings) -> Check:
    engine = make_engine(settings.database_url)
    try:
        status = schema.check(engine)
    except Exception as exc:
        return Check("database", False, f"{redact_url(settings.database_url)}: {exc}")
    finally:
        engine.dispose()
    if status.in_sync:
        return Check("schema", True, f"at revision {status.db_revision}")
    return Check("schema", False, status.problem(), "run the command named above")


def _server(settings: Settings) -> Check:
    configured = settings.autopack_api_url
    url = configured or f"http://127.0.0.1:{settings.autopack_default_api_port}"
    database = open_database(settings.database_url, role="doctor", log=False)
    try:
        with ApiClient(url) as client:
            client.verify_identity(database.identity)
        return Check("api server", True, f"{url} uses this database ({database.identity.url})")
    except ServerUnavailable as exc:
        if configured:
            return Check("api server", False, exc.message, "start it, or unset AUTOPACK_API_URL")
        return Check("api server", True, f"none on {url}; executors will start their own")
    except AutopackError as exc:
        return Check("api server", False, exc.message, "point both at the same DATABASE_URL")
    finally:
        database.close()


def _credentials(settings: Settings) -> Check:
    present = [
        name
        for name, value in (
            ("ANTHROPIC_API_KEY", settings.anthropic_api_key),
            ("OPENAI_API_KEY", settings.openai_api_key),
            ("OPENAI_BASE_URL", settings.openai_base_url),
        )
        if value
    ]
    provider = settings.autopack_llm_provider
    needs = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}.get(provider)
    if needs and needs not in present and not (provider == "openai" and present):
        return Check("llm", False, f"provider {provider} but {needs} is not set", f"set {needs}")
    shown = ", ".join(present) or "none (offline replay provider)"
    return Check("llm", True, f"provider {provider}; credentials present: {shown}")


def _report(checks: list[Check], as_json: bool) -> None:
    passed = all(check.ok for check in checks)
    if as_json:
        print_json({"ok": passed, "checks": [asdict(check) for check in checks]})
    else:
        for check in checks:
            line = f"{OK if check.ok else FAIL} {check.name}: {check.detail}"
            if check.fix:
                line += f"  [dim]→ {check.fix}[/dim]"
            (out if check.ok else err).print(line, highlight=False)
    raise typer.Exit(0 if passed else 1)
