"""The gateway's SSE loop when a poll fails: the stream ends cleanly (the client's EventSource
reconnects with Last-Event-ID), the subscription is released, nothing escapes as a 500."""

from __future__ import annotations

import asyncio
from typing import Any

from tidebase_core.gateway import Gateway, _Client
from tidebase_core.realtime import Flag


class FailingStream:
    status_code = 200
    keepalive_s = 30.0

    def __init__(self) -> None:
        self.flag = Flag()
        self.released = False

    def items(self) -> list[tuple[str, str]]:
        return [("Content-Type", "text/event-stream")]

    def poll(self) -> bytes | None:
        raise RuntimeError("the database went away")

    def release(self) -> None:
        self.released = True


def test_a_failing_poll__ends_the_stream_cleanly_and_releases_it() -> None:
    sent: list[dict[str, Any]] = []
    stream = FailingStream()
    gateway = Gateway(lambda environ, start_response: [], threads=1)

    async def main() -> None:
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        client = _Client(receive, send)
        try:
            await gateway._events(stream, client)  # type: ignore[arg-type]
        finally:
            client.close()

    asyncio.run(main())
    gateway.executor.shutdown()

    assert sent[0]["type"] == "http.response.start"
    assert sent[1]["body"] == b": connected\n\n"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert stream.released
