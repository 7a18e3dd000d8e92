"""End-to-end benchmark: mtlsproxy (both engines) against nginx stream and bare stdlib ``ssl``.

For each configuration (require/TLS 1.3, none/TLS 1.3, require/TLS 1.2) and each run, this
starts fresh servers and measures them interleaved (the order rotates each pass):

* ``openssl``: ``python -m mtlsproxy run`` with ``engine: openssl`` (the default);
* ``native``: the same with ``engine: native`` (the project's TLS 1.3 engine; TLS 1.2 clients
  are handed to OpenSSL);
* ``nginx``: nginx's stream module terminating TLS (``ssl_verify_client on``, the same client
  CA and CRL bundle) and ``proxy_pass``-ing to the same upstream, one worker;
* ``bare``: a plain asyncio (+ uvloop) server on stdlib ``ssl`` with the proxy's context
  settings, answering the little protocol itself instead of forwarding;
* ``openssl-before``, ``native-before``: the proxy of another checkout (``--before DIR``, with
  its own ``.venv``), for a change measured before and after in the same passes.

Tests:

* handshakes: worker processes open new TLS connections in a loop (full handshake, 1 byte
  echoed through the upstream, close) for ``--seconds``; server CPU per handshake comes from
  ``/proc/PID/stat`` (utime + stime, the process and its descendants) before and after;
* bulk: one TLS connection pushes ``--mib`` MiB to an upstream that discards them; server CPU
  seconds per GiB and MiB/s.

The mutual-TLS settings are the same everywhere: one ECDSA P-256 certificate, the client CA
bundle, the CRL bundle checked for the whole chain, no identity allow-list (nginx's stream
module cannot match a URI SAN). Ratios are against ``openssl``, per pass, then the median.
Servers are pinned to core 0, the driver, load clients and the upstream to core 1 (when there
are two cores and ``taskset``).

    /work/venv/bin/python bench/e2e.py --seconds 5 --runs 3

Internal modes (used by the script on itself): ``--serve upstream|baseline ...``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from procs import (  # bench/procs.py
    REPO,
    Process,
    field_median,
    free_port,
    keep_sample,
    median,
    pass_ratios,
    pin_servers,
    print_header,
    print_table,
    proxy_command,
    serve_until_stopped,
    write_samples,
)

SERVER_CORE = 0
CLIENT_CORE = 1
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"  # the proxy's (mtlsproxy.routing.contexts)
CHUNK = 256 * 1024
SYSTEMS = ("openssl", "native", "nginx", "bare", "openssl-before", "native-before")
LABELS = {
    "openssl": "mtlsproxy openssl",
    "native": "mtlsproxy native",
    "nginx": "nginx stream",
    "bare": "bare python ssl",
    "openssl-before": "openssl, --before",
    "native-before": "native, --before",
}
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    mode: str  # require | none
    version: str  # "1.3" | "1.2"


SETUPS = (
    Setup("require13", "require, TLS 1.3", "require", "1.3"),
    Setup("none13", "none, TLS 1.3", "none", "1.3"),
    Setup("require12", "require, TLS 1.2", "require", "1.2"),
)


# ---------------------------------------------------------------------------------------------
# Servers: the upstream (plain TCP) and the baseline (TLS), one protocol for both.
#   b"E"                    -> answer b"E" (handshake probe)
#   b"B" + 8-byte length n  -> read and discard n bytes, then answer b"K" (bulk)
#   b"R"                    -> echo every byte after it (keep-alive requests, keepalive.py)


def _serve(kind: str, directory: str, mode: str, version: str) -> None:
    import asyncio

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.head = b""
            self.remaining = -1
            self.echo = False

        def data_received(self, data: bytes) -> None:
            if self.echo:
                self.transport.write(data)  # type: ignore[attr-defined]
                return
            if self.remaining < 0:
                self.head += data
                if self.head[:1] == b"R":
                    self.echo = True
                    if len(self.head) > 1:
                        self.transport.write(self.head[1:])  # type: ignore[attr-defined]
                    return
                if self.head[:1] == b"E":
                    self.transport.write(b"E")  # type: ignore[attr-defined]
                    self.remaining = 0
                    return
                if self.head[:1] != b"B":
                    self.transport.close()
                    return
                if len(self.head) < 9:
                    return
                self.remaining = int.from_bytes(self.head[1:9], "big")
                data, self.head = self.head[9:], b""
                if self.remaining == 0:
                    self.transport.write(b"K")  # type: ignore[attr-defined]
                    return
            if self.remaining > 0:
                self.remaining -= len(data)
                if self.remaining <= 0:
                    self.transport.write(b"K")  # type: ignore[attr-defined]

        def eof_received(self) -> bool:
            return False

    context = None
    if kind == "baseline":
        d = Path(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = (
            ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
        )
        context.set_ciphers(TLS12_CIPHERS)
        context.options |= (
            ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
        )
        context.num_tickets = 1  # as the proxy's contexts (mtlsproxy.routing.contexts)
        context.load_cert_chain(d / "server.crt", d / "server.key")
        if mode == "require":
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=d / "client-ca.pem")
            context.load_verify_locations(cafile=d / "crls.pem")
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN  # as the proxy, nginx

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=context, backlog=1024)
        await serve_until_stopped(server)

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(main())


# ---------------------------------------------------------------------------------------------
# Process handling


def proxy_config(directory: Path, setup: Setup, upstream_port: int, engine: str) -> Path:
    """As config/require.yaml (or none), without the allow-list: no other system has one."""
    lines = [
        "listeners:",
        "  - name: bench",
        "    listen: 127.0.0.1:0",
        f"    engine: {engine}",
        "    tls:",
        "      certificates:",
        "        - {certificate: server.crt, key: server.key}",
        f'      min_version: "{setup.version}"',
        "    client_auth:",
        f"      mode: {setup.mode}",
    ]
    if setup.mode == "require":
        lines += [
            "      ca: client-ca.pem",
            "      crl: crls.pem",
        ]
    lines += [
        f"    upstream: 127.0.0.1:{upstream_port}",
        "metrics:",
        "  enabled: false",
        "log:",
        "  format: text",
        "  level: info",
    ]
    path = directory / f"proxy-{engine}-{setup.key}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


NGINX_STREAM = """\
{load_module}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
stream {{
    upstream app {{ server 127.0.0.1:{upstream}; }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=1024;
        ssl_certificate {pki}/server.crt;
        ssl_certificate_key {pki}/server.key;
        ssl_protocols {protocols};
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers on;
{client_auth}        proxy_pass app;
    }}
}}
"""
NGINX_CLIENT_AUTH = """\
        ssl_verify_client on;
        ssl_client_certificate {pki}/client-ca.pem;
        ssl_verify_depth 2;
        ssl_crl {pki}/crls.pem;
