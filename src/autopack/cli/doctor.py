"""``autopack doctor``: the legacy failure report's manual verification commands, as one.

One line per check, ✔ or ✘ with the fix; exit 0 only when every check passes, else the
exit code every other command gives for the first problem's kind (2 settings or a missing
database, 3 schema, 1 anything else). Doctor never creates a database: a missing SQLite
file is named with where its path came from and the Autopack databases nearby, and
``db init`` is suggested only when there is no other database to point at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import typer

from autopack.cli._common import FAIL, OK, err, out, print_json, state
from autopack.cli.shown import escape
from autopack.errors import (
    AutopackError,
    ConfigError,
    DatabaseMissing,
    DatabaseUnavailable,
    Forbidden,
    SchemaOutOfDate,
    ServerUnavailable,
    Unauthorized,
)

if TYPE_CHECKING:  # the settings and database stacks load when doctor runs
    from autopack.config import LoadedSettings, Settings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    exit_code: int = 1
    """What a failing check makes doctor exit with: the code other commands give for it."""


def doctor(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Check settings, schema, API server identity and token, telemetry flag, estimator
    file, price table and LLM credentials."""
    cli = state(ctx)
    checks = _database_url_sources(cli.database_url)
    try:
        settings = cli.settings
    except AutopackError as exc:
        checks.append(
            Check("settings", False, exc.message, "fix the value named above", exc.exit_code)
        )
        _report(checks, as_json)
        return
    names_database = not cli.names_no_database()
    if not names_database:  # the default "wins" but names no file: say what is used instead
        checks[-1].detail += ", no such file: the API server's database is used"
    if names_database:
        checks.append(_schema(cli.loaded()))
    if checks[-1].ok:
        checks.extend(_server(settings, names_database=names_database))
    checks.append(
        Check(
            "telemetry",
            True,
            f"TELEMETRY_DB_ENABLED={'1' if settings.telemetry_db_enabled else '0'} "
            f"(from {cli.loaded().sources['telemetry_db_enabled']})",
            "" if settings.telemetry_db_enabled else "set TELEMETRY_DB_ENABLED=1 to record",
        )
    )
    checks.append(_estimator(settings))
    checks.append(_prices(settings))
    checks.append(_credentials(settings))
    _report(checks, as_json)


def _database_url_sources(flag: str | None) -> list[Check]:
    from autopack.config import DEFAULT_DATABASE_URL, source_values
    from autopack.envfile import dotenv_path

    env_file = dotenv_path()
    offered = source_values({"database_url": flag} if flag else {}, env_file)
    winner = next((src for src, vals in offered.items() if "database_url" in vals), "default")
    checks = []
    for source, values in [*offered.items(), ("default", {"database_url": DEFAULT_DATABASE_URL})]:
        value = values.get("database_url")
        if value is None and source.startswith(".env") and not env_file.is_file():
            detail = _no_dotenv()
        elif value is None:
            detail = "not set"
        else:
            detail = _shown(str(value)) + ("  ← wins" if source == winner else "  (ignored)")
        checks.append(Check(f"DATABASE_URL from {source}", True, detail))
    return checks


def _shown(url: str) -> str:
    """The URL with its password hidden, or a value that is no URL (``DATABASE_URL=``)
    redacted as text: it raised out of doctor with a traceback, though doctor is what a
    user runs when a setting is wrong (the settings check then says what is wrong)."""
    from sqlalchemy.exc import ArgumentError

    from autopack import redact
    from autopack.dburl import redact_url

    try:
        return redact_url(url)
    except (ArgumentError, ValueError):
        return f"{redact.text(url)!r}, not a database URL"


def _no_dotenv() -> str:
    """Where no ``.env`` was found: "not set" read as if the file existed without the line."""
    from autopack.envfile import search_directories

    directories = search_directories()
    if len(directories) == 1:
        return "no such file (no .env in the working directory)"
    return f"no such file (no .env from the working directory up to {directories[-1]})"


def _schema(loaded: LoadedSettings) -> Check:
    from autopack.db import schema
    from autopack.db.engine import make_engine
    from autopack.dburl import redact_url

    url = loaded.settings.database_url
    try:
        engine = make_engine(url)
    except DatabaseMissing as exc:
        from autopack.cli.whereis import missing_database

        missing = missing_database(loaded, exc)  # its message ends with the fix
        return Check("database", False, missing.message, exit_code=missing.exit_code)
    try:
        status = schema.check(engine)
    except Exception as exc:
        return Check("database", False, f"{redact_url(url)}: {exc}", exit_code=2)
    finally:
        engine.dispose()
    where = loaded.database.describe()
    if status.in_sync:
        return Check(
            "schema", True, f"{redact_url(url)} at revision {status.db_revision} ({where})"
        )
    fix = "run the command named above"
    return Check("schema", False, status.problem(), fix, SchemaOutOfDate.exit_code)


