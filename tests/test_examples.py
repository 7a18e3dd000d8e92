"""What the README and config/ promise, run as written.

The README's "Your own deployment" commands run literally in a copy of the repository's
``config/`` folder, and every example config serves on its own ports (8443, metrics 9100,
upstreams 8080 and 8081, as written) with the shipped development certificates: it passes
``check`` without a warning and admits, refuses and forwards as its comments say.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.proxy.harness import ProxyProcess, eventually, read_until_closed

REPO = Path(__file__).resolve().parents[1]
FRONTEND = "spiffe://example.org/ns/prod/sa/frontend"


def readme_commands(after: str) -> list[str]:
    """The commands of the first ``sh`` block after the line ``after`` in the README."""
    text = (REPO / "README.md").read_text()
    block = re.search(re.escape(after) + r"\s*```sh\n(.*?)```", text, re.DOTALL)
    assert block is not None, after
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A README line, with ``mtlsproxy`` as this interpreter's module and optional
    ``[...]`` arguments left out."""
    args = shlex.split(re.sub(r"\[[^\]]*\]", "", command))
    assert args[0] == "mtlsproxy"
    result = subprocess.run(
        [sys.executable, "-m", "mtlsproxy", *args[1:]],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


class FixedUpstream(socketserver.ThreadingTCPServer):
    """An upstream on the fixed port an example names."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, answer: Callable[[socket.socket], None]) -> None:
        handler = type("Handler", (socketserver.BaseRequestHandler,), {
            "handle": lambda self: answer(self.request)
        })  # fmt: skip
        super().__init__(("127.0.0.1", port), handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def echo_or_http(sock: socket.socket) -> None:
    """Echo raw bytes; answer an HTTP request with 200 and its head (as the app saw it)."""
    data = sock.recv(65536)
    if data.startswith(b"GET "):
        while b"\r\n\r\n" not in data and (more := sock.recv(65536)):
            data += more
        head = data.split(b"\r\n\r\n")[0]
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(head), head)
        )
        return
    while data:
        sock.sendall(data)
        data = sock.recv(65536)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's config/ folder, certificates made by the README's command."""
    directory = tmp_path_factory.mktemp("checkout")
    shutil.copytree(REPO / "config", directory / "config")
    (pki_init,) = [c for c in readme_commands("Your own deployment:") if " pki init " in c]
    assert run(pki_init, directory).returncode == 0
    return directory


@pytest.fixture(scope="module")
def upstreams() -> Iterator[None]:
    servers = [FixedUpstream(port, echo_or_http) for port in (8080, 8081)]
    yield
    for server in servers:
        server.stop()


def connect(
    checkout: Path, cert: str | None, sni: str = "localhost"
) -> tuple[ssl.SSLSocket | None, str]:
    """A TLS connection to the example's port 8443, or (None, why it failed)."""
    certs = checkout / "config" / "certs"
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.check_hostname = sni == "localhost"  # the development certificate names localhost
    if cert is not None:
        context.load_cert_chain(certs / f"{cert}.crt", certs / f"{cert}.key")
    raw = socket.create_connection(("127.0.0.1", 8443), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=sni), ""
    except (ssl.SSLError, OSError) as error:
        raw.close()
        return None, str(error)


def exchange(checkout: Path, cert: str | None, sni: str = "localhost", http: bool = False) -> bytes:
    """What comes back for a ping (or a GET): empty when the proxy refused the client."""
    tls, _ = connect(checkout, cert, sni)
    if tls is None:
        return b""
    with tls:
        try:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n" if http else b"ping")
            if http:
                return read_until_closed(tls, timeout=5)
            return tls.recv(100)
        except (ssl.SSLError, OSError):
            return b""


@pytest.fixture
def serve(checkout: Path, upstreams: None) -> Iterator[Callable[[str], ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(example: str) -> ProxyProcess:
        process = ProxyProcess(checkout / "config" / example)
        started.append(process)
        assert process.port == 8443
        assert eventually(lambda: process.status("/readyz") == 200, timeout=10)
        return process

    yield start
    for process in started:
        process.process.terminate()
        process.process.wait(timeout=20)
        process.assert_no_traceback()


def test_your_own_deployment_commands_run_as_written(checkout: Path, upstreams: None) -> None:
    commands = readme_commands("Your own deployment:")
    assert [c.split()[1] for c in commands] == ["pki", "check", "run", "explain"]
    check, serve_command, explain = commands[1:]
    result = run(check, checkout)
    assert result.returncode == 0 and result.stdout.rstrip().endswith(": ok"), result
    config = checkout / shlex.split(serve_command)[-1]
    process = ProxyProcess(config)
    try:
        assert exchange(checkout, "client") == b"ping"
    finally:
        process.process.terminate()
        process.process.wait(timeout=20)
    result = run(explain, checkout)
    assert result.returncode == 1
    assert "REFUSED at step authorize (identity_not_allowed)" in result.stdout


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_every_example_passes_check_without_a_warning(checkout: Path, example: str) -> None:
    result = run(f"mtlsproxy check -c config/{example}", checkout)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.rstrip().endswith(": ok")


def test_require_example(checkout: Path, serve) -> None:
    serve("require.yaml")
    assert exchange(checkout, "client") == b"ping"
    assert exchange(checkout, "client-other") == b""  # verified, not on the allow-list
    assert exchange(checkout, None) == b""
    assert exchange(checkout, "client-revoked") == b""


def test_request_example(checkout: Path, serve) -> None:
    serve("request.yaml")
    assert exchange(checkout, "client") == b"ping"
    assert exchange(checkout, None) == b"ping"  # anonymous is admitted
    assert exchange(checkout, "client-expired") == b""  # a presented certificate is verified


def test_none_example_serves_plain_http_clients(checkout: Path, serve) -> None:
    """ALPN offers http/1.1 only: curl in front of an HTTP/1.1 app gets its answer."""
    serve("none.yaml")
    tls, _ = connect(checkout, None)
    assert tls is not None
    with tls:
        assert tls.selected_alpn_protocol() is None
    assert exchange(checkout, None) == b"ping"
    context = ssl.create_default_context(cafile=str(checkout / "config/certs/ca.crt"))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", 8443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as offered,
    ):
        assert offered.selected_alpn_protocol() == "http/1.1"


def test_routes_example(checkout: Path, serve) -> None:
    serve("routes.yaml")
    assert exchange(checkout, "client-other") == b"ping"  # default: any verified client
    assert exchange(checkout, None, sni="public.example.org") == b"ping"  # one-way TLS
    assert exchange(checkout, "client", sni="admin.example.org") == b"ping"  # on 8081
    assert exchange(checkout, "client-other", sni="x.admin.example.org") == b""


def test_native_http_example_forwards_the_identity(checkout: Path, serve) -> None:
    serve("native-http.yaml")
    answer = exchange(checkout, "client", http=True)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    head = answer.split(b"\r\n\r\n", 1)[1].decode()
    assert f"URI={FRONTEND}" in head and "x-forwarded-client-cert:" in head.lower()
    assert f"x-ssl-client-spiffe-id: {FRONTEND}" in head.lower()
    assert exchange(checkout, "client-other", http=True) == b""


def ask(checkout: Path, cert: str | None, path: str) -> bytes:
    """The answer to ``GET path`` on a connection of its own (closed after it)."""
    tls, _ = connect(checkout, cert)
    assert tls is not None  # mode request admits every client at the handshake
    with tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode())
        return read_until_closed(tls, timeout=5)


def test_http_paths_example(checkout: Path, serve) -> None:
    serve("http-paths.yaml")
    expected = {
        ("client", "/admin/users"): b"200",
        ("client-other", "/admin/users"): b"403",  # verified, not on /admin's allow list
        (None, "/admin/users"): b"403",
        ("client-other", "/api/items"): b"200",
        (None, "/api/items"): b"403",
        (None, "/public/index.html"): b"200",
        (None, "/healthz"): b"200",
        ("client", "/elsewhere"): b"403",  # default: deny
        ("client", "/public/../admin"): b"400",
        ("client", "/%61dmin"): b"400",
    }
    for (cert, path), status in expected.items():
        answer = ask(checkout, cert, path)
        assert answer.startswith(b"HTTP/1.1 " + status), (cert, path, answer)
    head = ask(checkout, "client-other", "/api/items").split(b"\r\n\r\n", 1)[1].lower()
    assert b"x-ssl-client-verify: success" in head


def test_the_readme_configuration_reference_passes_check(checkout: Path) -> None:
    """The reference block, saved next to the examples, is a valid config as written."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Configuration reference\s*```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None
    (checkout / "config" / "reference.yaml").write_text(block.group(1))
    result = run("mtlsproxy check -c config/reference.yaml", checkout)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith(": ok")


def test_audit_example_admits_and_counts_would_refuse(checkout: Path, serve) -> None:
    process = serve("audit.yaml")
    ok = exchange(checkout, "client", http=True)
    assert ok.startswith(b"HTTP/1.1 200") and b"x-ssl-client-verify: success" in ok.lower()
    # Not on the allow-list, then expired: admitted, forwarded as unverified, counted.
    for cert in ("client-other", "client-expired"):
        answer = exchange(checkout, cert, http=True)
        assert answer.startswith(b"HTTP/1.1 200"), cert
        assert b"x-ssl-client-verify: failed" in answer.lower()
        assert b"x-forwarded-client-cert" not in answer.lower()
    metrics = process.get("/metrics")
    assert 'result="would_refuse",route="default",step="authorize"' in metrics
    assert 'reason="client_cert_expired",result="would_refuse"' in metrics


def test_proxy_protocol_example_opens_with_a_v2_header(checkout: Path, serve) -> None:
    serve("proxy-protocol.yaml")
    echoed = b""
    tls, _ = connect(checkout, "client")
    assert tls is not None
    with tls:
        tls.sendall(b"ping")
        while not echoed.endswith(b"ping"):
            chunk = tls.recv(65536)
            assert chunk, echoed
            echoed += chunk
    # The upstream echoes what it received: the PROXY v2 signature and header, then the data.
    assert echoed.startswith(b"\r\n\r\n\x00\r\nQUIT\n\x21")
    assert FRONTEND.encode() in echoed
    assert exchange(checkout, "client-other") == b""  # not on the allow-list


def test_grpc_example_forwards_the_identity_and_refuses_by_method(checkout: Path, serve) -> None:
    """A grpcio client through the example to a grpcio server on h2c at 127.0.0.1:50051."""
    from concurrent import futures

    import grpc

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return str(dict(context.invocation_metadata()).get("x-forwarded-client-cert")).encode()

    raw = {"request_deserializer": None, "response_serializer": None}
    handler = grpc.unary_unary_rpc_method_handler(unary, **raw)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("echo.Echo", {"Unary": handler}),
        grpc.method_handlers_generic_handler("echo.Admin", {"Drop": handler}),
    ))  # fmt: skip
    assert server.add_insecure_port("127.0.0.1:50051") == 50051
    server.start()
    try:
        serve("grpc.yaml")
        certs = checkout / "config" / "certs"

        def call(cert: str, method: str) -> bytes | grpc.StatusCode:
            credentials = grpc.ssl_channel_credentials(
                (certs / "ca.crt").read_bytes(),
                (certs / f"{cert}.key").read_bytes(),
                (certs / f"{cert}.crt").read_bytes(),
            )
            with grpc.secure_channel("localhost:8443", credentials) as channel:
                try:
                    return bytes(channel.unary_unary(method)(b"hi", timeout=10))
                except grpc.RpcError as error:
                    return error.code()

        assert f"URI={FRONTEND}".encode() in call("client", "/echo.Echo/Unary")  # type: ignore[operator]
        assert f"URI={FRONTEND}".encode() in call("client", "/echo.Admin/Drop")  # type: ignore[operator]
        assert b"CN=intruder" in call("client-other", "/echo.Echo/Unary")  # type: ignore[operator]
        assert call("client-other", "/echo.Admin/Drop") == grpc.StatusCode.PERMISSION_DENIED
        assert call("client", "/other.Service/Call") == grpc.StatusCode.PERMISSION_DENIED
    finally:
        server.stop(grace=None)
