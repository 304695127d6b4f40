"""One typed settings object for every hashatlas process, read from ``HASHATLAS_*`` variables.

Nested values use a double underscore, e.g. ``HASHATLAS_TOPICS__SHARES=shares-v1``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Topics(BaseModel):
    """Kafka topic names (CONTRACTS.md defaults)."""

    shares: str = "shares"
    blocks: str = "blocks"
    market: str = "market"
    estimates: str = "estimates"
    alerts: str = "alerts"
    dead_letter: str = "dead-letter"
    compacted_shares: str = "share-batches"
    history: str = "history"


class Partitions(BaseModel):
    """Partition counts used when the stack creates topics; shares bound worker parallelism."""

    shares: int = Field(default=4, ge=1)
    compacted_shares: int = Field(default=4, ge=1)
    blocks: int = Field(default=1, ge=1)
    market: int = Field(default=1, ge=1)
    estimates: int = Field(default=1, ge=1)
    alerts: int = Field(default=1, ge=1)
    dead_letter: int = Field(default=1, ge=1)
    history: int = Field(default=1, ge=1)


class KafkaSettings(BaseModel):
    """How every process reaches Kafka, and the topics it reads and writes."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: str = Field(
        default="PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$"
    )
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    topics: Topics = Topics()
    partitions: Partitions = Partitions()
    #: How often Kafka clients refresh topic metadata: a topic or partition created after a
    #: worker joined is read within this long (aiokafka's default is 5 minutes).
    metadata_max_age_s: float = Field(default=5.0, gt=0.0)
    max_message_bytes: int = Field(default=1_000_000, gt=0)

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        host, _, port = self.kafka_bootstrap.split(",")[0].rpartition(":")
        return host or "127.0.0.1", int(port)


class RedisSettings(BaseModel):
    """Where the pipeline keeps its estimates for the API."""

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)  # may hold a password
    redis_prefix: str = "hashatlas"

    @property
    def redis_host_port(self) -> tuple[str, int]:
        """Host and port of ``redis_url``, for the local stack that starts Redis itself."""
        from urllib.parse import urlparse

        parsed = urlparse(self.redis_url)
        return parsed.hostname or "127.0.0.1", parsed.port or 6379


class PipelineSettings(BaseModel):
    """The compactor, the workers and the snapshot leader: windows, bounds, clocks, outputs."""

    app_id: str = "hashatlas"
    windows_s: list[float] = Field(default=[60.0, 300.0, 900.0, 3600.0, 86400.0])
    headline_window_s: float = 300.0
    allowed_lateness_s: float = Field(default=60.0, ge=0.0)
    fine_bucket_s: float = Field(default=10.0, gt=0.0)
    coarse_bucket_s: float = Field(default=300.0, gt=0.0)
    dedup_capacity: int = Field(default=200_000, ge=0)
    max_pools: int = Field(default=256, ge=1)
    max_series: int = Field(default=4096, ge=1)
    #: How far ahead of the wall clock an event time may be (feeds' clock skew); a later one
    #: is dead-lettered, as it would make every real event of its partition late.
    max_future_skew_s: float = Field(default=300.0, ge=0.0)
    #: Distinct (pool, region) keys the compactor holds; beyond, new pools are summed under
    #: ``other`` until the next flush, so a label flood cannot exhaust its memory.
    max_compactor_keys: int = Field(default=100_000, ge=1)
    checkpoint_interval_s: float = Field(default=2.0, gt=0.0)
    # A worker assigned partitions whose changelog recovery has not finished after this long
    # stops (see streams.pipeline.ownership.RecoveryWatchdog); run workers under a supervisor.
    recovery_stall_s: float = Field(default=90.0, gt=0.0)
    settle_s: float = Field(default=2.0, ge=0.0)
    snapshot_interval_s: float = Field(default=0.5, gt=0.0)
    #: History steps and alerts the snapshot leader holds while Kafka does not take them
    #: (beyond, the oldest is dropped and counted); estimates keep only the newest.
    leader_outbox_capacity: int = Field(default=10_000, ge=1)
    history_step_s: float = Field(default=60.0, gt=0.0)
    #: Subdivisions (US-TX, ...) get regional_shift alerts once they hold this share of the
    #: network (countries from 1 %); below it they are tracked but never alert.
    shift_min_subdivision_share: float = Field(default=0.02, ge=0.0, le=1.0)
    history_retention_s: float = Field(default=30 * 86400.0, gt=0.0)
    #: How often the compactor flushes its share batches; most of the freshness figure (p99
    #: 1.75 s at 10 k shares/s at 0.5 s, 2.2 s at 1.0 s, against a 2 s target: BENCHMARKS #13).
    compact_interval_s: float = Field(default=0.5, gt=0.0)
    #: Workers re-execute themselves with jemalloc preloaded when it is installed: under
    #: glibc's malloc a worker's RSS crept up ~0.5 MiB/min with fragmentation (#18).
    allocator: Literal["jemalloc", "system"] = "jemalloc"
    #: The compactor stays on glibc's malloc: its RSS is flat there, and jemalloc's purging of
    #: the freed fetch buffers tripled its page faults and cost ~10 % of its CPU (#13).
    compactor_allocator: Literal["jemalloc", "system"] = "system"
    #: Under glibc, workers hand malloc's free pages back to the system every 30 s
    #: (``malloc_trim``); it lowers RSS by a constant but not the fragmentation's slope.
    malloc_trim: bool = True
    alert_webhook_url: str | None = None
    alert_webhook_secret: SecretStr | None = None
    metrics_port_base: int = 9110
    metrics_host: str = "127.0.0.1"

    @field_validator("windows_s")
    @classmethod
    def _windows_positive(cls, windows: list[float]) -> list[float]:
        if not windows or any(w <= 0 for w in windows):
            raise ValueError("windows_s must be a non-empty list of positive seconds")
        return sorted(windows)