def _server(settings: Settings, *, names_database: bool) -> list[Check]:
    """Does the API server use this client's database? For a client that names none
    (a machine holding only a token), is the server's database ready to use? And, when a
    server answered, does it take this machine's token (:func:`_token`)?"""
    from autopack.client import ApiClient
    from autopack.db import open_database

    configured = settings.autopack_api_url
    url = configured or f"http://127.0.0.1:{settings.autopack_default_api_port}"
    database = (
        open_database(settings.database_url, role="doctor", log=False, initialise=False)
        if names_database
        else None
    )
    try:
        with ApiClient(url) as client:
            health = client.verify_identity(
                database.identity if database else None,
                instance_id=settings.autopack_expected_instance_id,
            )
        if database is not None:
            found = Check("api server", True, f"{url} uses this database ({database.identity.url})")
        else:
            found = Check(
                "api server",
                True,
                f"{url} serves {health.database.describe()}; this client names no database (no "
                "DATABASE_URL, no default autopack.db) and uses that one",
            )
        return [found, _token(url, settings)]
    except ServerUnavailable as exc:
        if configured:
            return [Check("api server", False, exc.message, "start it, or unset AUTOPACK_API_URL")]
        return [Check("api server", True, f"none on {url}; executors will start their own")]
    except ConfigError as exc:
        return [Check("api server", False, exc.message, "fix AUTOPACK_API_URL", exc.exit_code)]
    except (SchemaOutOfDate, DatabaseUnavailable) as exc:  # the database it serves
        return [Check("api server", False, exc.message, exit_code=exc.exit_code)]
    except AutopackError as exc:
        fix = "point both at the same DATABASE_URL"
        return [Check("api server", False, exc.message, fix, exc.exit_code)]
    finally:
        if database is not None:
            database.close()


def _token(url: str, settings: Settings) -> Check:
    """Does the server at ``url`` take the token this machine sends, and with which rights?

    The handshake (``/health``) needs no token, so a missing, mistyped or stale one passed
    every check here (exit 0) and failed the first drain or ``run create`` with a 401
    instead. Two reads tell: the runs (any token of the server), the approvals (the
    operator's only)."""
    from autopack.client import ApiClient
    from autopack.connect import client_token

    token = client_token(settings)
    if settings.autopack_api_token is not None:
        sent = "AUTOPACK_API_TOKEN"
    else:
        sent = "AUTOPACK_WORKER_TOKEN" if token is not None else "no token"
    try:
        with ApiClient(url, token=token) as client:
            client.list_runs(limit=1)
            try:
                client.list_approvals(limit=1)
            except Forbidden:
                return Check(
                    "api token",
                    True,
                    f"{sent} is the server's worker token: an executor's calls, not "
                    "`run create` or approvals (those need AUTOPACK_API_TOKEN)",
                )
    except Unauthorized as exc:
        fix = "set the server's AUTOPACK_WORKER_TOKEN (executors) or AUTOPACK_API_TOKEN here"
        return Check("api token", False, f"{sent} sent: {exc.message}", fix, exc.exit_code)
    except AutopackError as exc:
        return Check("api token", False, exc.message, exit_code=exc.exit_code)
    if token is None:
        return Check("api token", True, "none needed: this server has no tokens")
    return Check("api token", True, f"{sent} has the operator's rights on this server")


def _estimator(settings: Settings) -> Check:
    """The estimator file every drain loads before its first claim: one it cannot read or
    parse (``AUTOPACK_ESTIMATOR_FILE`` naming a moved file) stopped the drain, exit 2,
    after doctor had said all was well."""
    from autopack.estimation.estimator import TokenEstimator

    try:
        estimator = TokenEstimator.load(settings.autopack_estimator_file)
    except ConfigError as exc:
        fix = "fix AUTOPACK_ESTIMATOR_FILE, or unset it for the packaged estimator"
        return Check("estimator", False, exc.message, fix, exc.exit_code)
    return Check("estimator", True, f"{estimator.source} (version {estimator.version})")


def _prices(settings: Settings) -> Check:
    """The price table every drain loads before its first claim: ``AUTOPACK_PRICE_TABLE``
    naming a moved or broken file, or ``AUTOPACK_FREE_MODELS`` naming a priced model,
    stopped the drain, exit 2, after doctor had said all was well."""
    from autopack.llm.pricing import price_table

    try:
        table = price_table(settings)
    except ConfigError as exc:
        fix = "fix AUTOPACK_PRICE_TABLE or AUTOPACK_FREE_MODELS, whichever it names"
        return Check("prices", False, exc.message, fix, exc.exit_code)
    return Check("prices", True, f"table {table.version} ({', '.join(table.sources)})")


def _credentials(settings: Settings) -> Check:
    from autopack.llm.registry import check_served, model_for, model_hint, provider_name

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
    builder, auditor = model_for(settings, "builder"), model_for(settings, "auditor")
    models = (
        f"builder {builder}{'' if settings.autopack_builder_model else ' (default)'}, "
        f"auditor {auditor}{'' if settings.autopack_auditor_model else ' (default)'}"
    )
    try:
        unlisted = check_served(
            settings, {"AUTOPACK_BUILDER_MODEL": builder, "AUTOPACK_AUDITOR_MODEL": auditor}
        )
    except ConfigError as exc:
        return Check("llm", False, exc.message, "fix the setting it names", 2)
    return Check(
        "llm",
        True,
        f"provider {provider} ({provider_name(settings)}: {models}); credentials present: {shown}",
        unlisted or model_hint(settings),
    )


def _report(checks: list[Check], as_json: bool) -> None:
    passed = all(check.ok for check in checks)
    if as_json:
        print_json({"ok": passed, "checks": [asdict(check) for check in checks]})
    else:
        for check in checks:
            # The details quote paths and what servers said: "[/x]" in one was a MarkupError
            line = f"{OK if check.ok else FAIL} {check.name}: {escape(check.detail)}"
            if check.fix:
                line += f"  [dim]→ {escape(check.fix)}[/dim]"
            (out if check.ok else err).print(line, highlight=False)
    raise typer.Exit(next((check.exit_code for check in checks if not check.ok), 0))
