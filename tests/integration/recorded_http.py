"""A minimal HTTP/1.1 server on a free local port that answers from recorded responses.

Feeds are tested against real sockets and real HTTP, with answers a test prepares (recorded
node, REST and ticker responses) and can change between polls (a reorg, an outage).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[Request], Response]


@dataclass
class RecordedServer:
    url: str
    requests: list[Request] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    request_line = await reader.readline()
    if not request_line.strip():
        return None
    method, target, _ = request_line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, target, headers, body, time.monotonic())


@asynccontextmanager
async def recorded_server(handler: Handler) -> AsyncIterator[RecordedServer]:
    """Serve ``handler``'s answers on 127.0.0.1; every request is kept in ``requests``."""
    state = RecordedServer(url="")

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is None:
                return
            state.requests.append(request)
            response = handler(request)
            head = (
                f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + response.body)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}"
    async with server:
        yield state
