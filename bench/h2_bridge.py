"""Sans-I/O micro-benchmark of ``forwarding.http2.Http2Bridge``: CPU per request of the bridge
alone, without TLS, sockets or asyncio, so that an iteration takes seconds and is not moved by
the other tenants of a shared machine as much as ``http_mode.py`` is.

An ``h2`` client and an ``h2`` server (the upstream) on either side of the bridge, bytes moved
by hand as the proxy's seam does (``receive_*``, then ``data_for_client`` and
``data_for_upstream``). Only the CPU time spent in the bridge's calls is counted
(``time.thread_time``: neither the peers' ``h2`` work nor time preempted by other processes),
over ``--requests`` requests, ``--streams`` in flight at a time:

* ``h2``: ``GET /`` (the headers ``h2_load.py`` sends), answered ``200`` with a 2-byte body;
* ``grpc``: a unary call (HEADERS, one 5+10-byte DATA message with END_STREAM), answered with
  HEADERS, one DATA message and the ``grpc-status`` trailers.

    .venv/bin/python bench/h2_bridge.py --requests 20000 --runs 5
    .venv/bin/python bench/h2_bridge.py --profile grpc:16      # cProfile of the bridge only
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

from mtlsproxy.config.model import Http2Settings
from mtlsproxy.forwarding.http2.bridge import Http2Bridge
from mtlsproxy.forwarding.http2.requests import HeaderRewriter

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
       (b":path", b"/"), (b"user-agent", b"bench")]  # fmt: skip
GRPC = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/bench.Bench/Call"),
        (b":authority", b"localhost"), (b"te", b"trailers"),
        (b"content-type", b"application/grpc"), (b"user-agent", b"grpc-python/1.60"),
        (b"grpc-accept-encoding", b"identity,deflate,gzip"), (b"grpc-timeout", b"10S")]  # fmt: skip
MESSAGE = b"\x00\x00\x00\x00\x0a" + b"0123456789"
XFCC = "By=spiffe://bench;Hash=" + "ab" * 32 + ';Subject="CN=frontend"'
INJECT = [("X-Forwarded-Client-Cert", XFCC), ("X-SSL-Client-S-DN", "CN=frontend"),
          ("X-SSL-Client-Verify", "SUCCESS")]  # fmt: skip
REMOVE = ["x-forwarded-client-cert", "x-ssl-client-s-dn", "x-ssl-client-verify"]


class Pipe:
    """client <-> bridge <-> upstream; ``spent`` accumulates the time in the bridge's calls."""

    def __init__(self) -> None:
        rewriter = HeaderRewriter(INJECT, REMOVE, keep=[])
        self.bridge = Http2Bridge(Http2Settings(), 256 * 1024, rewriter, None, time.monotonic)
        config = h2.config.H2Configuration
        self.client = h2.connection.H2Connection(config(client_side=True, header_encoding=None))
        self.upstream = h2.connection.H2Connection(config(client_side=False, header_encoding=None))
        self.client.initiate_connection()
        self.upstream.initiate_connection()
        self.upstream.receive_data(self.bridge.preamble)
        self.spent = 0.0
        self.answer: Callable[[int], None] = lambda stream_id: None
        self.done = 0
        self.profiler: cProfile.Profile | None = None  # enabled in the bridge's calls only

    def _exchange(self, receive: Callable[[bytes], None], data: bytes) -> tuple[bytes, bytes]:
        """One ``receive_*`` and what the seam takes after it, timed."""
        bridge = self.bridge
        if self.profiler is not None:
            self.profiler.enable()
        start = time.thread_time()
        receive(data)
        bridge.take_refusals()
        bridge.take_faults()
        out = bridge.data_for_client(), bridge.data_for_upstream()
        self.spent += time.thread_time() - start
        if self.profiler is not None:
            self.profiler.disable()
        return out

    def move(self) -> None:
        while True:
            moved = False
            for receive, data in (
                (self.bridge.receive_client, self.client.data_to_send()),
                (self.bridge.receive_upstream, self.upstream.data_to_send()),
            ):
                if not data:
                    continue
                moved = True
                to_client, to_upstream = self._exchange(receive, data)
                if to_client:
                    self._client_events(self.client.receive_data(to_client))
                if to_upstream:
                    self._upstream_events(self.upstream.receive_data(to_upstream))
            if not moved:
                return

    def _client_events(self, events: list[h2.events.Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.done += 1

    def _upstream_events(self, events: list[h2.events.Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.upstream.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            elif isinstance(event, h2.events.StreamEnded):
                self.answer(event.stream_id)


def answer_get(pipe: Pipe) -> Callable[[int], None]:
    def answer(stream_id: int) -> None:
        headers = [(b":status", b"200"), (b"server", b"nginx"), (b"content-type", b"text/plain"),
                   (b"content-length", b"2")]  # fmt: skip
        pipe.upstream.send_headers(stream_id, headers)
        pipe.upstream.send_data(stream_id, b"ok", end_stream=True)

    return answer


def answer_grpc(pipe: Pipe) -> Callable[[int], None]:
    def answer(stream_id: int) -> None:
        pipe.upstream.send_headers(
            stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")]
        )
        pipe.upstream.send_data(stream_id, MESSAGE)
        pipe.upstream.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)

    return answer


def run(
    protocol: str, streams: int, requests: int, profiler: cProfile.Profile | None = None
) -> float:
    """Microseconds of bridge CPU per request for one case."""
    pipe = Pipe()
    pipe.profiler = profiler
    pipe.answer = (answer_grpc if protocol == "grpc" else answer_get)(pipe)
    pipe.move()  # SETTINGS both ways
    pipe.spent = 0.0
    stream_id = 1
    sent = 0
    while sent < requests:
        batch = min(streams, requests - sent)
        for _ in range(batch):
            if protocol == "grpc":
                pipe.client.send_headers(stream_id, GRPC)
                pipe.client.send_data(stream_id, MESSAGE, end_stream=True)
            else:
                pipe.client.send_headers(stream_id, GET, end_stream=True)
            stream_id += 2
        sent += batch
        pipe.move()
    assert pipe.done == requests, (pipe.done, requests)
    return pipe.spent / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", default="h2:1,h2:16,grpc:1,grpc:16")
    parser.add_argument("--profile", metavar="CASE", help="cProfile one case instead")
    args = parser.parse_args()
    if args.profile:
        protocol, streams = args.profile.split(":")
        profiler = cProfile.Profile()
        run(protocol, int(streams), args.requests, profiler)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(35)
        return
    print(f"Http2Bridge CPU per request, {args.requests} requests, median of {args.runs} runs")
    print(f"Python {sys.version.split()[0]}, h2 {h2.__version__}")
    for case in args.cases.split(","):
        protocol, streams = case.split(":")
        samples = [run(protocol, int(streams), args.requests) for _ in range(args.runs)]
        print(
            f"{protocol:5} x{streams:<3} {statistics.median(samples):7.1f} us/req "
            f"(range {min(samples):.1f}-{max(samples):.1f})"
        )


if __name__ == "__main__":
    main()
