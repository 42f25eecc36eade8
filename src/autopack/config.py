"""Settings, resolved once per process, with the source of every value.

This is the ONE module that reads the environment. The precedence is pydantic-settings'
own: explicit CLI flag (init kwargs) > process environment > ``.env`` (never overrides the
environment) > default. Three rules make database identity drift impossible by
construction:

* the ``.env`` is the nearest one from the working directory up to the root of the
  enclosing git repository (only the working directory outside a repository), so
  ``cd scripts && autopack run list`` reads the project's ``.env``, not nothing;
* a relative SQLite path is made absolute *at resolution time*: a path written in a
  ``.env`` against that file's directory (the file says where the database is, wherever
  you run from), a path from the flag or the environment against the working directory;
  the file settings a ``.env`` gives (estimator, price table, cassette, cache) likewise;
* children never re-resolve: :func:`child_env` hands them every resolved value explicitly.

Importing this module reads nothing; :func:`load_settings` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from autopack import redact
from autopack.bounds import INT32_MAX, is_utf8
from autopack.dburl import redact_url, resolve_database_url
from autopack.envfile import (
    check_dotenv,
    check_environment,
    dotenv_path,
    hidden_database_dotenv,
    outside_cache,
    outside_git_directory,
    project_root,
)
from autopack.errors import ConfigError
from autopack.field_errors import short_value
from autopack.paths import as_the_system_means, not_a_directory

DEFAULT_DATABASE_URL = "sqlite:///./autopack.db"
MIN_TOKEN_LENGTH = 16
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
DEFAULT_API_PORT = 8000

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_flag(value: object) -> bool:
    """The one parser for boolean switches such as ``TELEMETRY_DB_ENABLED``.

    The legacy tool parsed this flag three ways and treated typos as "off", silently
    losing telemetry. Here an unknown spelling is an error.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean: use one of 1/true/yes/on or 0/false/no/off")


Flag = Annotated[bool, BeforeValidator(parse_flag)]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_log_level(value: object) -> str:
    """``AUTOPACK_LOG_LEVEL`` in any case, checked here: ``logging.setLevel`` turned an
    unknown one (``verbose``, ``""``) into a ValueError traceback from every command."""
    level = str(value).strip().upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"not a log level: use one of {', '.join(_LOG_LEVELS)}")
    return level


LogLevel = Annotated[str, BeforeValidator(parse_log_level)]


def _cache_home() -> Path:
    """``$XDG_CACHE_HOME``, else ``~/.cache`` (read when settings are resolved, not on import)."""
    configured = os.environ.get("XDG_CACHE_HOME")
    return Path(configured) if configured else Path.home() / ".cache"


