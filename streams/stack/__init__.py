"""The local stack a newcomer runs with one command, kept out of the pipeline's runtime path.

``process`` starts and stops what we run, ``install`` fetches it, ``services`` runs Kafka and
Redis. This package re-exports what the CLI, the demo and the tests use.
"""

from streams.stack.install import DEPLOY_DIR, ensure_kafka, stack_install
from streams.stack.process import StackError, ensure_dirs, port_open, stop_service
from streams.stack.services import (
    kafka_answers,
    kafka_cluster_id,
    kafka_service,
    redis_service,
    stack_down,
    stack_status,
    stack_up,
    start_kafka,
    start_redis,
)

__all__ = [
    "DEPLOY_DIR", "StackError", "ensure_dirs", "ensure_kafka", "kafka_answers", "kafka_cluster_id",
    "kafka_service", "port_open", "redis_service", "stack_down", "stack_install", "stack_status",
    "stack_up", "start_kafka", "start_redis", "stop_service",
]
