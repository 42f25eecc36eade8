"""Provider selection from settings: the auto table, explicit choices, models, record/replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autopack.config import Settings, load_settings
from autopack.errors import ConfigError
from autopack.llm.anthropic_provider import AnthropicProvider
from autopack.llm.openai_provider import OpenAIProvider
from autopack.llm.registry import (
    DEFAULT_MODELS,
    PROVIDERS,
    bundled_cassette,
    make_provider,
    model_for,
    provider_name,
)
from autopack.llm.replay import RecordingProvider, ReplayProvider
from tests.fakes.llm_wire import anthropic_message
from tests.llm.support import Records
from tests.support import clean_env


@pytest.fixture
def cassette(tmp_path: Path) -> Path:
    path = tmp_path / "c.jsonl"
    entry = {
        "match": {"run_id": "r", "phase_id": "p", "attempt": 1, "role": "builder"},
        "provider": "anthropic",
        "model": "claude-sonnet-5-5",
        "latency_ms": 5.0,
        "response": anthropic_message("from the cassette"),
    }
    path.write_text(json.dumps(entry) + "\n", encoding="utf-8")
    return path


def settings(**values: Any) -> Settings:
    return load_settings(**values).settings


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "replay"),
        ({"anthropic_api_key": "sk-ant"}, "anthropic"),
        ({"openai_api_key": "sk-oa"}, "openai"),
        ({"openai_base_url": "http://127.0.0.1:11434/v1"}, "openai"),
        ({"anthropic_api_key": "sk-ant", "openai_api_key": "sk-oa"}, "anthropic"),
        (
            {"autopack_llm_provider": "openai", "anthropic_api_key": "a", "openai_api_key": "o"},
            "openai",
        ),
        ({"autopack_llm_provider": "replay", "anthropic_api_key": "sk-ant"}, "replay"),
    ],
)
def test_auto_selection_table(values: dict[str, str], expected: str) -> None:
    assert provider_name(settings(**values)) == expected


def test_auto_reads_the_environment_through_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1234/v1")
    assert provider_name(settings()) == "openai"


def test_names_map_to_implementations_in_one_table(cassette: Path) -> None:
    assert sorted(PROVIDERS) == ["anthropic", "openai", "replay"]
    made = {
        "anthropic": make_provider(
            settings(autopack_llm_provider="anthropic", anthropic_api_key="k")
        ),
        "openai": make_provider(settings(autopack_llm_provider="openai", openai_api_key="k")),
        "replay": make_provider(
            settings(autopack_llm_provider="replay", autopack_replay_cassette=str(cassette))
        ),
    }
    assert isinstance(made["anthropic"], AnthropicProvider)
    assert isinstance(made["openai"], OpenAIProvider)
    assert isinstance(made["replay"], ReplayProvider)
    assert {name: p.name for name, p in made.items()} == {n: n for n in made}
    made["anthropic"].close()
    made["openai"].close()


def test_local_openai_server_needs_no_key() -> None:
    provider = make_provider(settings(openai_base_url="http://127.0.0.1:11434/v1"))
    assert isinstance(provider, OpenAIProvider)
    assert provider.token_parameter == "max_tokens"
    provider.close()


def test_offline_default_is_replay_with_one_loud_warning(
    cassette: Path, log_records: Records
) -> None:
    provider = make_provider(settings(autopack_replay_cassette=str(cassette)))

    assert isinstance(provider, ReplayProvider)
    assert provider.path == cassette
    make_provider(settings(autopack_replay_cassette=str(cassette)), announce=False)
    [warning] = log_records.events("llm_offline_replay")
    assert warning.levelname == "WARNING"
    assert "NO LLM CREDENTIALS" in Records.fields(warning)["message"]


def test_explicit_replay_does_not_warn(cassette: Path, log_records: Records) -> None:
    make_provider(settings(autopack_llm_provider="replay", autopack_replay_cassette=str(cassette)))
    make_provider(settings(anthropic_api_key="k"), cassette=cassette)
    assert log_records.events("llm_offline_replay") == []


def test_bundled_cassette_is_the_offline_default() -> None:
    path = bundled_cassette()
    assert path.parts[-3:] == ("data", "cassettes", "telemetry-collection-v4.jsonl")
    if path.exists():
        provider = make_provider(settings())
        assert isinstance(provider, ReplayProvider) and provider.path == path
    else:  # the cassette is written by another part of the project; until then, a clear error
        with pytest.raises(ConfigError, match=r"telemetry-collection-v4\.jsonl"):
            make_provider(settings())


def test_a_cassette_argument_means_replay(cassette: Path) -> None:
    provider = make_provider(settings(anthropic_api_key="k"), cassette=cassette)
    assert isinstance(provider, ReplayProvider)
    assert provider.path == cassette


@pytest.mark.parametrize(
    ("values", "needs"),
    [
        ({"autopack_llm_provider": "anthropic"}, "ANTHROPIC_API_KEY"),
        ({"autopack_llm_provider": "openai"}, "OPENAI_BASE_URL"),
    ],
)
def test_explicit_provider_without_credentials_is_a_config_error(
    values: dict[str, str], needs: str
) -> None:
    with pytest.raises(ConfigError, match=needs):
        make_provider(settings(**values))


def test_record_wraps_a_live_provider_and_refuses_replay(tmp_path: Path, cassette: Path) -> None:
    recorder = make_provider(settings(anthropic_api_key="k"), record=tmp_path / "out.jsonl")
    assert isinstance(recorder, RecordingProvider)
    assert isinstance(recorder.inner, AnthropicProvider)
    assert recorder.name == "anthropic"
    recorder.inner.close()
    with pytest.raises(ConfigError, match="--record needs a live provider"):
        make_provider(settings(autopack_replay_cassette=str(cassette)), record=tmp_path / "x")


def test_models_default_per_provider_and_override_per_role() -> None:
    anthropic_settings = settings(anthropic_api_key="k")
    assert model_for(anthropic_settings, "builder") == DEFAULT_MODELS["anthropic"]
    assert model_for(anthropic_settings, "auditor") == DEFAULT_MODELS["anthropic"]
    assert model_for(settings(openai_api_key="k"), "builder") == DEFAULT_MODELS["openai"]
    custom = settings(
        openai_base_url="http://127.0.0.1:11434/v1",
        autopack_builder_model="qwen3-coder:30b",
        autopack_auditor_model="llama3.2:3b",
    )
    assert model_for(custom, "builder") == "qwen3-coder:30b"
    assert model_for(custom, "auditor") == "llama3.2:3b"
    # one model named: on the official API the other role keeps the provider's default
    # there; on a compatible server (which serves none of those names) it uses the named one
    builder_only = {"autopack_builder_model": "qwen3-coder:30b"}
    assert model_for(settings(openai_api_key="k", **builder_only), "auditor") == "gpt-6-luna"
    local = settings(openai_base_url="http://127.0.0.1:11434/v1", **builder_only)
    assert model_for(local, "auditor") == "qwen3-coder:30b"
    auditor_only = settings(
        anthropic_api_key="k",
        anthropic_base_url="http://127.0.0.1:1",
        autopack_auditor_model="local-judge",
    )
    assert model_for(auditor_only, "builder") == "local-judge"


def test_importing_the_package_reads_no_file_and_builds_no_client(tmp_path: Path) -> None:
    probe = (
        "import builtins, io, sys\n"
        "opened = []\n"
        "real_open = io.open\n"
        "def spy(file, *a, **k):\n"
        "    opened.append(str(file)); return real_open(file, *a, **k)\n"
        "builtins.open = io.open = spy\n"
        "import autopack.llm\n"
        "from autopack.llm.pricing import load_price_table\n"
        "assert load_price_table.cache_info().currsize == 0\n"
        "assert not [f for f in opened if f.endswith(('.json', '.jsonl', '.env'))], opened\n"
        "print('ok')\n"
    )
    env = clean_env(AUTOPACK_PRICE_TABLE=str(tmp_path / "absent.json"))
    result = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
