"""`hashatlas proxy`: a Stratum V1 proxy that relays miners to their pool and measures them.

Miners point at the proxy instead of the pool; every accepted share is summed per region and
interval and sent to Kafka (topic `settings.topics.shares`, key = pool id) as `share_batch`
events. Addresses and worker names stay in the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
from pathlib import Path

from streams.contracts import MAX_LABEL_LENGTH
from streams.proxy.protocol import DEFAULT_MAX_LINE_BYTES
from streams.proxy.server import KafkaBatchSink, ProxyConfig, StratumProxy
from streams.settings import Settings, get_settings

EXIT_BAD_INPUT = 2
MIN_SECRET_BYTES = 16
FDS_RESERVED = 64

log = logging.getLogger("hashatlas.proxy")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `proxy` and its options."""
    proxy = subparsers.add_parser(
        "proxy",
        help="Stratum V1 proxy: relay miners to a pool, send share_batch events to Kafka",
        description="Relay Stratum V1 miners to one pool (one pool connection per miner) and "
        "send the shares the pool accepted, summed per region and interval, to Kafka as "
        "share_batch events. Stop with Ctrl-C or SIGTERM: the last partial batch is sent.",
    )
    proxy.add_argument("--upstream", required=True, metavar="HOST:PORT",
                       help="the pool's Stratum endpoint (IPv6 as [addr]:port)")
    proxy.add_argument("--pool-id", required=True,
                       help="pool label put in every event and used as the Kafka key")
    proxy.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
    proxy.add_argument("--port", type=int, default=3333, help="port to listen on (default 3333)")
    proxy.add_argument("--batch-interval", type=float, default=5.0, metavar="SECONDS",
                       help="length of one share_batch interval (default 5)")
    proxy.add_argument("--max-connections", type=int, default=4096,
                       help="miner connections in total (default 4096)")
    proxy.add_argument("--max-per-ip", type=int, default=64,
                       help="miner connections from one address (default 64)")
    proxy.add_argument("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES,
                       help="longest line a miner may send; longer closes it (default 16384)")
    proxy.add_argument("--handshake-timeout", type=float, default=15.0, metavar="SECONDS",
                       help="a miner must be authorized within this time (default 15)")
    proxy.add_argument("--idle-timeout", type=float, default=600.0, metavar="SECONDS",
                       help="close an authorized miner silent this long (default 600)")
    proxy.add_argument("--secret-file", type=Path, default=None,
                       help="key for hashing worker names (at least 16 bytes); default: a random "
                       "key per start, so hashes cannot be linked across restarts")
    proxy.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    proxy.set_defaults(func=run_proxy)


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def read_secret(path: Path | None) -> bytes:
    if path is None:
        return os.urandom(32)
    secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path}: the secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def ensure_file_descriptors(max_connections: int) -> None:
    """Raise the soft descriptor limit to what the connection limit needs (2 per miner)."""
    needed = 2 * max_connections + FDS_RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        log.warning("descriptor limit %d is below the %d that %d connections may need",
                    soft, needed, max_connections)


def run_proxy(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        upstream_host, upstream_port = parse_host_port(args.upstream)
        pool_id = args.pool_id.strip()
        if not 0 < len(pool_id) <= MAX_LABEL_LENGTH or not pool_id.isprintable():
            raise ValueError(f"--pool-id must be 1 to {MAX_LABEL_LENGTH} printable characters")
        if not args.batch_interval > 0:
            raise ValueError("--batch-interval must be positive")
        if args.max_connections < 1 or args.max_per_ip < 1 or args.max_line_bytes < 256:
            raise ValueError("connection and line limits must be positive (lines ≥ 256 bytes)")
        secret = read_secret(args.secret_file)
    except (ValueError, OSError) as exc:
        print(f"hashatlas proxy: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    config = ProxyConfig(
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        pool_id=pool_id,
        bind=args.bind,
        port=args.port,
        batch_interval_s=args.batch_interval,
        max_line_bytes=args.max_line_bytes,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_per_ip,
        handshake_timeout_s=args.handshake_timeout,
        idle_timeout_s=args.idle_timeout,
    )
    ensure_file_descriptors(config.max_connections)
    try:
        return asyncio.run(serve(config, get_settings(), secret))
    except OSError as exc:
        print(f"hashatlas proxy: cannot listen on {config.bind}:{config.port}: {exc}",
              file=sys.stderr)
        return 1


async def serve(config: ProxyConfig, settings: Settings, secret: bytes) -> int:
    """Run the proxy until SIGINT/SIGTERM; then close sessions and deliver the last batches."""
    sink = KafkaBatchSink(settings, settings.topics.shares, key=config.pool_id)
    sink.start()
    proxy = StratumProxy(config, sink, secret)
    try:
        await proxy.start()
    except OSError:
        await sink.stop(drain_timeout_s=0.0)
        raise
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down: %s", dict(proxy.stats))
    await proxy.stop()
    await sink.stop()
    log.info("delivered %d batches, dropped %d", sink.delivered, sink.dropped)
    return 0
