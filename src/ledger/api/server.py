"""uvicorn's HTTP protocol with one socket write per response.

uvicorn 0.55 writes a response's status line and headers as soon as the
application sends ``http.response.start``, then the body in a second write.
With ``TCP_NODELAY`` each write becomes its own segment, and on loopback each
one wakes the client. :class:`CoalescingHttpToolsProtocol` gives uvicorn a
transport that gathers the writes made during one turn of the event loop and
sends them together when that turn ends. So a head and a body sent back to
back leave in one ``send`` call. The bytes on the wire and their order are
unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol"]


class _CoalescingTransport:
    """Transport wrapper that joins the writes of one event loop turn into one.

    Every other transport method passes through to the wrapped transport.
    ``close`` sends what is buffered before closing, and ``abort`` drops it.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes | bytearray | memoryview] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data`` until the current turn of the event loop ends."""
        if not data:
            return
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(data)

    def writelines(self, lines: Any) -> None:
        """Buffer each item of ``lines`` in order."""
        for data in lines:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        """Return the bytes buffered here and in the wrapped transport."""
        return sum(len(data) for data in self._buffer) + self._transport.get_write_buffer_size()

    def close(self) -> None:
        """Send the buffered bytes, then close the wrapped transport."""
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        """Drop the buffered bytes and abort the wrapped transport."""
        self._buffer.clear()
        self._transport.abort()

    def _flush(self) -> None:
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        # A client that disconnected gets nothing more, as with a direct write.
        if not self._transport.is_closing():
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a :class:`_CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Wrap ``transport`` so that a response's head and body go out in one write."""
        wrapped = _CoalescingTransport(
            cast(asyncio.Transport, transport), asyncio.get_running_loop()
        )
        super().connection_made(wrapped)  # type: ignore[arg-type]
