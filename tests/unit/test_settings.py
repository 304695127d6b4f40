"""Settings: grouped by concern, read from flat HASHATLAS_* variables, handed to child processes."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from streams.settings import (
    ApiSettings,
    EstimationSettings,
    KafkaSettings,
    PipelineSettings,
    RedisSettings,
    Settings,
    StackSettings,
    settings_env,
)

GROUPS = (KafkaSettings, RedisSettings, PipelineSettings, EstimationSettings, ApiSettings,
          StackSettings)


def test_every_setting_belongs_to_exactly_one_group() -> None:
    owners: dict[str, list[str]] = {}
    for group in GROUPS:
        for name in group.model_fields:
            owners.setdefault(name, []).append(group.__name__)
    assert set(owners) == set(Settings.model_fields), "a setting outside every group"
    assert {name: groups for name, groups in owners.items() if len(groups) > 1} == {}


def test_flat_variables_reach_their_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HASHATLAS_KAFKA_BOOTSTRAP", "kafka.example:19092")
    monkeypatch.setenv("HASHATLAS_REDIS_URL", "redis://cache.example:16379/2")
    monkeypatch.setenv("HASHATLAS_WINDOWS_S", "[300, 60]")
    monkeypatch.setenv("HASHATLAS_API_PORT", "8123")
    monkeypatch.setenv("HASHATLAS_TOPICS__SHARES", "shares-v2")
    settings = Settings()
    assert settings.kafka_host_port == ("kafka.example", 19092)
    assert settings.redis_host_port == ("cache.example", 16379)
    assert settings.windows_s == [60.0, 300.0]
    assert settings.api_port == 8123
    assert settings.topics.shares == "shares-v2"


def test_group_validators_still_apply() -> None:
    with pytest.raises(ValidationError, match="electricity_method"):
        Settings(electricity_method="9.9.9")
    with pytest.raises(ValidationError, match="windows_s"):
        Settings(windows_s=[60.0, -1.0])


def test_child_environment_round_trips_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(kafka_bootstrap="b:1", windows_s=[30.0, 90.0], app_id="x",
                        kafka_sasl_password=SecretStr("s3cret"), suspect_regions={"RU": "KZ"})
    env = settings_env(settings, base={"PATH": "/bin", "HASHATLAS_API_PORT": "1"})
    assert env["PATH"] == "/bin"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.model_dump() == settings.model_dump()
    assert child.kafka_sasl_password is not None
    assert child.kafka_sasl_password.get_secret_value() == "s3cret"