"""


def find_nginx() -> tuple[str, str]:
    """nginx's path, and the directive loading its stream module where it is dynamic."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx not found: apt-get install -y nginx libnginx-mod-stream")
    return nginx, stream_module_directive(nginx)


def pki_and_upstream(directory: Path) -> Process:
    """The development PKI written to ``directory`` and the upstream started on it (the
    caller stops it): what every bench script's servers need."""
    sys.path.insert(0, str(REPO))
    from mtlsproxy import pki

    pki.init(directory)
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", "upstream"]
    return Process([*argv, str(directory), "none", "1.3"], directory / "up.log", None, None)


def stream_module_directive(nginx: str) -> str:
    """``load_module ...;`` when the stream module is dynamic (Debian), else nothing."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    if "--with-stream=dynamic" not in built:
        if "--with-stream" in built:
            return ""
        raise SystemExit(f"{nginx} has no stream module")
    if not STREAM_MODULE.exists():
        raise SystemExit(f"{STREAM_MODULE} missing: apt-get install -y libnginx-mod-stream")
    return f"load_module {STREAM_MODULE};\n"


def start_nginx_stream(
    nginx: str,
    pki: Path,
    setup: Setup,
    upstream: int,
    load_module: str,
    pin: int | None,
    *,
    workers: int = 1,
    directives: str = "",
) -> Process:
    """A fresh foreground nginx (its own prefix dir), TLS termination in the stream module;
    ``directives``: more lines for its server block."""
    directory = Path(tempfile.mkdtemp(prefix=f"nginx-{setup.key}-", dir=pki))
    port = free_port()
    conf = NGINX_STREAM.format(
        load_module=load_module,
        dir=directory,
        upstream=upstream,
        port=port,
        pki=pki,
        # the proxy's versions: min_version 1.3, or 1.2 and 1.3
        protocols="TLSv1.3" if setup.version == "1.3" else "TLSv1.2 TLSv1.3",
        ciphers=TLS12_CIPHERS,
        client_auth=(NGINX_CLIENT_AUTH.format(pki=pki) if setup.mode == "require" else "")
        + directives,
    ).replace("worker_processes 1;", f"worker_processes {workers};")
    (directory / "nginx.conf").write_text(conf)
    argv = [nginx, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    argv += ["-e", str(directory / "error.log"), "-g", "daemon off;"]
    return Process(argv, directory / "stderr.log", pin, port)


# ---------------------------------------------------------------------------------------------
# Clients


def client_context(directory: Path, setup: Setup) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=directory / "ca.crt")
    context.load_cert_chain(directory / "client.crt", directory / "client.key")
    if setup.version == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def connect(port: int, timeout: float) -> socket.socket:
    """TCP_NODELAY, as most real clients (Go, curl, nginx upstreams): without it the client's
    first write after the handshake (``E``) waits behind Nagle for the ACK of its Finished,
    which a server that sends no session ticket (the native engine) only gives with the
    delayed-ACK timer, ~40 ms later."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _handshake_worker(
    directory: str, setup: Setup, port: int, start: float, end: float, conn, resume: bool = False
):
    """``resume``: each connection offers the session (ticket) of the one before it. A setup
    of mode ``plain`` (bench/l4_floor.py) opens plain TCP connections: no TLS at all."""
    context = None if setup.mode == "plain" else client_context(Path(directory), setup)
    ok = errors = reused = 0
    first_error = ""
    session = None
    while time.time() < start:
        time.sleep(0.001)
    cpu0 = time.process_time()
    while time.time() < end:
        try:
            with connect(port, timeout=10) as raw:
                if context is None:
                    raw.sendall(b"E")
                    if raw.recv(1) != b"E":
                        raise ConnectionError("no echo")
                else:
                    with context.wrap_socket(
                        raw, server_hostname="localhost", session=session
                    ) as tls:
                        tls.sendall(b"E")
                        if tls.recv(1) != b"E":
                            raise ConnectionError("no echo")
                        reused += tls.session_reused
                        session = tls.session if resume else None
            ok += 1
        except (OSError, ssl.SSLError) as exc:
            errors += 1
            first_error = first_error or repr(exc)
            session = None
            time.sleep(0.01)
    conn.send((ok, errors, first_error, time.process_time() - cpu0, reused))
    conn.close()


