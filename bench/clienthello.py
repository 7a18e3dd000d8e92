"""The ClientHello read alone: ``ClientHelloReader().feed`` on whole hellos, as both engines
read a connection's first bytes.

Three hellos from Python ``ssl`` clients (OpenSSL 3): TLS 1.3 with TLS 1.2 offered too, SNI and
ALPN (``full``); the same resuming a session (``psk``:
a ticket in pre_shared_key); TLS 1.2 only (``tls12``).

    python bench/clienthello.py [--number 20000] [--repeat 7] [--pki DIR]

prints the best time per read of each. ``--loop N`` reads each hello N times and nothing else,
for an instruction count: the difference of two callgrind totals over the difference of N,
with the PKI kept in ``--pki DIR`` (made on first use: key generation varies from run to run)::

    for n in 1000 3000; do PYTHONHASHSEED=0 valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null python bench/clienthello.py --loop $n \
        --pki /tmp/bench-pki 2>&1 | grep Collected; done
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import tempfile
import timeit
from functools import partial
from pathlib import Path

from mtlsproxy import pki
from mtlsproxy.engine.clienthello import ClientHelloReader


def _client(files: pki.PkiFiles, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    context.maximum_version = version
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def _first_flight(context: ssl.SSLContext, session: ssl.SSLSession | None = None) -> bytes:
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(
        ssl.MemoryBIO(), outgoing, server_hostname="localhost", session=session
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def _session(files: pki.PkiFiles, context: ssl.SSLContext) -> ssl.SSLSession:
    """A TLS 1.3 session with a ticket, from one in-memory handshake with a plain server."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.server_cert, files.server_key)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(to_client, to_server, server_hostname="localhost")
    server = server_context.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(4):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
    with contextlib.suppress(ssl.SSLWantReadError):
        client.read()  # the ticket
    session = client.session
    if session is None or not session.has_ticket:
        raise RuntimeError("no session ticket")
    return session


def hellos(directory: Path) -> dict[str, bytes]:
    files = pki.PkiFiles.at(directory)
    if not files.crl_bundle.exists():  # pki.init's files, made once per directory
        directory.mkdir(parents=True, exist_ok=True)
        files = pki.init(directory)
    tls13 = _client(files, ssl.TLSVersion.TLSv1_3)
    return {
        "full": _first_flight(tls13),
        "psk": _first_flight(tls13, _session(files, tls13)),
        "tls12": _first_flight(_client(files, ssl.TLSVersion.TLSv1_2)),
    }


def read(data: bytes) -> None:
    if ClientHelloReader().feed(data) is None:
        raise RuntimeError("not a whole ClientHello")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--loop", type=int, help="only N reads of each hello")
    parser.add_argument("--pki", type=Path, help="keep the PKI in this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        samples = hellos(args.pki or Path(directory))
    if args.loop is not None:
        for data in samples.values():
            for _ in range(args.loop):
                read(data)
        return
    print(f"ClientHelloReader().feed, best of {args.repeat} x {args.number}")
    for name, data in samples.items():
        best = min(timeit.repeat(partial(read, data), number=args.number, repeat=args.repeat))
        print(f"  {name:6s} {len(data):5d} bytes {best / args.number * 1e6:7.2f} us")


if __name__ == "__main__":
    main()
