"""Server-side CPU per handshake, in process: the native engine, the OpenSSL engine and a bare
SSLObject.

Both servers face the same in-memory Python ``ssl`` client; only the time spent inside server
calls is counted (``time.process_time`` around each), so the client's cost is excluded. The
bare SSLObject is the floor: what OpenSSL 3.0 through Python's ``ssl`` costs per handshake.
The difference is the engine's own work (ClientHello parsing, route selection, identity
extraction and the allow-list). Runs interleave the cases (A B C A B C ...) and report medians.

``crypto floor`` is what the native engine cannot avoid in a mutual-TLS 1.3 handshake whose
client chain is cached, as bare ``cryptography`` and ``hashlib``/``hmac`` calls: one X25519 key
pair and exchange, one ECDSA P-256 signature (our CertificateVerify) and one verification (the
client's), the HKDF-Expand-Label and HMAC calls of the key schedule and both Finished values,
the transcript hashes, AES-128-GCM over our flight, the client's flight and one ticket. The
native engine's cost over it is its own Python.

``crypto floor, cold`` is the same calls, each run right after a client handshake (untimed,
against a bare server): the native server's steps run between the client's, whose OpenSSL work
has pushed the server's code and data out of the CPU caches, while the plain floor runs warm in
a tight loop. The native engine's own Python is its cost over the cold floor; the warm floor is
the lower bound.

    python bench/engine.py --handshakes 300 --runs 5 [--no-verify-cache]

``mTLS 1.3 native resumed`` is the same client resuming, every time, the session of one full
handshake (a PSK from its ticket, RFC 8446 section 2.2: no certificate messages, no signature;
the ticket's chain is decided on again).

``--loop N`` runs N native mutual-TLS 1.3 handshakes (``--one-way``: one-way TLS 1.3;
``--resumed``: resumed; ``--server openssl`` or ``bare``: the OpenSSL engine or a bare
SSLObject instead, ``--tls12`` then for TLS 1.2) and nothing else, for a profiler or an
instruction count, with
``--pki DIR`` keeping the PKI in DIR (made on first use) so that runs are comparable (fresh
keys change what the client's crypto costs). Instructions per handshake, repeatable on a
noisy machine: the difference of two callgrind totals over 20::

    for n in 10 30; do valgrind --tool=callgrind --callgrind-out-file=cg.$n \
        python bench/engine.py --loop $n --pki /tmp/bench-pki; done
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import hmac
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mtlsproxy import pki
from mtlsproxy.config.model import CertificateKeyPair, Route, TLSSettings, Upstream
from mtlsproxy.engine.events import HandshakeComplete
from mtlsproxy.engine.openssl import OpenSSLEngine
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.policy import verify
from mtlsproxy.policy.model import AllowKind, AllowRule, ClientAuth, ClientAuthMode
from mtlsproxy.routing.routes import RouteTable, ServerRoute

ServerStep = Callable[[bytes], bytes]  # client bytes in, server bytes out


def route(files: pki.PkiFiles, mode: ClientAuthMode, allow: bool) -> ServerRoute:
    rules = (AllowRule(AllowKind.SPIFFE_ID, pki.FRONTEND_SPIFFE_ID),) if allow else ()
    client_auth = (
        ClientAuth(mode, files.client_ca_bundle, files.crl_bundle, rules)
        if mode is not ClientAuthMode.NONE
        else ClientAuth()
    )
    tls = TLSSettings((CertificateKeyPair(files.server_cert, files.server_key),))
    return ServerRoute.build(Route("default", (), tls, client_auth, Upstream("127.0.0.1", 1)))


def client_context(files: pki.PkiFiles, with_cert: bool, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    context.minimum_version = context.maximum_version = version
    if with_cert:
        context.load_cert_chain(files.client_cert, files.client_key)
    return context


def handshake(
    client_ctx: ssl.SSLContext, server: ServerStep, session: ssl.SSLSession | None = None
) -> float:
    """One handshake (resuming ``session`` when given); returns the server's CPU seconds."""
    return _run(client_ctx, server, session)[0]


def first_session(client_ctx: ssl.SSLContext, server: ServerStep) -> ssl.SSLSession:
    """A full handshake's session, its ticket read by the client (for ``--resumed``)."""
    _, client = _run(client_ctx, server, None)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.read()  # takes the NewSessionTicket that came with the server's last answer
    session = client.session
    if session is None or not session.has_ticket:
        raise RuntimeError("no session ticket")
    return session


def _run(
    client_ctx: ssl.SSLContext, server: ServerStep, session: ssl.SSLSession | None
) -> tuple[float, ssl.SSLObject]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost", session=session)
    spent = 0.0
    for _ in range(10):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        data = outgoing.read()
        if data:
            started = time.process_time()
            answer = server(data)
            spent += time.process_time() - started
            incoming.write(answer)
        elif done:
            if session is not None and not client.session_reused:
                raise RuntimeError("the session was not resumed")
            return spent, client
    raise RuntimeError("handshake did not complete")