class EstimationSettings(BaseModel):
    """The inputs of the electricity and capacity estimates that a user may replace."""

    electricity_method: str = "1.4.0"
    electricity_prices_file: Path | None = None
    hardware_file: Path | None = None
    suspect_regions: dict[str, str | None] = Field(default_factory=dict)
    #: A mining-site registry of your own (CSV or GeoJSON); ``sites_mode`` says whether it
    #: extends the shipped streams/data/sites.csv (same operator, site and as_of: yours wins)
    #: or replaces it.
    sites_file: Path | None = None
    sites_mode: Literal["extend", "replace"] = "extend"
    #: A reference list of known mining countries of your own (columns of the shipped
    #: streams/data/mining_regions.csv); the snapshot lists them even when the sample sees none.
    mining_regions_file: Path | None = None

    @field_validator("electricity_method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in ("1.4.0", "1.2.0"):
            raise ValueError("electricity_method must be '1.4.0' or '1.2.0'")
        return method


class ApiSettings(BaseModel):
    """The HTTP API: where it listens, who may call it from a browser, when data is stale."""

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    cors_origins: list[str] = Field(default_factory=list)
    stale_after_s: float = Field(default=30.0, gt=0.0)


class StackSettings(BaseModel):
    """The local stack ``hashatlas stack`` installs and runs (not used in production)."""

    state_dir: Path = PROJECT_ROOT / ".stack"
    kafka_controller_port: int = 9093
    kafka_version: str = "4.1.1"
    log4j_version: str = "2.26.1"
    stack_start_timeout_s: float = Field(default=90.0, gt=0.0)


class Settings(
    BaseSettings, KafkaSettings, RedisSettings, PipelineSettings, EstimationSettings,
    ApiSettings, StackSettings,
):
    """Every tunable of the stack, the pipeline and the API, with defaults a user can rely on.

    Grouped by concern in the classes above, which a part may take as its parameter type to say
    what it reads; the variables stay flat (``HASHATLAS_KAFKA_BOOTSTRAP``, ``HASHATLAS_API_PORT``).
    """

    model_config = SettingsConfigDict(
        env_prefix="HASHATLAS_", env_nested_delimiter="__", extra="ignore"
    )


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child process read exactly these settings: ``base``
    (default: this process's environment) without its ``HASHATLAS_*`` variables, plus these."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith("HASHATLAS_")}
    for name, value in settings.model_dump(mode="json").items():
        if isinstance(value, dict | list):  # whole, as JSON: nested names would be lower-cased
            env[f"HASHATLAS_{name.upper()}"] = json.dumps(value)
        elif value is not None:
            env[f"HASHATLAS_{name.upper()}"] = str(value)
    for name, value in settings:  # secrets, which the JSON dump masks
        if isinstance(value, SecretStr):
            env[f"HASHATLAS_{name.upper()}"] = value.get_secret_value()
    return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
