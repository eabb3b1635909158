"""Connections are limited per client address on both ports, and file descriptors are kept
in reserve. Raw sockets from 127.0.0.1 play the greedy client; 127.0.0.2 (also loopback)
plays everyone else."""

from __future__ import annotations

import ipaddress
import os
import resource
from contextlib import AsyncExitStack

import orjson
import pytest
import trio
from conftest import ADMIN_TOKEN, make_config, running_node

from node.core.connlimit import ConnectionLimits
from node.testing import wait_until

pytestmark = pytest.mark.engine("lmdb")  # sockets and descriptors: no storage

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def limits_config(tmp_path, **http):
    admin = {"token": ADMIN_TOKEN} if http.get("trusted_proxies") else {}
    return make_config(tmp_path, limits={"max_connections_per_address": 5, "hello_timeout": 60.0}, http=http,
                       admin=admin)


async def open_from(source: str, port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port, local_address=source)


async def served(stream: trio.SocketStream) -> bytes:
    """Send a request and return the start of the answer: b"" if the node hung up unserved."""
    try:
        await stream.send_all(GET)
        with trio.fail_after(5):
            return await stream.receive_some(65536)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


async def hung_up(stream: trio.SocketStream) -> bool:
    """Whether the node closes a connection on which the client sent nothing."""
    try:
        with trio.fail_after(5):
            return await stream.receive_some(1) == b""
    except trio.BrokenResourceError:
        return True


async def test_a_greedy_address_is_capped_on_both_ports_and_others_are_not(tmp_path):
    async with running_node(limits_config(tmp_path)) as node, AsyncExitStack() as held:
        # three idle chat sockets (waiting for their upgrade) and two HTTP keep-alive connections
        for _ in range(3):
            held.push_async_callback((await open_from("127.0.0.1", node.ws_port)).aclose)
        for _ in range(2):
            stream = await open_from("127.0.0.1", node.http_port)
            held.push_async_callback(stream.aclose)
            assert (await served(stream)).startswith(b"HTTP/1.1 200")
        await wait_until(lambda: node.connections.open_from("127.0.0.1") >= 5, 5, interval=0.01)
        # the sixth is closed at once, on either port
        async with await open_from("127.0.0.1", node.http_port) as extra:
            assert await served(extra) == b""
        async with await open_from("127.0.0.1", node.ws_port) as extra:
            assert await hung_up(extra)
        # another address is served as usual
        async with await open_from("127.0.0.2", node.http_port) as other:
            assert (await served(other)).startswith(b"HTTP/1.1 200")
        async with await open_from("127.0.0.2", node.ws_port) as other:
            await other.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")  # not an upgrade: 426 Upgrade Required
            with trio.fail_after(5):
                assert (await other.receive_some(65536)).startswith(b"HTTP/1.1 426")
        async with await open_from("127.0.0.2", node.http_port) as admin:
            await admin.send_all(b"GET /api/admin/stats HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            with trio.fail_after(5):
                while not answer.endswith(b"}"):
                    answer += await admin.receive_some(65536)
        stats = orjson.loads(answer.partition(b"\r\n\r\n")[2])
        assert stats["connections"]["refused"] == {"per_address": 2, "fd_reserve": 0}
        # a connection that ends makes room at once (not after the HTTP keep-alive timeout, 5 s)
        await held.aclose()
        await wait_until(lambda: node.connections.open_from("127.0.0.1") == 0, 2, interval=0.01)
        async with await open_from("127.0.0.1", node.http_port) as again:
            assert (await served(again)).startswith(b"HTTP/1.1 200")


async def test_trusted_proxies_are_not_capped(tmp_path):
    async with running_node(limits_config(tmp_path, trusted_proxies=["127.0.0.0/30"])) as node:
        async with AsyncExitStack() as held:
            for _ in range(8):
                stream = await open_from("127.0.0.1", node.http_port)
                held.push_async_callback(stream.aclose)
                assert (await served(stream)).startswith(b"HTTP/1.1 200")


def test_ipv6_clients_are_counted_per_64():
    limits = ConnectionLimits(per_address=2, reserved_fds=16)
    one_network = [ipaddress.ip_address(f"2001:db8:1:2::{i}") for i in (1, 2, 3)]
    assert limits.admit(one_network[0], fd=10) is None
    assert limits.admit(one_network[1], fd=10) is None
    assert limits.admit(one_network[2], fd=10) == "per_address"  # same /64
    assert limits.admit(ipaddress.ip_address("2001:db8:1:3::1"), fd=10) is None  # the next /64
    limits.release(one_network[0])
    assert limits.admit(one_network[2], fd=10) is None
    assert limits.open_from("2001:db8:1:2::ffff") == 2


def fill_descriptors(left: int) -> list[int]:
    """Open /dev/null until only about `left` descriptors remain below the soft limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    opened = []
    while True:
        fd = os.open("/dev/null", os.O_RDONLY)
        opened.append(fd)
        if fd >= soft - left - 1:
            return opened


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


async def test_descriptors_are_kept_for_the_node_and_its_own_machine(tmp_path):
    """reserved_fds = 200: with ~150 left, clients are refused but 127.0.0.1 (the operator)
    is served; with ~60 left, 127.0.0.1 too is refused."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 100_000:
        pytest.skip("the open-files limit is too high to fill in a test")
    config = make_config(tmp_path, limits={"reserved_fds": 200})
    async with running_node(config) as node:
        fds = fill_descriptors(left=150)
        try:
            async with await open_from("127.0.0.2", node.http_port) as client:
                assert await served(client) == b""
            async with await open_from("127.0.0.1", node.http_port) as operator:
                assert (await served(operator)).startswith(b"HTTP/1.1 200")
            # the node's end of it is closed: no hole below what we fill
            await wait_until(lambda: node.connections.open_from("127.0.0.1") == 0, 5, interval=0.01)
            fds += fill_descriptors(left=60)
            async with await open_from("127.0.0.1", node.http_port) as operator:
                assert await served(operator) == b""
        finally:
            close_all(fds)
        assert node.connections.statistics()["refused"]["fd_reserve"] == 2
        async with await open_from("127.0.0.2", node.http_port) as client:
            assert (await served(client)).startswith(b"HTTP/1.1 200")