def engine_server(table: RouteTable, kind: type = OpenSSLEngine) -> Callable[[], ServerStep]:
    def new() -> ServerStep:
        engine = kind(table.select, time.perf_counter)

        def step(data: bytes) -> bytes:
            for event in engine.receive(data):
                if not isinstance(event, HandshakeComplete) and hasattr(event, "reason"):
                    raise RuntimeError(f"handshake failed: {event}")
            return engine.data_to_send()

        return step

    return new


def crypto_floor(files: pki.PkiFiles) -> Callable[[], float]:
    """One handshake's unavoidable primitives (module docstring); returns the CPU seconds."""
    server_key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
    client_cert = x509.load_pem_x509_certificate(files.client_cert.read_bytes())
    client_key = serialization.load_pem_private_key(files.client_key.read_bytes(), None)
    assert isinstance(server_key, ec.EllipticCurvePrivateKey)
    assert isinstance(client_key, ec.EllipticCurvePrivateKey)
    content = b" " * 64 + b"TLS 1.3, client CertificateVerify\x00" + b"h" * 32
    client_signature = client_key.sign(content, ec.ECDSA(hashes.SHA256()))
    peer_share = x25519.X25519PrivateKey.generate().public_key()
    flight, client_flight, ticket = b"f" * 1400, b"c" * 900, b"t" * 400
    secret = b"s" * 32

    def once() -> float:
        started = time.process_time()
        ours = x25519.X25519PrivateKey.generate()
        ours.public_key().public_bytes_raw()
        ours.exchange(peer_share)
        server_key.sign(content, ec.ECDSA(hashes.SHA256()))
        client_cert.public_key().verify(client_signature, content, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg,union-attr]
        for _ in range(24):  # extracts, Derive-Secret and traffic key/iv expansions, Finished
            hmac.digest(secret, b"label" * 4, "sha256")
        for size in (300, 1500, 2600, 3300):  # transcript hashes at the points they are taken
            hashlib.sha256(b"m" * size).digest()
        aead = AESGCM(secret[:16])
        nonce = b"n" * 12
        sealed = aead.encrypt(nonce, flight, b"h" * 5)
        aead.decrypt(nonce, aead.encrypt(nonce, client_flight, b"h" * 5), b"h" * 5)
        aead.encrypt(nonce, ticket, b"h" * 5)
        del sealed
        return time.process_time() - started

    return once


def bare(server_route: ServerRoute) -> Callable[[], ServerStep]:
    """A bare SSLObject server on the route's own context (the OpenSSL floor). Its SSLObject
    is made in the first (timed) call, as the engine makes its own once the ClientHello has
    chosen the route: making one (``SSL_new``) is part of what every handshake costs."""
    context = server_route.ssl_context

    def new() -> ServerStep:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        server: ssl.SSLObject | None = None

        def step(data: bytes) -> bytes:
            nonlocal server
            if server is None:
                server = context.wrap_bio(incoming, outgoing, server_side=True)
            incoming.write(data)
            try:
                server.do_handshake()
                server.getpeercert(binary_form=True)
            except ssl.SSLWantReadError:
                pass
            return outgoing.read()

        return step

    return new


