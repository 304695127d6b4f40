"""Stratum V1 measuring proxy: relays miners to their pool and reports accepted work in aggregate.

`protocol` (pure: line framing, JSON-RPC parsing, the per-miner relay state machine) and
`accounting` (pure: share totals per region and interval, keyed worker hashes, IP → region) hold
every decision; `server` only moves bytes between sockets and hands batches to Kafka.
"""
