"""The pipeline's processes: the share compactor, the Faust worker and its snapshot leader.

See ``docs/architecture.md`` for how they connect through Kafka topics and Redis.
"""