def loop(
    count: int,
    directory: Path | None,
    *,
    one_way: bool = False,
    resumed: bool = False,
    server: str = "native",
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> None:
    """``count`` handshakes after one warm-up (module docstring): mutual TLS, or with
    ``one_way`` no CertificateRequest and no client certificate; ``resumed``: each resuming
    the session of the warm-up (a PSK from its ticket, section 2.2). ``server``: ``native``
    (the selecting engine), ``openssl`` (the OpenSSL engine) or ``bare`` (an SSLObject)."""
    with tempfile.TemporaryDirectory() as scratch:
        where = directory or Path(scratch)
        files = pki.PkiFiles.at(where)
        if not files.crl_bundle.exists():  # pki.init's files, made once per directory
            where.mkdir(parents=True, exist_ok=True)
            files = pki.init(where)
        mode = ClientAuthMode.NONE if one_way else ClientAuthMode.REQUIRE
        server_route = route(files, mode, allow=not one_way)
        client_ctx = client_context(files, not one_way, version)
        servers = {
            "native": lambda: engine_server(RouteTable(server_route), SelectingEngine),
            "openssl": lambda: engine_server(RouteTable(server_route)),
            "bare": lambda: bare(server_route),
        }
        new_server = servers[server]()
        session = first_session(client_ctx, new_server())
        if resumed:
            handshake(client_ctx, new_server(), session)  # the resumed path's warm-up
        gc.collect()
        gc.freeze()  # the warm-up's objects: collections then cost the same in every run
        for _ in range(count):
            handshake(client_ctx, new_server(), session if resumed else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--no-verify-cache",
        action="store_true",
        help="verify every client chain afresh (the native engine reuses identical chains)",
    )
    parser.add_argument("--loop", type=int, help="only N native mTLS 1.3 handshakes")
    parser.add_argument("--pki", type=Path, help="with --loop: keep the PKI in this directory")
    parser.add_argument(
        "--one-way", action="store_true", help="with --loop: one-way TLS 1.3 (no client cert)"
    )
    parser.add_argument(
        "--resumed", action="store_true", help="with --loop: resumed (PSK from a ticket)"
    )
    parser.add_argument(
        "--server",
        choices=("native", "openssl", "bare"),
        default="native",
        help="with --loop: the engine serving (bare: an SSLObject on the route's context)",
    )
    parser.add_argument("--tls12", action="store_true", help="with --loop: TLS 1.2 (not native)")
    args = parser.parse_args()
    if args.no_verify_cache:
        verify.VERIFY_CACHE_SIZE = 0
    if args.loop is not None:
        version = ssl.TLSVersion.TLSv1_2 if args.tls12 else ssl.TLSVersion.TLSv1_3
        loop(
            args.loop,
            args.pki,
            one_way=args.one_way,
            resumed=args.resumed,
            server=args.server,
            version=version,
        )
        return
    with tempfile.TemporaryDirectory() as directory:
        files = pki.init(Path(directory))
        # name -> the client's context, a new server, and the session it resumes (or None)
        cases: dict[str, tuple[ssl.SSLContext, Callable[[], ServerStep], ssl.SSLSession | None]]
        cases = {}
        for version, name in ((ssl.TLSVersion.TLSv1_3, "1.3"), (ssl.TLSVersion.TLSv1_2, "1.2")):
            mutual = route(files, ClientAuthMode.REQUIRE, allow=True)
            oneway = route(files, ClientAuthMode.NONE, allow=False)
            with_cert = client_context(files, True, version)
            without = client_context(files, False, version)
            mutual_table, oneway_table = RouteTable(mutual), RouteTable(oneway)
            cases[f"mTLS {name} engine"] = (with_cert, engine_server(mutual_table), None)
            cases[f"mTLS {name} bare SSLObject"] = (with_cert, bare(mutual), None)
            cases[f"one-way {name} engine"] = (without, engine_server(oneway_table), None)
            cases[f"one-way {name} bare SSLObject"] = (without, bare(oneway), None)
            if version is ssl.TLSVersion.TLSv1_3:
                # untimed: a client handshake before each cold floor call (module docstring)
                warm_caches = (with_cert, bare(mutual))
                native = engine_server(mutual_table, SelectingEngine)
                cases[f"mTLS {name} native"] = (with_cert, native, None)
                session = first_session(with_cert, native())
                cases[f"mTLS {name} native resumed"] = (with_cert, native, session)
                cases[f"one-way {name} native"] = (
                    without,
                    engine_server(oneway_table, SelectingEngine),
                    None,
                )
        results: dict[str, list[float]] = {name: [] for name in cases}
        floor = crypto_floor(files)
        results["mTLS 1.3 crypto floor"] = []
        results["mTLS 1.3 crypto floor, cold"] = []
        for _ in range(args.runs):
            for name, (client_ctx, new_server, session) in cases.items():
                total = sum(
                    handshake(client_ctx, new_server(), session) for _ in range(args.handshakes)
                )
                results[name].append(total / args.handshakes * 1e6)
            total = sum(floor() for _ in range(args.handshakes))
            results["mTLS 1.3 crypto floor"].append(total / args.handshakes * 1e6)
            total = 0.0
            for _ in range(args.handshakes):
                handshake(warm_caches[0], warm_caches[1]())
                total += floor()
            results["mTLS 1.3 crypto floor, cold"].append(total / args.handshakes * 1e6)
    print(f"server CPU per handshake, us (median of {args.runs} runs x {args.handshakes})")
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, median in medians.items():
        if name == "mTLS 1.3 native":
            openssl = medians["mTLS 1.3 engine"]
            floor_ratio = median / medians["mTLS 1.3 crypto floor"]
            cold_ratio = median / medians["mTLS 1.3 crypto floor, cold"]
            ratio = (
                f"  x{median / openssl:.2f} of the OpenSSL engine,"
                f" x{floor_ratio:.2f} the floor (x{cold_ratio:.2f} the cold floor)"
            )
        elif name == "mTLS 1.3 native resumed":
            ratio = f"  x{median / medians['mTLS 1.3 native']:.2f} of the full handshake"
        elif "native" in name:
            openssl = medians[name.replace("native", "engine")]
            ratio = f"  x{median / openssl:.2f} of the OpenSSL engine"
        elif "engine" in name:
            ratio = f"  x{median / medians[name.replace('engine', 'bare SSLObject')]:.2f} of bare"
        else:
            ratio = ""
        print(f"  {name:28s} {median:8.1f}{ratio}")


if __name__ == "__main__":
    main()
