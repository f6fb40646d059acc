"""Tests for the transport that sends the writes of one event loop turn together."""

from __future__ import annotations

import asyncio

from ledger.api.server import _CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """A transport that records what it is asked to send, instead of a socket."""

    def __init__(self) -> None:
        super().__init__(extra={"peername": ("127.0.0.1", 50000)})
        self.sent: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def _next_turn() -> None:
    await asyncio.sleep(0)


async def test_writes_of_one_turn_go_out_together() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())

    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"")
    transport.write(b'{"a":1}')
    buffered = transport.get_write_buffer_size()
    sent_before_turn_ends = list(inner.sent)
    await _next_turn()

    assert sent_before_turn_ends == []
    assert buffered == len(b"HTTP/1.1 200 OK\r\n\r\n") + len(b'{"a":1}')
    assert inner.sent == [b'HTTP/1.1 200 OK\r\n\r\n{"a":1}']


async def test_writes_of_later_turns_go_out_in_order() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())

    transport.write(b"first")
    await _next_turn()
    transport.writelines([b"second", b"third"])
    await _next_turn()

    assert inner.sent == [b"first", b"secondthird"]


async def test_close_sends_buffered_bytes_first() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())

    transport.write(b"last response")
    transport.close()
    await _next_turn()

    assert inner.sent == [b"last response"]
    assert inner.closed


async def test_abort_drops_buffered_bytes() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())

    transport.write(b"never sent")
    transport.abort()
    await _next_turn()

    assert inner.sent == []
    assert inner.aborted


async def test_closed_peer_gets_nothing() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())

    transport.write(b"too late")
    inner.closed = True
    await _next_turn()

    assert inner.sent == []


async def test_other_methods_reach_wrapped_transport() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())

    assert transport.is_closing() is False
    assert transport.get_extra_info("peername") == ("127.0.0.1", 50000)
