"""A real gRPC client (grpcio, ``grpc.secure_channel`` with a client certificate from the
project's PKI) through the proxy to a real grpcio server on h2c. Generic handlers with bytes
serializers: no generated code. The server answers with the ``x-forwarded-client-cert``
metadata it received, so every call and every streamed message shows the verified identity;
deadlines and cancellations reach the server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import RunningProxy
from tests.proxy.test_http2 import FRONTEND

SERVICE = "echo.Echo"


class EchoService:
    """Unary, server-streaming, bidi and a call that waits until it is cancelled."""

    def __init__(self) -> None:
        self.started = threading.Event()  # a Wait call reached the server
        self.cancelled = threading.Event()

    @staticmethod
    def identity(context: grpc.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        return str(metadata.get("x-forwarded-client-cert", "")).encode()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self.identity(context) + b"|" + request

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for n in range(int(request or b"3")):
            yield self.identity(context) + b"|%d" % n

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield self.identity(context) + b"|" + request

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        # a cancelled RPC (RST_STREAM, or its deadline) runs its callbacks; one that ended
        # before this line gets none added
        if not context.add_callback(self.cancelled.set):
            self.cancelled.set()
        self.started.set()
        self.cancelled.wait(10)
        return b"late"

    def handler(self) -> grpc.GenericRpcHandler:
        raw = {"request_deserializer": None, "response_serializer": None}
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, **raw),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream, **raw),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat, **raw),
                "Wait": grpc.unary_unary_rpc_method_handler(self.wait, **raw),
            },
        )


@pytest.fixture
def service() -> Iterator[tuple[EchoService, int]]:
    echo = EchoService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((echo.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield echo, port
    server.stop(grace=None)


def grpc_config(pki: PkiFiles, upstream_port: int, engine: str, protocol: str) -> str:
    from tests.proxy.conftest import render_config

    forward = f"\n      mode: http\n      upstream_protocol: {protocol}"
    return render_config(pki, f"127.0.0.1:{upstream_port}", forward_identity=forward, engine=engine)


@pytest.fixture(params=[("native", "auto"), ("openssl", "h2c")], ids=["native-auto", "openssl-h2c"])
def proxy(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    pki: PkiFiles,
    service: tuple[EchoService, int],
) -> Iterator[RunningProxy]:
    engine, protocol = request.param
    path = tmp_path / "grpc.yaml"
    path.write_text(grpc_config(pki, service[1], engine, protocol))
    running = RunningProxy(path)
    yield running
    running.stop()


def client_credentials(pki: PkiFiles) -> grpc.ChannelCredentials:
    """The PKI's client certificate and CA, as a gRPC channel presents and trusts them."""
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=(pki.directory / "client.key").read_bytes(),
        certificate_chain=(pki.directory / "client.crt").read_bytes(),
    )


@pytest.fixture
def channel(proxy: RunningProxy, pki: PkiFiles) -> Iterator[grpc.Channel]:
    credentials = client_credentials(pki)
    with grpc.secure_channel(f"localhost:{proxy.port()}", credentials) as open_channel:
        yield open_channel


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def verified(message: bytes) -> bool:
    return f"URI={FRONTEND}".encode() in message.split(b"|")[0]


def test_unary_calls_carry_the_verified_identity(channel: grpc.Channel) -> None:
    call = channel.unary_unary(method("Unary"))
    for n in range(3):
        answer = call(b"hello %d" % n, timeout=10)
        assert verified(answer) and answer.endswith(b"|hello %d" % n)


def test_a_server_stream_carries_the_identity_on_every_message(channel: grpc.Channel) -> None:
    messages = list(channel.unary_stream(method("Stream"))(b"5", timeout=10))
    assert len(messages) == 5
    assert all(verified(m) for m in messages)


def test_a_bidi_stream_is_relayed_message_by_message(channel: grpc.Channel) -> None:
    chat = channel.stream_stream(method("Chat"))
    answers = list(chat(iter([b"a", b"b" * 100_000, b"c"]), timeout=10))
    assert [a.split(b"|", 1)[1] for a in answers] == [b"a", b"b" * 100_000, b"c"]
    assert all(verified(a) for a in answers)


def test_a_deadline_expires_and_the_upstream_sees_the_cancellation(
    channel: grpc.Channel, service: tuple[EchoService, int]
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(method("Wait"))(b"", timeout=1.0)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert service[0].cancelled.wait(5)


def test_a_client_cancellation_reaches_the_upstream(
    channel: grpc.Channel, service: tuple[EchoService, int]
) -> None:
    future = channel.unary_unary(method("Wait")).future(b"", timeout=10)
    assert service[0].started.wait(5)  # the call reached the server
    future.cancel()
    assert service[0].cancelled.wait(5)
    # the channel's connection is still good
    assert verified(channel.unary_unary(method("Unary"))(b"after", timeout=10))


@pytest.mark.parametrize("engine", ["native", "openssl"])
def test_a_down_upstream_is_unavailable_to_a_grpc_client(
    tmp_path: Path, pki: PkiFiles, engine: str
) -> None:
    """gRPC reads a proxy's 502 as UNAVAILABLE (its retryable status): the proxy answers it
    so, trailers-only with the reason, rather than a closed connection."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        down = probe.getsockname()[1]
    path = tmp_path / "grpc.yaml"
    path.write_text(grpc_config(pki, down, engine, "h2c"))
    running = RunningProxy(path)
    address = f"localhost:{running.port()}"
    try:
        with (
            grpc.secure_channel(address, client_credentials(pki)) as open_channel,
            pytest.raises(grpc.RpcError) as failed,
        ):
            open_channel.unary_unary(method("Unary"))(b"hello", timeout=10)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "cannot be reached" in failed.value.details()
    finally:
        running.stop()
