"""HTTP/2 and gRPC load for ``bench/http_mode.py``: the clients, the gRPC upstream, the nginx
configurations that go with them.

* ``H2Client``: one mutual-TLS connection with ALPN ``h2`` (the ``h2`` package over a blocking
  ``ssl`` socket) keeping ``streams`` GET requests in flight at all times.
* ``grpc_load``: a grpcio channel with the client certificate keeping ``streams`` unary calls
  in flight (``future`` calls, the next one started from the previous one's callback).
* ``python bench/h2_load.py grpc-upstream PORT``: the gRPC upstream, a grpcio server (generic
  handler, bytes in and out, no generated code) answering ``/bench.Echo/Call`` with ``ok`` and
  ``/bench.Echo/Check`` with the identity metadata it received.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from pathlib import Path

ECHO = "/bench.Echo/Call"
CHECK_METHOD = "/bench.Echo/Check"
IDENTITY_HEADERS = ("x-ssl-client-s-dn", "x-ssl-client-verify", "x-forwarded-client-cert")


# ---------------------------------------------------------------------------------------------
# nginx (one worker, no access log: the fronts of http_mode.py and the h2c upstream)


H2C_UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port} http2 backlog=1024;
        http2_max_requests 100000000;
        default_type text/plain;
        location = /check {{
            return 200 "dn=$http_x_ssl_client_s_dn\\nverify=$http_x_ssl_client_verify\\nxfcc=$http_x_forwarded_client_cert\\n";
        }}
        location / {{ return 200 "ok"; }}
    }}"""  # noqa: E501

_TLS = """\
        ssl_certificate {pki}/server.crt;
        ssl_certificate_key {pki}/server.key;
        ssl_protocols TLSv1.3;
        ssl_verify_client on;
        ssl_client_certificate {pki}/client-ca.pem;
        ssl_verify_depth 2;
        http2_max_requests 100000000;
        http2_max_concurrent_streams 128;"""

# h2 from the client, HTTP/1.1 keep-alive to the upstream: what nginx offers (its proxy_pass
# has no h2 upstream).
H2_FRONT_SERVER = (
    """\
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 32;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=1024;
"""
    + _TLS
    + """
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-SSL-Client-S-DN $ssl_client_s_dn;
            proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
        }}
    }}"""
)

GRPC_FRONT_SERVER = (
    """\
    upstream grpc_app {{
        server 127.0.0.1:{upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=1024;
"""
    + _TLS
    + """
        location / {{
            grpc_pass grpc://grpc_app;
            grpc_set_header X-SSL-Client-S-DN $ssl_client_s_dn;
            grpc_set_header X-SSL-Client-Verify $ssl_client_verify;
        }}
    }}"""
)


# ---------------------------------------------------------------------------------------------
# HTTP/2 client


def mtls_socket(pki: Path, port: int, alpn: str) -> ssl.SSLSocket:
    """A mutual-TLS 1.3 connection with the PKI's client certificate, ``TCP_NODELAY`` on."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=pki / "ca.crt")
    context.load_cert_chain(pki / "client.crt", pki / "client.key")
    context.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return context.wrap_socket(raw, server_hostname="localhost")


class H2Client:
    """One HTTP/2 connection over mutual TLS 1.3 with ``streams`` GET requests in flight."""

    def __init__(self, pki: Path, port: int) -> None:
        import h2.config
        import h2.connection

        self.tls = mtls_socket(pki, port, "h2")
        if self.tls.selected_alpn_protocol() != "h2":
            raise ConnectionError(f"ALPN gave {self.tls.selected_alpn_protocol()!r}, not h2")
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self.h2.increment_flow_control_window(1 << 24)
        self.tls.sendall(self.h2.data_to_send())
        self.bodies: dict[int, bytearray] = {}

    def _start(self, path: str) -> int:
        stream = self.h2.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
                   (":path", path), ("user-agent", "bench")]  # fmt: skip
        self.h2.send_headers(stream, headers, end_stream=True)
        self.bodies[stream] = bytearray()
        return stream

    def _pump(self) -> list[tuple[int, bytes]]:
        """Read once; the (stream, body) of every response that ended."""
        import h2.events

        data = self.tls.recv(262144)
        if not data:
            raise ConnectionError("connection closed")
        done = []
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(":status")
                if status != "200":
                    raise ConnectionError(f"stream {event.stream_id}: status {status}")
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                done.append((event.stream_id, bytes(self.bodies.pop(event.stream_id))))
            elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                raise ConnectionError(f"peer ended: {event!r}")
        return done

    def get(self, path: str) -> bytes:
        stream = self._start(path)
        self.tls.sendall(self.h2.data_to_send())
        while True:
            for finished, body in self._pump():
                if finished == stream:
                    return body

    def load(self, streams: int, end: float) -> int:
        """Keep ``streams`` requests in flight until ``end``; the responses completed."""
        completed = 0
        for _ in range(streams):
            self._start("/")
        self.tls.sendall(self.h2.data_to_send())
        in_flight = streams
        while in_flight:
            finished = self._pump()
            completed += len(finished)
            in_flight -= len(finished)
            if time.time() < end:
                for _ in finished:
                    self._start("/")
                in_flight += len(finished)
            out = self.h2.data_to_send()
            if out:
                self.tls.sendall(out)
        return completed

    def close(self) -> None:
        self.tls.close()


# ---------------------------------------------------------------------------------------------
# gRPC client


def grpc_channel(pki: Path, port: int):
    import grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / "client.key").read_bytes(),
        certificate_chain=(pki / "client.crt").read_bytes(),
    )
    return grpc.secure_channel(f"localhost:{port}", credentials)


def grpc_check(channel) -> bytes:
    call = channel.unary_unary(CHECK_METHOD)
    return call(b"check", timeout=10)


def grpc_load(channel, streams: int, end: float) -> int:
    """Keep ``streams`` unary calls in flight until ``end``; the calls that succeeded."""
    call = channel.unary_unary(ECHO)
    call(b"warm", timeout=10)
    lock = threading.Lock()
    finished = threading.Event()
    state = {"ok": 0, "in_flight": 0, "error": None}

    def done(future) -> None:
        with lock:
            state["in_flight"] -= 1
            if future.exception() is not None:
                state["error"] = state["error"] or future.exception()
            else:
                state["ok"] += 1
            again = time.time() < end and state["error"] is None
            if again:
                state["in_flight"] += 1
            elif state["in_flight"] == 0:
                finished.set()
        if again:
            call.future(b"x", timeout=30).add_done_callback(done)

    with lock:
        state["in_flight"] = streams
    for _ in range(streams):
        call.future(b"x", timeout=30).add_done_callback(done)
    finished.wait(end - time.time() + 60)
    if state["error"] is not None:
        raise ConnectionError(f"gRPC call failed: {state['error']!r}")
    return int(state["ok"])


# ---------------------------------------------------------------------------------------------
# gRPC upstream


def serve_grpc(port: int) -> None:
    from concurrent import futures

    import grpc

    def call(request: bytes, context) -> bytes:
        return b"ok"

    def check(request: bytes, context) -> bytes:
        seen = dict(context.invocation_metadata())
        keys = ("dn", "verify", "xfcc")
        return "".join(
            f"{key}={seen.get(name, '')}\n"
            for key, name in zip(keys, IDENTITY_HEADERS, strict=True)
        ).encode()

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Call": grpc.unary_unary_rpc_method_handler(call),
            "Check": grpc.unary_unary_rpc_method_handler(check),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "grpc-upstream":
        sys.exit("usage: h2_load.py grpc-upstream PORT")
    serve_grpc(int(sys.argv[2]))
