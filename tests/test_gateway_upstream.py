"""The gateway's hop to a model service (templates/gateway/gateway.py: Upstream, Connection),
against a small HTTP/1.1 server on a unix socket that behaves as chosen per test: kept-alive
connections, an idle connection the service closes, a reply cut off midway, chunks sent one by
one, and a reply larger than the router holds while its client is slow."""

from __future__ import annotations

import asyncio

import pytest

import gateway  # templates/gateway/gateway.py, on the path by pytest.ini


class FakeService:
    """Answers each request with `reply(request_number, writer)`; counts connections and requests."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), b"0"))
                self.requests.append(head + await reader.readexactly(length))
                if not await self.reply(len(self.requests), writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def json_reply(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def read_all(connection: gateway.Connection) -> bytes:
    parts = []
    while True:
        data, done = await connection.read()
        parts.append(data)
        if done:
            return b"".join(parts)


async def request(upstream: gateway.Upstream, body: bytes = b'{"model": "m"}') -> tuple[int, list, bytes]:
    """Status, headers and body of a reply, read as the router reads it."""
    headers = [(b"content-type", b"application/json")]
    connection = await upstream.request("POST", "/v1/completions", headers, body, watch=lambda _: None)
    status, reply_headers = connection.status, list(connection.headers)
    data = await read_all(connection)
    upstream.release(connection)
    return status, reply_headers, data


def run_with_service(tmp_path, reply, scenario, timeouts: gateway.Timeouts = gateway.Timeouts()) -> FakeService:
    service = FakeService(reply)

    async def main() -> None:
        path = str(tmp_path / "service.sock")
        server = await asyncio.start_unix_server(service.handle, path)
        try:
            await asyncio.wait_for(scenario(gateway.Upstream(f"file://{path}", timeouts)), 30)
        finally:
            server.close()

    asyncio.run(main())
    return service


def test_request_is_sent_whole_and_the_connection_is_kept_alive(tmp_path):
    async def reply(n, writer):
        writer.write(json_reply(b'{"n": %d}' % n))
        return True

    async def scenario(upstream):
        for n in (1, 2, 3):
            status, headers, data = await request(upstream)
            assert (status, data) == (200, b'{"n": %d}' % n)
            assert (b"content-length", b"8") in headers  # passed on to the client as it came

    service = run_with_service(tmp_path, reply, scenario)
    assert service.connections == 1
    assert service.requests[0].startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert service.requests[0].endswith(b'content-type: application/json\r\n\r\n{"model": "m"}')


def test_connection_the_service_closed_while_idle_is_not_reused(tmp_path):
    async def reply(n, writer):
        writer.write(json_reply(b"ok"))
        return False  # close after the reply, without saying so: as an idle timeout does

    async def scenario(upstream):
        assert (await request(upstream))[2] == b"ok"
        await asyncio.sleep(0.1)
        assert (await request(upstream))[2] == b"ok"

    service = run_with_service(tmp_path, reply, scenario)
    assert service.connections == 2 and len(service.requests) == 2


def test_request_on_a_connection_closing_unanswered_is_sent_again_once(tmp_path):
    async def reply(n, writer):
        if n == 2:
            return False  # the service's idle timeout fired as the request arrived: closed, no answer
        writer.write(json_reply(b"answer %d" % n))
        return True

    watched = []

    async def scenario(upstream):
        assert (await request(upstream))[2] == b"answer 1"
        connection = await upstream.request("POST", "/v1/completions", [], b"{}", watch=watched.append)
        assert await read_all(connection) == b"answer 3"  # the same request, sent again on a new connection
        assert watched == [watched[0], connection] and watched[0] is not connection  # both were watched

    service = run_with_service(tmp_path, reply, scenario)
    assert service.connections == 2 and service.requests[1] == service.requests[2]


@pytest.mark.parametrize("retry_window_s,resent", [(0.2, False), (2.0, True)])
def test_request_the_service_dropped_after_the_retry_window_is_not_sent_again(tmp_path, retry_window_s, resent):
    """Closed unanswered 0.4 s after it went out: past a 0.2 s window it may have run (a crash), within 2 s it is resent."""
    async def reply(n, writer):
        if n == 2:
            await asyncio.sleep(0.4)  # working on it, then gone: sending it again could run it twice
            return False
        writer.write(json_reply(b"answer %d" % n))
        return True

    async def scenario(upstream):
        assert (await request(upstream))[2] == b"answer 1"
        if resent:
            assert (await request(upstream))[2] == b"answer 3"
        else:
            with pytest.raises(gateway.UpstreamError, match="closed the connection"):
                await request(upstream)

    service = run_with_service(tmp_path, reply, scenario, gateway.Timeouts(retry_window_s=retry_window_s))
    assert (service.connections, len(service.requests)) == ((2, 3) if resent else (1, 2))


@pytest.mark.parametrize("idle_reuse_s,connections", [(4.0, 1), (0.1, 2)])
def test_idle_connection_older_than_idle_reuse_is_not_reused(tmp_path, idle_reuse_s, connections):
    async def reply(n, writer):
        writer.write(json_reply(b"ok"))
        return True  # keeps the connection open

    async def scenario(upstream):
        assert (await request(upstream))[2] == b"ok"
        await asyncio.sleep(0.3)
        assert (await request(upstream))[2] == b"ok"

    service = run_with_service(tmp_path, reply, scenario, gateway.Timeouts(idle_reuse_s=idle_reuse_s))
    assert service.connections == connections


def test_router_gives_its_timeouts_to_every_model_service_connection():
    timeouts = gateway.Timeouts(connect_s=3.0, idle_reuse_s=2.0, retry_window_s=0.5)

    async def main():
        router = gateway.Router(timeouts=timeouts)
        router.connect(["file:///nonexistent/a.sock", "http://127.0.0.1:9"])
        try:
            return [u.timeouts for u in router.upstreams]
        finally:
            await router.close()

    assert asyncio.run(main()) == [timeouts, timeouts]


def test_new_connection_closing_unanswered_is_an_upstream_error(tmp_path):
    async def reply(n, writer):
        return False

    async def scenario(upstream):
        with pytest.raises(gateway.UpstreamError, match="closed the connection"):
            await request(upstream)

    service = run_with_service(tmp_path, reply, scenario)
    assert service.connections == 1


def test_chunks_are_passed_on_as_they_arrive(tmp_path):
    release = {}

    async def reply(n, writer):
        writer.write(STREAM_HEAD + b"b\r\ndata: one\n\n\r\n")
        await release["second"].wait()
        writer.write(b"b\r\ndata: two\n\n\r\n0\r\n\r\n")
        return True

    async def scenario(upstream):
        release["second"] = asyncio.Event()
        connection = await upstream.request("POST", "/v1/completions", [], b"{}", watch=lambda _: None)
        assert connection.status == 200
        assert await connection.read() == (b"data: one\n\n", False)  # before the service sent the second
        release["second"].set()
        assert await read_all(connection) == b"data: two\n\n"
        upstream.release(connection)
        assert upstream.idle == [connection]

    run_with_service(tmp_path, reply, scenario)


def test_reply_cut_off_midway_is_an_upstream_error_after_its_first_part(tmp_path):
    async def reply(n, writer):
        writer.write(STREAM_HEAD + b"b\r\ndata: one\n\n\r\n")
        return False

    async def scenario(upstream):
        connection = await upstream.request("POST", "/v1/completions", [], b"{}", watch=lambda _: None)
        assert await connection.read() == (b"data: one\n\n", False)
        with pytest.raises(gateway.UpstreamError, match="closed the connection"):
            await connection.read()
        upstream.release(connection)
        assert upstream.idle == []

    run_with_service(tmp_path, reply, scenario)


def test_large_reply_to_a_slow_client_pauses_the_service_and_arrives_whole(tmp_path):
    part = bytes(range(256)) * 256  # 64 KiB
    parts = 64  # 4 MiB: above HIGH_WATER_BYTES

    async def reply(n, writer):
        writer.write(STREAM_HEAD)
        for _ in range(parts):
            writer.write(chunked(part)[:-5])
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async def scenario(upstream):
        connection = await upstream.request("POST", "/v1/completions", [], b"{}", watch=lambda _: None)
        received, most_held = [], 0
        while True:
            await asyncio.sleep(0.01)  # a slow client
            most_held = max(most_held, connection.buffered)
            data, done = await connection.read()
            received.append(data)
            if done:
                break
        assert b"".join(received) == part * parts
        assert most_held <= gateway.HIGH_WATER_BYTES + 512 * 1024, "reading pauses while the client is behind"

    run_with_service(tmp_path, reply, scenario)


def test_unreachable_service_is_an_upstream_error(tmp_path):
    async def scenario():
        upstream = gateway.Upstream(f"file://{tmp_path / 'nobody.sock'}")
        with pytest.raises(gateway.UpstreamError, match="cannot connect"):
            await upstream.request("POST", "/v1/completions", [], b"{}", watch=lambda _: None)

    asyncio.run(scenario())


@pytest.mark.parametrize("scheme", ["tcp", "http"])
def test_service_on_a_tcp_port_is_reached_with_its_host_header(scheme):
    """`tcp://` is how BentoML names a dependency's port where it uses no unix socket; `http://`, a deployed one's."""
    async def reply(n, writer):
        writer.write(json_reply(b"over tcp"))
        return True

    service = FakeService(reply)

    async def main() -> tuple[bytes, int]:
        server = await asyncio.start_server(service.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return (await asyncio.wait_for(request(gateway.Upstream(f"{scheme}://127.0.0.1:{port}")), 30))[2], port
        finally:
            server.close()

    data, port = asyncio.run(main())
    assert data == b"over tcp"
    assert f"\r\nhost: 127.0.0.1:{port}\r\n".encode() in service.requests[0]
