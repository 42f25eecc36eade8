"""What a call cost, from a versioned price table shipped as data.

The table is ``autopack/data/prices.json`` (USD per million tokens for input, output,
cache reads and cache writes, plus each model's maximum output tokens), overridable and
extendable by ``AUTOPACK_PRICE_TABLE=FILE`` in the same format: the file's entries replace
or add models; the merged version reads ``<bundled>+<override>``.

A model missing from the table costs ``None`` (stored as NULL) with ONE warning per model
per process, never $0: a zero would silently understate every total it joins. A model that
really costs nothing per token (Ollama, vLLM, llama.cpp on your own hardware) is said to be
so, in one line: ``AUTOPACK_FREE_MODELS=qwen2.5-coder:32b,llama3.2:3b`` adds each at $0
(a model the table prices at more than that is refused, never silently made free).

Model-name matching, first hit wins:

1. the name exactly (case-insensitive);
2. without a routing prefix: ``anthropic/claude-sonnet-5-5`` -> ``claude-sonnet-5-5``;
3. without a release-date suffix: ``-20250929``, ``-2025-04-14`` or ``@20250929``
   (providers answer with dated snapshot names such as ``claude-sonnet-4-5-20250929``);
4. a dotted Claude version as OpenRouter spells it: ``claude-sonnet-5.5`` -> ``claude-sonnet-5-5``.

There is deliberately no "longest prefix" rule: ``gpt-6-luna-fast`` must not be priced as
``gpt-6-luna`` (it costs twice as much). A wrong price is worse than no price.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autopack.errors import ConfigError
from autopack.llm.base import Usage
from autopack.logs import log_event
from autopack.paths import read_text_file

if TYPE_CHECKING:
    from autopack.config import Settings

logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_TOKENS = 8192
"""Output budget ceiling for a model the table does not know: small enough for any model."""

_DATE_SUFFIX = re.compile(r"(?:-\d{8}|-\d{4}-\d{2}-\d{2}|@\d{8})$")


PRICE_MAX = 10_000.0
"""USD per million tokens no model comes near (the dearest are in the hundreds): a price
file saying more, or ``Infinity`` (which JSON as Python reads it allows), is a typo,
refused when the file is read; it made every call's cost beyond what a usage report takes
(NaN for ``Infinity``), ending each attempt ``executor_error`` with the call unrecorded."""

Price = Annotated[float, Field(ge=0, le=PRICE_MAX, allow_inf_nan=False)]


class ModelPrice(BaseModel):
    """One model's prices in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str | None = None
    input: Price
    output: Price
    cache_read: Price | None = Field(None, description="Defaults to the input price.")
    cache_write: Price | None = Field(None, description="Defaults to the input price.")
    max_output_tokens: int | None = Field(None, gt=0)


class PriceFile(BaseModel):
    """The file format of the bundled table and of override files."""

    model_config = ConfigDict(extra="forbid")

    version: str
    unit: str = "USD per million tokens"
    notes: str | None = None
    models: dict[str, ModelPrice]


def _read(text: str, origin: str) -> PriceFile:
    try:
        return PriceFile.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"price table {origin} is invalid: {exc}") from exc


def model_candidates(model: str) -> list[str]:
    """The names tried, in order, when looking ``model`` up (see the module docstring)."""
    name = model.strip().lower()
    candidates = [name]
    if "/" in name:
        name = name.rsplit("/", 1)[1]
        candidates.append(name)
    undated = _DATE_SUFFIX.sub("", name)
    if undated != name:
        name = undated
        candidates.append(name)
    if name.startswith("claude-") and "." in name:
        candidates.append(name.replace(".", "-"))
    return list(dict.fromkeys(candidates))


