"""Kafka client options shared by every producer and consumer of the project (thin edge)."""

from __future__ import annotations

from typing import Any

from streams.settings import KafkaSettings


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Bootstrap servers plus security options (SASL/TLS) from settings, for aiokafka clients."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap}
    security = settings.kafka_security_protocol
    if security != "PLAINTEXT":
        options["security_protocol"] = security
    if security.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    if security in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    return options