class Settings(BaseSettings):
    """Every knob Autopack reads; each field's environment name is its name in capitals."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,  # an infinite timeout or scale fails later, in every attempt
    )

    database_url: str = Field(DEFAULT_DATABASE_URL, description="Database every part uses.")
    autopack_api_url: str | None = Field(None, description="API server executors attach to.")
    autopack_api_wait_seconds: float = Field(
        10.0,
        ge=0.0,
        le=3600.0,
        description="How long a command waits, saying so, for nothing answering at "
        "AUTOPACK_API_URL to start answering (a server starting or restarting) before it "
        "exits 2; 0: at once. A running drain rides out a restart as long (10 s).",
    )
    autopack_default_api_port: int = Field(
        DEFAULT_API_PORT,
        ge=1,
        le=65535,
        description="Port probed for an already running API server.",
    )
    autopack_expected_instance_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]{1,64}$",  # a UUID as db_meta makes them; never echo 10 KB
        description="The database's instance_id (`autopack db identity` prints it): a "
        "server refuses to serve, a client to use, any other. Set on spawned servers.",
    )
    autopack_parent_pid: int | None = Field(
        None,
        ge=1,
        le=INT32_MAX,  # a process id: -1 or 2**70 made every server stop at once
        description="Set on spawned servers: exit when this process is gone.",
    )
    autopack_maintenance_interval_seconds: float = Field(
        5.0,
        ge=0.05,
        le=3600,
        description="How often the API reclaims expired leases, expires approvals, "
        "and ends runs over their duration budget (inf would never; 1e-300 spins).",
    )
    autopack_api_threads: int = Field(
        8,
        ge=1,
        le=256,
        description="Threads serving the API's blocking endpoints (more only adds GIL contention).",
    )
    telemetry_db_enabled: Flag = Field(False, description="Record LLM telemetry rows.")
    autopack_llm_provider: Literal["auto", "anthropic", "openai", "replay"] = Field(
        "auto", description="Which LLM provider answers Builder and Auditor calls."
    )
    autopack_builder_model: str | None = Field(None, description="Model for the Builder role.")
    autopack_auditor_model: str | None = Field(None, description="Model for the Auditor role.")
    autopack_replay_cassette: Path | None = Field(
        None, description="JSONL cassette for the replay provider (default: bundled)."
    )
    autopack_replay_speed: float = Field(
        0.0, ge=0.0, description="Replay latency scale: 1 = as recorded, 0 = instant."
    )
    autopack_price_table: Path | None = Field(None, description="Override the model price table.")
    autopack_free_models: str | None = Field(
        None,
        description="Models that cost nothing per token (your own hardware: Ollama, vLLM), "
        "separated by ',': their calls cost $0 instead of an unknown price.",
    )
    autopack_estimator_file: Path | None = Field(
        None, description="Override the token estimator coefficients."
    )
    autopack_target_truncation: float = Field(
        0.02,
        gt=0.0,
        lt=0.5,
        description="The share of Builder calls allowed to run out of max_tokens: the "
        "budget is that upper quantile of the estimator's predictive distribution.",
    )
    autopack_max_continuations: int = Field(
        3,
        ge=0,
        le=50,
        description="How often a Builder answer cut off at max_tokens (or by a dropped "
        "stream) is continued where it stopped before the attempt counts as truncated; "
        "0 disables continuation.",
    )
    autopack_continuation_token_cap: int | None = Field(
        None,
        ge=1,
        description="At most this many output tokens across one answer's continuations "
        "(default: no cap beyond the phase's own caps).",
    )
    autopack_poll_seconds: float = Field(
        1.0,
        gt=0.0,
        le=3600.0,
        description="How often a drain with nothing to claim looks again while the phases "
        "left are held by other executors (its own attempts' results wake it at once).",
    )
    autopack_llm_unreachable_seconds: float = Field(
        60.0,
        ge=0.0,
        le=3600.0,
        description="How long a drain waits for an LLM provider nothing answers at, or "
        "that answers it is busy (429/502/503/504/529), after the SDK's own retries, "
        "before it stops and hands the phase back: not the phase's failure.",
    )
    autopack_llm_timeout_seconds: float = Field(
        600.0,
        ge=1.0,
        le=86_400.0,
        description="How long an LLM call may wait for the server: per read, and for "
        "text on a stream (one stalled this long is given up on, continued or retried); "
        "a whole call may last this plus a second per token of its max_tokens.",
    )
    autopack_prompt_cache: Flag = Field(
        True,
        description="Mark the system prompt and the phase's stable context for the "
        "provider's prompt cache (Anthropic cache_control; OpenAI caches prefixes itself).",
    )
    anthropic_api_key: SecretStr | None = Field(None, description="Anthropic credential.")
    anthropic_base_url: str | None = Field(None, description="Anthropic-compatible endpoint.")
    openai_api_key: SecretStr | None = Field(None, description="OpenAI credential.")
    openai_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp, LM Studio)."
    )
    autopack_cache_dir: Path = Field(
        default_factory=lambda: _cache_home() / "autopack",
        description="This machine's clones of run repositories and the attempts' worktrees.",
    )
    autopack_keep_failed_worktrees_minutes: float = Field(
        60.0, ge=0, description="How long a failed attempt's worktree is kept for inspection."
    )
    autopack_api_token: SecretStr | None = Field(
        None,
        description="Operator token: create, change and cancel runs, requeue, decide "
        "approvals, read everything. Servers check it, clients send it (SECURITY.md).",
    )
    autopack_worker_token: SecretStr | None = Field(
        None,
        description="Worker token: claims, heartbeats, usage, results, approval requests, "
        "telemetry writes, reading runs. What executor machines get.",
    )
    autopack_allow_check_prefix: str | None = Field(
        None,
        description="Executors run only checks starting with one of these prefixes "
        "(separated by ';'); checks with shell operators are refused. Unset: any check.",
    )
    autopack_otel: Flag = Field(False, description="Export OpenTelemetry GenAI spans/metrics.")
    autopack_log_level: LogLevel = Field("INFO", description="Log level (any case).")
    autopack_log_format: Literal["text", "json"] = Field("text", description="Log line format.")

    @field_validator("database_url")
    @classmethod
    def _absolute_database_url(cls, value: str) -> str:
        return resolve_database_url(value)

    @field_validator("autopack_cache_dir")
    @classmethod
    def _absolute_cache_dir(cls, value: Path) -> Path:
        """Made absolute against the working directory once, here: git runs in the run's
        repository, so a relative cache (``AUTOPACK_CACHE_DIR=cache``) put the attempts'
        worktrees inside the person's workspace while the executor wrote into another,
        empty directory (every attempt failed ``git_error``), and one starting with ``-``
        reached ``git worktree add`` as an option. One that can never be a directory (a
        file or FIFO at it or above it, a name too long) is refused here, naming the
        setting: the first drain's attempt raised ``OSError`` with a traceback."""
        absolute = as_the_system_means(Path.cwd() / value.expanduser())  # lnk/.. as the OS
        if problem := not_a_directory(absolute):  # every attempt's worktree goes in it
            raise ValueError(f"{absolute} {problem}")
        return absolute

    @field_validator("autopack_api_token", "autopack_worker_token")
    @classmethod
    def _token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        # ASCII: an HTTP header carries Latin-1 at most, and httpx sends ASCII only
        if (
            len(token) < MIN_TOKEN_LENGTH
            or not token.isascii()
            or not token.isprintable()
            or any(c.isspace() for c in token)
        ):
            raise ValueError(
                f"a token needs at least {MIN_TOKEN_LENGTH} printable ASCII characters and "
                f"no spaces; make one with: {MAKE_TOKEN}"
            )
        return value

    @field_validator("autopack_allow_check_prefix")
    @classmethod
    def _names_a_command(cls, value: str | None) -> str | None:
        """A list that names no command (``" "``, ``";"``) is refused, not read as no
        list: the allow-list failed open and every check ran. Empty is unset (below)."""
        if value is not None and not any(piece.strip() for piece in value.split(";")):
            raise ValueError(
                "names no command: give ';'-separated commands such as 'python -m pytest', "
                "or leave it unset to run any check"
            )
        return value

    @model_validator(mode="after")
    def _distinct_tokens(self) -> Settings:
        api, worker = self.autopack_api_token, self.autopack_worker_token
        if api is not None and worker is not None and api == worker:
            raise ValueError(
                "AUTOPACK_API_TOKEN and AUTOPACK_WORKER_TOKEN must differ (a worker token "
                "must not be able to create runs)"
            )
        return self

    @field_validator("*", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: Any, info: ValidationInfo) -> Any:
        # child_env writes "" for unset optional values so that no .env can fill them in.
        field = cls.model_fields[info.field_name or ""]
        if value == "" and field.default is None:
            return None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # flag > environment > .env > default; secrets directories are not a source here.
        return (init_settings, env_settings, dotenv_settings)