def measure_handshakes(
    server: Process, directory: Path, setup: Setup, args, resume: bool = False
) -> dict:
    ctx = mp.get_context("fork")
    start = time.time() + 0.3
    end = start + args.seconds
    workers = []
    for _ in range(args.workers):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_handshake_worker,
            args=(str(directory), setup, server.port, start, end, child, resume),
        )
        proc.start()
        child.close()
        workers.append((proc, parent))
    ok = errors = reused = 0
    client_cpu = 0.0
    first_error = ""
    try:
        time.sleep(max(0.0, start - time.time()))
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        for proc, parent in workers:
            if parent.poll(args.seconds + 30):
                w_ok, w_err, w_first, w_cpu, w_reused = parent.recv()
                ok, errors, client_cpu = ok + w_ok, errors + w_err, client_cpu + w_cpu
                reused += w_reused
                first_error = first_error or w_first
            proc.join(timeout=5)
        cpu1, t1 = server.cpu_seconds(), time.monotonic()
    finally:
        for proc, _ in workers:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    if first_error:
        print(f"  ! {errors} client errors, first: {first_error}", file=sys.stderr)
    return {
        "handshakes": ok,
        "errors": errors,
        "per_s": ok / (t1 - t0),
        "cpu_us": (cpu1 - cpu0) / ok * 1e6 if ok else float("nan"),
        "cpu_util": (cpu1 - cpu0) / (t1 - t0),
        "client_us": client_cpu / ok * 1e6 if ok else float("nan"),
        **({"reused_pct": 100 * reused / ok if ok else float("nan")} if resume else {}),
    }


