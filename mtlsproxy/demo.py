"""``mtlsproxy demo``: the main job on an embedded default, with nothing to prepare.

A throwaway PKI, a small built-in upstream, the proxy in ``require`` mode on 127.0.0.1, then
two exchanges told in the seed's steps: a client with a certificate is admitted, a client
without one is refused. Then it serves until Ctrl-C, printing the curl commands to try.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import sys
import tempfile
from pathlib import Path

from mtlsproxy import pki
from mtlsproxy.config import load_config_with_warnings
from mtlsproxy.config.model import LogFormat, LogSettings
from mtlsproxy.proxy.server import Proxy

UPSTREAM_BODY = b"hello from the upstream service: you came through mutual TLS\n"

CONFIG_TEMPLATE = """\
# Written by `mtlsproxy demo`; a real deployment keeps its own copy of a file like this.
listeners:
  - name: demo
    listen: 127.0.0.1:{port}
    tls:
      certificates:
        - {{certificate: server.crt, key: server.key}}
        - {{certificate: server-rsa.crt, key: server-rsa.key}}
    client_auth:
      mode: require
      ca: client-ca.pem
      crl: crls.pem
      allow:
        - spiffe_id: spiffe://example.org/ns/prod/sa/frontend
    upstream: 127.0.0.1:{upstream_port}
metrics:
  listen: 127.0.0.1:{metrics_port}
log:
  format: text
  level: warning
"""


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny HTTP service standing in for the user's application."""
    with contextlib.suppress(
        ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError
    ):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(UPSTREAM_BODY), UPSTREAM_BODY)
        )
        await writer.drain()
    writer.close()


def _free_port(preferred: int) -> int:
    """``preferred`` if it can be bound on 127.0.0.1, else a free one the kernel picks."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _exchange(port: int, files: pki.PkiFiles, with_certificate: bool) -> tuple[bool, str]:
    """One HTTPS request through the proxy with Python's ssl module; (admitted, what happened)."""
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    if with_certificate:
        context.load_cert_chain(files.client_cert, files.client_key)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            version, cipher = tls.version(), (tls.cipher() or ("?",))[0]
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
    except ssl.SSLError as error:
        return False, f"the client read alert {error.reason}"
    except (ConnectionError, TimeoutError) as error:
        return False, f"the connection ended: {error}"
    body = response.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
    return True, f"{version} {cipher}; the upstream answered: {body!r}"


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _main(directory: Path, port: int, metrics_port: int, once: bool) -> tuple[bool, bool]:
    files = pki.init(directory)
    upstream = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    config_path = directory / "mtlsproxy.yaml"
    config_path.write_text(
        CONFIG_TEMPLATE.format(port=port, upstream_port=upstream_port, metrics_port=metrics_port)
    )
    config, _ = load_config_with_warnings(config_path)
    proxy = Proxy(config)
    from mtlsproxy import logs

    # The scripted exchanges narrate themselves; access lines start when the user's do.
    logs.configure(LogSettings(format=LogFormat.TEXT, level="warning", access=False))
    await proxy.start()
    proxy.install_signal_handlers()

    _say(f"mtlsproxy demo: a throwaway PKI and config in {directory}")
    _say(f"  upstream (a tiny HTTP service)   127.0.0.1:{upstream_port}")
    _say(f"  proxy, client_auth.mode=require  127.0.0.1:{port}  ({config_path.name})")
    _say(f"  metrics                          http://127.0.0.1:{proxy.admin.port}/metrics")
    _say()
    _say("1) A client WITH a certificate (CN=frontend, spiffe://example.org/ns/prod/sa/frontend)")
    admitted, what = await asyncio.to_thread(_exchange, port, files, True)
    _say("   seed 1  ClientHello: the client offers TLS 1.3/1.2, its suites and key shares")
    _say("   seed 2  ServerHello + our certificate + CertificateRequest (mode require)")
    _say("   seed 3  the client verifies our certificate against ca.crt")
    _say("   seed 4  key exchange (ECDHE key shares)")
    _say("   seed 5  the client sends its certificate and CertificateVerify")
    _say("   seed 6  we verify the chain to client-ca.pem, the CRL, then the allow-list: allowed")
    _say("   seed 7-8 Finished both ways; seed 9: application data flows to the upstream")
    _say(f"   result: {'ADMITTED' if admitted else 'UNEXPECTEDLY REFUSED'}: {what}")
    _say()
    _say("2) A client WITHOUT a certificate")
    refused_ok, what = await asyncio.to_thread(_exchange, port, files, False)
    _say("   seed 1-4 as above; seed 5: the client answers the CertificateRequest with no")
    _say("            certificate, and client_auth.mode=require makes that fatal: we send the")
    _say("            certificate_required alert (TLS 1.3) and nothing reaches the upstream")
    _say(f"   result: {'UNEXPECTEDLY ADMITTED' if refused_ok else 'REFUSED'}: {what}")
    _say()
    for line in proxy.metrics.exposition().decode().splitlines():
        if line.startswith("mtlsproxy_handshakes_total"):
            _say(f"   {line}")
    _say()
    ca, crt, key = files.ca_cert, files.client_cert, files.client_key
    _say("Try it yourself:")
    _say(f"  curl --cacert {ca} --cert {crt} --key {key} https://localhost:{port}/")
    _say(f"  curl --cacert {ca} https://localhost:{port}/      # refused: no certificate")
    _say(f"  mtlsproxy explain -c {config_path} --cert {files.client_other_cert}")
    _say(f"  curl http://127.0.0.1:{proxy.admin.port}/metrics")
    if not once:
        _say("Serving until Ctrl-C (one access log line per connection).")
        logs.configure(LogSettings(format=LogFormat.TEXT, level="warning", access=True))
        await proxy.wait_stopped()
    else:
        await proxy.drain(timeout=1.0)
    upstream.close()
    return admitted, not refused_ok


def run_demo(port: int, metrics_port: int, directory: Path | None, once: bool) -> int:
    keep = directory is not None
    try:
        workdir = (
            directory if directory is not None else Path(tempfile.mkdtemp(prefix="mtlsproxy-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        where = directory or tempfile.gettempdir()
        print(f"demo: cannot use {where}: {error.strerror or error}", file=sys.stderr)
        return 1
    try:
        admitted, refused = asyncio.run(
            _main(workdir, _free_port(port), _free_port(metrics_port), once)
        )
    except KeyboardInterrupt:
        return 0
    except OSError as error:  # a port taken between the probe and the bind
        print(f"demo: {error}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if not (admitted and refused):
        print("demo: the exchanges did not go as expected", file=sys.stderr)
        return 1
    return 0