@dataclass(frozen=True)
class DatabaseOrigin:
    """Where ``DATABASE_URL`` came from and, for a relative SQLite path, what it was
    resolved against: what a user needs to find (or fix) the database a command opened."""

    source: str
    """``flag``, ``env``, ``.env at PATH`` or ``default``."""
    raw: str
    """The value as written there (password hidden)."""
    base: Path | None
    """The directory a relative SQLite path was resolved against; None when absolute."""

    def describe(self) -> str:
        """``'sqlite:///autopack.db' from .env at /r/.env, resolved against /r (…)'``."""
        text = f"{self.raw!r} from {self.source}"
        if self.base is None:
            return text
        if self.source.startswith(".env"):
            why = "the .env file's directory"
        elif self.source == "default" and (self.base / ".git").exists():
            why = "the root of the git repository you are in"
        elif self.base != Path.cwd():  # envfile.search_directories: a run's workspace
            why = "the directory holding the run workspace you are in"
        else:
            why = "the working directory"
        return f"{text}, a relative path resolved against {self.base} ({why})"


class LoadedSettings:
    """Resolved settings plus where each value came from (for ``config show`` and ``doctor``)."""

    def __init__(
        self, settings: Settings, sources: dict[str, str], database: DatabaseOrigin | None = None
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.database = database or DatabaseOrigin(
            sources.get("database_url", "default"), redact_url(settings.database_url), None
        )

    def rows(self) -> list[tuple[str, str, str]]:
        """(ENV_NAME, display value with secrets redacted, source) for every setting."""
        rows = []
        for name in Settings.model_fields:
            value = getattr(self.settings, name)
            if isinstance(value, SecretStr):
                shown = "****" if value.get_secret_value() else ""
            elif name == "database_url":
                shown = redact_url(value)
            else:
                shown = "" if value is None else str(value)
            rows.append((name.upper(), shown, self.sources[name]))
        return rows


def dotenv_values(path: Path) -> dict[str, Any]:
    """The settings a ``.env`` file offers, read by pydantic-settings' own parser, once
    :func:`check_dotenv` found every line readable."""
    if path.is_file():
        check_dotenv(path, known=Settings.model_fields)
    return dict(DotEnvSettingsSource(Settings, env_file=path)())


def source_values(
    flags: dict[str, Any] | None = None, env_file: Path | None = None
) -> dict[str, dict[str, Any]]:
    """The raw value each source offers, per source, before precedence is applied.

    Uses pydantic-settings' own source classes so this report can never disagree with
    the precedence :class:`Settings` applies.
    """
    env_file = env_file or dotenv_path()
    return {
        "flag": {k: v for k, v in (flags or {}).items() if v is not None},
        "env": dict(EnvSettingsSource(Settings)()),
        f".env at {env_file}": dotenv_values(env_file),
    }


def _database_origin(offered: dict[str, dict[str, Any]], env_file: Path) -> DatabaseOrigin:
    """Which source gives ``DATABASE_URL`` and what a relative SQLite path is resolved against."""
    source = next((s for s, values in offered.items() if "database_url" in values), "default")
    raw = str(offered.get(source, {}).get("database_url", DEFAULT_DATABASE_URL))
    try:
        parsed = make_url(raw.strip())
    except (ArgumentError, ValueError):  # a port that is no number: "h:abc", "[::1"
        return DatabaseOrigin(source, raw, None)
    database = parsed.database or ""
    relative = (
        parsed.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not Path(database).expanduser().is_absolute()
    )
    if not relative:
        return DatabaseOrigin(source, redact_url(raw), None)
    if source.startswith(".env"):
        base = env_file.parent
    else:
        base = project_root() if source == "default" else Path.cwd()
    return DatabaseOrigin(source, redact_url(raw), base)


def load_settings(**flags: Any) -> LoadedSettings:
    """Resolve the settings once: ``load_settings(database_url=flag_value_or_None)``."""
    try:
        Path.cwd()  # what the .env search and every relative path start from
    except FileNotFoundError:
        raise ConfigError(
            "the working directory no longer exists (deleted or moved since this shell "
            "entered it): cd to a directory that exists"
        ) from None
    check_environment(os.environ, known=Settings.model_fields)
    given = {k: v for k, v in flags.items() if v is not None}
    env_file = dotenv_path()
    offered = source_values(given, env_file)
    for source, values in offered.items():
        for name, value in values.items():
            if isinstance(value, str) and not is_utf8(value):  # argv/environment bytes
                raise ConfigError(
                    f"invalid setting: {name.upper()} from {source} is not UTF-8 text (it "
                    "holds bytes the locale could not decode)"
                )
    origin = _database_origin(offered, env_file)
    if origin.source == "default":
        _refuse_a_hidden_database(env_file)
    if origin.base is not None and origin.source not in ("flag", "env"):
        # A .env says where the database is relative to itself, not to where we run; the
        # default is the project's, at its root (envfile.project_root).
        try:
            given["database_url"] = resolve_database_url(
                str(offered.get(origin.source, {}).get("database_url", DEFAULT_DATABASE_URL)),
                cwd=origin.base,
            )
        except ValueError as exc:
            problem = f"invalid setting: DATABASE_URL={origin.raw!r}: {exc}"
            raise ConfigError(redact.text(problem)) from None
    given.update(_dotenv_paths(offered, env_file, given))
    try:
        settings = Settings(_env_file=env_file, **given)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        # a database URL with a password, a key in a typo'd variable: never in a message
        raise ConfigError(redact.text(f"invalid setting: {problems}")) from None
    redact.remember(settings)
    if origin.source == "default" and origin.base is not None:
        outside_cache(origin.base, settings.autopack_cache_dir)
        outside_git_directory(origin.base)
    sources = {}
    for name in Settings.model_fields:
        sources[name] = next((src for src, values in offered.items() if name in values), "default")
    return LoadedSettings(settings, sources, origin)


def _refuse_a_hidden_database(env_file: Path) -> None:
    """Refuse the default database where the nearest ``.env`` names none but hides one that
    does (:func:`autopack.envfile.hidden_database_dotenv`): naming both files."""
    hidden = hidden_database_dotenv()
    if hidden is None:
        return
    raise ConfigError(
        f"{env_file} applies here (the nearest .env) and names no DATABASE_URL, but it hides "
        f"{hidden}, which does: here Autopack would use the default database instead of that "
        f"one. Add DATABASE_URL to {env_file}, set DATABASE_URL or pass --database-url",
        env_file=str(env_file),
    )


def _dotenv_paths(
    offered: dict[str, dict[str, Any]], env_file: Path, given: dict[str, Any]
) -> dict[str, str]:
    """The file settings a ``.env`` gives with a relative path, made absolute against that
    file's directory (like its SQLite path): ``AUTOPACK_ESTIMATOR_FILE=estimator.json``
    next to the ``.env`` means that file from every subdirectory, not a missing one or
    another ``estimator.json`` where the command happens to run."""
    dotenv = offered.get(f".env at {env_file}", {})
    resolved = {}
    for name, value in dotenv.items():
        field = Settings.model_fields.get(name)
        if field is None or name in given or name in offered["env"] or not value:
            continue
        if field.annotation is Path or Path in get_args(field.annotation):
            path = Path(str(value)).expanduser()
            if not path.is_absolute():
                resolved[name] = str(env_file.parent / path)
    return resolved


def _problem(error: Any) -> str:
    """``NAME='value': message``; a secret's value (or the whole input) is never shown."""
    name = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    field = Settings.model_fields.get(name)
    if not name:
        return message
    if field is not None and "SecretStr" in str(field.annotation):
        return f"{name.upper()}: {message}"
    return f"{name.upper()}={short_value(error.get('input'))!r}: {message}"


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The complete environment for a child process: every resolved value, explicitly.

    The child inherits the parent's environment, then every Autopack setting is written
    over it, so neither a ``.env`` in the child's working directory nor a missing variable
    can make it resolve anything differently from its parent.
    """
    env = dict(os.environ)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            value = ""
        elif isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "1" if value else "0"
        env[name.upper()] = str(value)
    env.update(extra)
    return env