def measure_bulk(server: Process, directory: Path, setup: Setup, args) -> dict:
    total = args.mib * 1024 * 1024
    block = os.urandom(CHUNK)
    context = client_context(directory, setup)
    with (
        connect(server.port, timeout=60) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"B" + total.to_bytes(8, "big"))
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        sent = 0
        view = memoryview(block)
        while sent < total:
            n = min(CHUNK, total - sent)
            tls.sendall(view[:n])
            sent += n
        if tls.recv(1) != b"K":
            raise RuntimeError("bulk: no acknowledgement")
        cpu1, t1 = server.cpu_seconds(), time.monotonic()
    gib = total / 2**30
    return {
        "mib_s": args.mib / (t1 - t0),
        "cpu_s_per_gib": (cpu1 - cpu0) / gib,
    }


# ---------------------------------------------------------------------------------------------
# Driver


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(*sys.argv[2:6])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="handshake load per sample")
    parser.add_argument("--runs", type=int, default=3, help="interleaved passes (medians)")
    parser.add_argument("--mib", type=int, default=256, help="MiB pushed in the bulk test")
    parser.add_argument("--workers", type=int, default=3, help="handshake client processes")
    parser.add_argument(
        "--setups",
        default=",".join(s.key for s in SETUPS),
        help="comma-separated subset of " + ", ".join(s.key for s in SETUPS),
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated subset of " + ", ".join(SYSTEMS) + " (ratios need the --baseline)",
    )
    parser.add_argument(
        "--baseline", default="openssl", choices=SYSTEMS, help="the system ratios are to"
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="a checkout with a .venv: its proxy is openssl-before and native-before",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = parser.parse_args()
    setups = [s for s in SETUPS if s.key in args.setups.split(",")]
    wanted = args.systems.split(",")
    unknown = sorted(set(wanted) - set(SYSTEMS))
    if unknown or not setups:
        parser.error(f"unknown system(s) {unknown}" if unknown else "no known setup in --setups")
    systems = [s for s in SYSTEMS if s in wanted]
    if args.before is None and any(s.endswith("-before") for s in systems):
        parser.error("the -before systems need --before DIR")

    nginx, load_module = find_nginx() if "nginx" in systems else ("", "")

    server_pin = pin_servers(SERVER_CORE, CLIENT_CORE)
    command = print_header(server_pin, nginx, f"CLK_TCK {os.sysconf('SC_CLK_TCK')}")

    python = sys.executable
    me = str(Path(__file__).resolve())
    samples: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-bench-") as tmp:
        directory = Path(tmp)
        upstream = pki_and_upstream(directory)
        try:
            configs = {
                (engine, s.key): proxy_config(directory, s, upstream.port, engine)
                for engine in ("openssl", "native")
                for s in setups
            }

            def start(system: str, setup: Setup) -> Process:
                log = directory / f"{system}-{setup.key}.log"
                engine = system.removesuffix("-before")
                if engine in ("openssl", "native"):
                    before = args.before if system != engine else None
                    argv, tree = proxy_command(configs[engine, setup.key], before)
                    return Process(argv, log, server_pin, None, cwd=tree)
                if system == "nginx":
                    return start_nginx_stream(
                        nginx, directory, setup, upstream.port, load_module, server_pin
                    )
                argv = [python, me, "--serve", "baseline", tmp, setup.mode, setup.version]
                return Process(argv, log, server_pin, None)

            step = 0
            for run in range(args.runs):
                for setup in setups:
                    for test, measure in (("hs", measure_handshakes), ("bulk", measure_bulk)):
                        # rotate the order: A B C D, B C D A, C D A B, ...
                        shift = step % len(systems)
                        step += 1
                        for system in systems[shift:] + systems[:shift]:
                            server = start(system, setup)
                            try:
                                result = measure(server, directory, setup, args)
                            finally:
                                server.stop()
                            key = f"{setup.key}/{test}/{system}"
                            label = f"{setup.key:9} {test:4} {system:7}"
                            keep_sample(samples, key, run, result, label)
        finally:
            upstream.stop()

    report(setups, systems, samples, args)
    write_samples(args.json, command, samples)
    return 0


def report(setups: list[Setup], systems: list[str], samples: dict[str, list[dict]], args) -> None:
    def med(key: str, field: str) -> float:
        return field_median(samples, key, field)

    def ratios(key: str, system: str, field: str) -> list[float]:
        # per pass: system / baseline, the two measured in the same pass
        return pass_ratios(samples, f"{key}/{system}", f"{key}/{args.baseline}", field)

    def ratio(key: str, system: str, field: str) -> float:
        return median(ratios(key, system, field))

    pairs = [(setup, system) for setup in setups for system in systems]

    def rows(test: str, fields: tuple[str, ...], ratio_fields: tuple[str, ...]) -> list:
        """Per setup and system: the medians of ``fields`` (``cpu_util`` as a percentage),
        then the median per-pass ratios of ``ratio_fields``."""
        return [
            [setup.label, LABELS[system]]
            + [
                med(f"{setup.key}/{test}/{system}", field) * (100 if field == "cpu_util" else 1)
                for field in fields
            ]
            + [ratio(f"{setup.key}/{test}", system, field) for field in ratio_fields]
            for setup, system in pairs
        ]

    print_table(
        f"Handshakes: new connection, full handshake, 1 byte echoed, close; {args.workers} "
        f"client processes, {args.seconds:g} s per sample; medians of {args.runs}; "
        f"ratios to {args.baseline} per pass, then median",
        [
            ("setup", "s"), ("system", "s"), ("handshakes", ".0f"), ("hs/s", ".0f"),
            ("server CPU us/hs", ".0f"), ("server core %", ".0f"), ("client CPU us/hs", ".0f"),
            ("hs/s ratio", ".2f"), ("CPU ratio", ".2f"),
        ],
        rows("hs", ("handshakes", "per_s", "cpu_us", "cpu_util", "client_us"),
             ("per_s", "cpu_us")),
    )  # fmt: skip
    print_table(
        f"Bulk: one connection, {args.mib} MiB client -> upstream (discarded); medians; "
        f"ratios to {args.baseline} per pass, then median",
        [
            ("setup", "s"), ("system", "s"), ("MiB/s", ".0f"), ("server CPU s/GiB", ".3f"),
            ("MiB/s ratio", ".2f"), ("CPU ratio", ".2f"),
        ],
        rows("bulk", ("mib_s", "cpu_s_per_gib"), ("mib_s", "cpu_s_per_gib")),
    )  # fmt: skip
    print_table(
        f"Per-pass server CPU ratios to {args.baseline}",
        [("setup", "s"), ("system", "s"), ("handshake", "s"), ("bulk", "s")],
        [
            [
                setup.label, LABELS[system],
                " ".join(f"{r:.2f}" for r in ratios(f"{setup.key}/hs", system, "cpu_us")),
                " ".join(f"{r:.2f}" for r in ratios(f"{setup.key}/bulk", system, "cpu_s_per_gib")),
            ]
            for setup, system in pairs
            if system != args.baseline
        ],
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