class PriceTable:
    """A merged price table; ``cost_of`` and ``max_output_tokens`` are what callers use."""

    def __init__(self, version: str, models: dict[str, ModelPrice], sources: tuple[str, ...]):
        self.version = version
        self.models = {name.lower(): price for name, price in models.items()}
        self.sources = sources
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, override: Path | None = None, free: tuple[str, ...] = ()) -> PriceTable:
        """The bundled table, with ``override``'s entries replacing or adding models, and
        the ``free`` models (``AUTOPACK_FREE_MODELS``) at $0."""
        bundled_file = resources.files("autopack") / "data" / "prices.json"
        bundled = _read(bundled_file.read_text(encoding="utf-8"), "autopack/data/prices.json")
        models = dict(bundled.models)
        version = bundled.version
        sources: tuple[str, ...] = ("bundled",)
        if override is not None:
            try:
                text = read_text_file(Path(override))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"AUTOPACK_PRICE_TABLE={override}: cannot read ({exc})") from exc
            extra = _read(text, str(override))
            models.update(extra.models)
            version = f"{bundled.version}+{extra.version}"
            sources = (*sources, str(override))
        if not free:
            return cls(version, models, sources)
        table = cls(version, models, sources)
        for name in free:
            key = table.match(name)
            price = table.models[key] if key is not None else None
            if price is not None and (price.input or price.output):
                raise ConfigError(
                    f"AUTOPACK_FREE_MODELS names {name}, which the price table "
                    f"{version} prices at ${price.input:g} input / ${price.output:g} output "
                    "per million tokens: a priced model is never made free; remove it "
                    "(a price file in AUTOPACK_PRICE_TABLE can set its price to 0)"
                )
            models.setdefault(key or name, ModelPrice(input=0, output=0))
        return cls(f"{version}+free", models, (*sources, "AUTOPACK_FREE_MODELS"))

    def match(self, model: str) -> str | None:
        """The table key ``model`` is priced as, or ``None``."""
        return next((name for name in model_candidates(model) if name in self.models), None)

    def cost_of(self, model: str, usage: Usage) -> tuple[float | None, dict[str, Any] | None]:
        """``(cost in USD, price snapshot)``; ``(None, None)`` for an unknown model.

        ``usage.input_tokens`` includes the cache parts, so they are taken out of it and
        priced at their own rates. The snapshot (stored with the usage row) records the
        table version and the rates used, so a later price change never rewrites history.
        """
        key = self.match(model)
        if key is None:
            self._warn_unknown(model)
            return None, None
        price = self.models[key]
        cache_read = price.input if price.cache_read is None else price.cache_read
        cache_write = price.input if price.cache_write is None else price.cache_write
        uncached = max(usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0)
        cost = (
            uncached * price.input
            + usage.cache_read_tokens * cache_read
            + usage.cache_write_tokens * cache_write
            + usage.output_tokens * price.output
        ) / 1_000_000
        snapshot = {
            "table_version": self.version,
            "model": key,
            "unit": "USD per million tokens",
            "input": price.input,
            "output": price.output,
            "cache_read": cache_read,
            "cache_write": cache_write,
        }
        return round(cost, 10), snapshot

    def max_output_tokens(self, model: str) -> int:
        """The model's output ceiling, or the conservative default for unknown models."""
        return self.declared_max_output_tokens(model) or DEFAULT_MAX_OUTPUT_TOKENS

    def declared_max_output_tokens(self, model: str) -> int | None:
        """The model's output ceiling as the table says it, or None (the default applies)."""
        key = self.match(model)
        return self.models[key].max_output_tokens if key is not None else None

    def told(self, models: Iterable[str]) -> None:
        """A person was already told ``models`` have no price (the drain's cost-cap
        warning): the log's ``llm_price_unknown`` line would say it a second time."""
        with self._lock:
            self._warned.update(models)

    def _warn_unknown(self, model: str) -> None:
        with self._lock:
            if model in self._warned:
                return
            self._warned.add(model)
        log_event(
            logger,
            "llm_price_unknown",
            logging.WARNING,
            model=model,
            table_version=self.version,
            effect="cost recorded as NULL",
            fix="AUTOPACK_FREE_MODELS=MODEL if it runs on your own hardware, else a price "
            "file in AUTOPACK_PRICE_TABLE=FILE",
        )


@lru_cache(maxsize=8)
def load_price_table(override: Path | None = None, free: tuple[str, ...] = ()) -> PriceTable:
    """The process-wide table for ``override`` and ``free`` (cached, so each unknown model
    warns once)."""
    return PriceTable.load(override, free)


def free_models(value: str | None) -> tuple[str, ...]:
    """``AUTOPACK_FREE_MODELS`` as names: comma-separated (no model name holds a comma)."""
    return tuple(dict.fromkeys(n.strip() for n in (value or "").split(",") if n.strip()))


def price_table(settings: Settings) -> PriceTable:
    """The table ``settings`` ask for (``AUTOPACK_PRICE_TABLE`` or the bundled one, plus
    ``AUTOPACK_FREE_MODELS``)."""
    return load_price_table(
        settings.autopack_price_table, free_models(settings.autopack_free_models)
    )


def cost_of(
    model: str, usage: Usage, settings: Settings | None = None
) -> tuple[float | None, dict[str, Any] | None]:
    """:meth:`PriceTable.cost_of` on the table ``settings`` select (default: bundled)."""
    table = price_table(settings) if settings is not None else load_price_table()
    return table.cost_of(model, usage)


def max_output_tokens(model: str, settings: Settings | None = None) -> int:
    """:meth:`PriceTable.max_output_tokens` on the table ``settings`` select (default: bundled)."""
    table = price_table(settings) if settings is not None else load_price_table()
    return table.max_output_tokens(model)


def unpriced_cap_warning(
    table: PriceTable, models: Iterable[str], caps: Sequence[str]
) -> str | None:
    """The one warning a drain prints when a cost cap cannot stop spending: the calls of a
    model without a price cost NULL, which no cost cap counts, so a run capped at $10 on a
    local Ollama model (or a paid model the table does not know) could spend without end.
    Such models are not refused (a free local model is a good use); token caps still bound
    them. None when every model has a price or no cost cap is set."""
    unpriced = sorted({model for model in models if table.match(model) is None})
    if not unpriced or not caps:
        return None
    names = ", ".join(unpriced)
    example = json.dumps({"version": "mine", "models": {unpriced[0]: {"input": 3, "output": 15}}})
    return (
        f"model {names} has no price (table {table.version}): its calls count as nothing "
        f"toward {' and '.join(caps)}, so that cap cannot stop its spending; token caps "
        "still apply. If it runs on your own hardware, say it is free (in the environment "
        f"or .env): AUTOPACK_FREE_MODELS={','.join(unpriced)}. Otherwise give it a price: "
        f"write a price file in USD per million tokens, e.g. {example}, and set "
        "AUTOPACK_PRICE_TABLE=FILE."
    )


class CapWarnings:
    """What a drain says about models without a price under a cost cap: each model once,
    those it will call before it starts, and any other name an answer comes back under
    (a server may answer ``qwen2.5-coder:latest`` when asked for ``qwen2.5-coder``; the
    answered name is the one priced), when it first does."""

    def __init__(self, table: PriceTable, caps: Sequence[str]) -> None:
        self.table = table
        self.caps = tuple(caps)
        self._told: set[str] = set()
        self._lock = threading.Lock()

    def about(self, models: Iterable[str]) -> str | None:
        """The warning for those of ``models`` not warned about yet, or None."""
        with self._lock:
            new = [model for model in models if model not in self._told]
            self._told.update(new)
        warning = unpriced_cap_warning(self.table, new, self.caps)
        if warning is not None:
            self.table.told(new)
        return warning
