"""Price table: cost math, name matching, unknown models (NULL + one warning), overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack.config import load_settings
from autopack.errors import ConfigError
from autopack.llm.base import Usage
from autopack.llm.pricing import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    PriceTable,
    cost_of,
    load_price_table,
    max_output_tokens,
)
from autopack.llm.registry import DEFAULT_MODELS
from tests.llm.support import Records


def test_cost_prices_each_kind_of_token_at_its_own_rate() -> None:
    table = PriceTable.load()
    # claude-sonnet-5-5: $2 in, $10 out, $0.20 cache read, $2.50 cache write per MTok.
    usage = Usage(
        input_tokens=1000, output_tokens=500, cache_read_tokens=200, cache_write_tokens=100
    )

    cost, snapshot = table.cost_of("claude-sonnet-5-5", usage)

    # 700 uncached * 2 + 200 * 0.2 + 100 * 2.5 + 500 * 10 = 6690 micro-dollars
    assert cost == pytest.approx(0.00669)
    assert snapshot == {
        "table_version": table.version,
        "model": "claude-sonnet-5-5",
        "unit": "USD per million tokens",
        "input": 2.0,
        "output": 10.0,
        "cache_read": 0.2,
        "cache_write": 2.5,
    }


def test_the_bundled_table_is_versioned_and_prices_the_default_models() -> None:
    table = PriceTable.load()
    assert (
        table.version
        == json.loads((Path(__file__).parents[2] / "src/autopack/data/prices.json").read_text())[
            "version"
        ]
    )
    for model in DEFAULT_MODELS.values():
        cost, _ = table.cost_of(model, Usage(1000, 1000))
        assert cost is not None and cost > 0
        assert table.max_output_tokens(model) > DEFAULT_MAX_OUTPUT_TOKENS


@pytest.mark.parametrize(
    ("reported", "priced_as"),
    [
        ("claude-sonnet-5-5", "claude-sonnet-5-5"),
        ("Claude-Sonnet-5-5", "claude-sonnet-5-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("anthropic/claude-sonnet-5-5", "claude-sonnet-5-5"),
        ("anthropic/claude-sonnet-5.5", "claude-sonnet-5-5"),
        ("openai/gpt-6-luna", "gpt-6-luna"),
        ("gpt-6-luna-fast", None),  # no prefix rule: a faster, pricier variant is not luna
        ("llama3.2:3b", None),
    ],
)
def test_model_name_matching(reported: str, priced_as: str | None) -> None:
    assert PriceTable.load().match(reported) == priced_as


def test_unknown_model_costs_none_with_one_warning_per_model(log_records: Records) -> None:
    table = PriceTable.load()

    first = table.cost_of("llama3.2:3b", Usage(10, 10))
    second = table.cost_of("llama3.2:3b", Usage(99, 99))
    table.cost_of("qwen3-coder", Usage(1, 1))

    assert first == (None, None)
    assert second == (None, None)
    warnings = log_records.events("llm_price_unknown")
    assert [Records.fields(r)["model"] for r in warnings] == ["llama3.2:3b", "qwen3-coder"]
    assert all(r.levelname == "WARNING" for r in warnings)


def test_max_output_tokens_known_and_unknown() -> None:
    assert max_output_tokens("claude-haiku-4-5-20251001") == 64000
    assert max_output_tokens("gpt-4o-mini") == 16384
    assert max_output_tokens("some-local-model") == DEFAULT_MAX_OUTPUT_TOKENS == 8192


def test_override_file_replaces_and_extends_entries(tmp_path: Path) -> None:
    override = tmp_path / "prices.json"
    override.write_text(
        json.dumps(
            {
                "version": "team-2026-12",
                "models": {
                    "claude-sonnet-5-5": {"input": 1.0, "output": 5.0, "max_output_tokens": 4096},
                    "llama3.2:3b": {"input": 0.0, "output": 0.0},
                },
            }
        ),
        encoding="utf-8",
    )
    settings = load_settings(autopack_price_table=str(override)).settings

    cost, snapshot = cost_of("claude-sonnet-5-5", Usage(1_000_000, 1_000_000), settings)
    assert cost == pytest.approx(6.0)
    assert snapshot is not None
    assert snapshot["table_version"].endswith("+team-2026-12")
    assert snapshot["cache_read"] == 1.0  # unset cache prices default to the input price
    assert max_output_tokens("claude-sonnet-5-5", settings) == 4096

    local_cost, _ = cost_of("llama3.2:3b", Usage(500, 500), settings)
    assert local_cost == 0.0  # an explicit zero is a price; only a missing model is NULL

    # Entries not in the override keep the bundled price.
    assert cost_of("gpt-6-luna", Usage(1_000_000, 0), settings)[0] == pytest.approx(0.1)
    # And without the setting nothing changed.
    assert cost_of("claude-sonnet-5-5", Usage(1_000_000, 1_000_000))[0] == pytest.approx(12.0)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("not json", "is invalid"),
        ('{"models": {}}', "version"),
        ('{"version": "x", "models": {"m": {"input": -1, "output": 1}}}', "greater than or equal"),
        ('{"version": "x", "models": {"m": {"input": 1, "output": 1, "typo": 2}}}', "typo"),
    ],
)
def test_invalid_override_is_a_config_error_naming_the_file(
    tmp_path: Path, content: str, complaint: str
) -> None:
    override = tmp_path / "bad-prices.json"
    override.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        PriceTable.load(override)
    assert str(override) in caught.value.message
    assert complaint in caught.value.message


def test_missing_override_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUTOPACK_PRICE_TABLE"):
        PriceTable.load(tmp_path / "absent.json")


def test_process_table_is_cached_so_warnings_stay_single() -> None:
    assert load_price_table() is load_price_table()
