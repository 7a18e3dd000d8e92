"""HTTP keep-alive benchmark (HTTP/1.1, HTTP/2, gRPC): mtlsproxy L4, mtlsproxy
``forward_identity: http``, nginx.

Three fronts terminate mutual TLS 1.3 (ECDSA P-256 client certificate from the development
PKI) in front of the same upstream, and are measured side by side, interleaved, each started
fresh for each sample:

* ``l4``: mtlsproxy with ``forward_identity: none`` (decrypted bytes passed through);
* ``http``: mtlsproxy with ``forward_identity: {mode: http, headers: {X-SSL-Client-S-DN:
  subject, X-SSL-Client-Verify: verify}}`` (X-Forwarded-Client-Cert on too, the default):
  every request is parsed and gets the identity headers;
* ``nginx``: nginx (the Debian package) with ``ssl_verify_client on``, ``proxy_pass`` to the
  upstream over HTTP/1.1 keep-alive and ``proxy_set_header X-SSL-Client-S-DN
  $ssl_client_s_dn; X-SSL-Client-Verify $ssl_client_verify``; one worker, no access log.

The upstream is a second nginx answering ``200 ok`` to every request (and, on ``/check``, a
body echoing the identity headers it received, which the client asserts on once per sample).
``--connections`` client processes each open one TLS connection, do the handshake before the
clock starts, then send ``GET /`` back to back on it (one at a time, the response read by
Content-Length) for ``--seconds``. The front's CPU (utime + stime of its PID and descendants,
from ``/proc``) is read before and after. Fronts are pinned to core 0; the driver, the
clients and the upstream to core 1.

``--protocols h2,grpc`` adds the HTTP/2 cases (``bench/h2_load.py``): each client process
keeps ``--streams`` requests in flight on its one connection (ALPN ``h2``): GETs through the
``h2`` package, or gRPC unary calls through grpcio to a grpcio upstream. The HTTP front
forwards h2 as h2c (``upstream_protocol: auto``), L4 passes the client's h2 to an h2c
upstream (nginx ``listen ... http2``), nginx's front speaks HTTP/1.1 to its upstream for GETs
(``proxy_pass`` has no h2) and h2c for gRPC (``grpc_pass``).

    /work/venv/bin/python bench/http_mode.py --seconds 5 --runs 3 --connections 4
    /work/venv/bin/python bench/http_mode.py --protocols h2,grpc --streams 1,16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h2_load  # bench/h2_load.py
from procs import REPO, Process, field_median, free_port, median  # bench/procs.py

FRONT_CORE = 0
CLIENT_CORE = 1
FRONTS = ("l4", "http", "h2h1", "nginx")
LABELS = {
    "l4": "mtlsproxy L4 (forward_identity: none)",
    "http": "mtlsproxy forward_identity: http",
    "h2h1": "mtlsproxy http, h2-to-http/1.1",
    "nginx": "nginx 1 worker, proxy/grpc_pass",
}
IDENTITY_FRONTS = ("http", "h2h1")  # the mtlsproxy fronts that forward identity headers


def serves(front: str, protocol: str) -> bool:
    """h2h1 translates HTTP/2 GETs to an HTTP/1.1 upstream: the h2 cases only."""
    return front != "h2h1" or protocol == "h2"


REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\n\r\n"
CHECK = b"GET /check HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\n\r\n"
CLIENT_DN = "CN=frontend"  # the subject of the PKI's client.crt
PROTOCOLS = ("h1", "h2", "grpc")


@dataclasses.dataclass(frozen=True)
class Case:
    """What the clients speak (``h1``, ``h2``, ``grpc``) and how many requests each
    connection keeps in flight (always 1 for ``h1``: no pipelining)."""

    protocol: str
    streams: int

    @property
    def name(self) -> str:
        return self.protocol if self.protocol == "h1" else f"{self.protocol} x{self.streams}"


# ---------------------------------------------------------------------------------------------
# Processes


NGINX_MAIN = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{body}
}}
"""

UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        default_type text/plain;
        location = /check {{
            return 200 "dn=$http_x_ssl_client_s_dn\\nverify=$http_x_ssl_client_verify\\nxfcc=$http_x_forwarded_client_cert\\n";
        }}
        location / {{ return 200 "ok"; }}
    }}"""  # noqa: E501

FRONT_SERVER = """\
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 32;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=1024;
        ssl_certificate {pki}/server.crt;
        ssl_certificate_key {pki}/server.key;
        ssl_protocols TLSv1.3;
        ssl_verify_client on;
        ssl_client_certificate {pki}/client-ca.pem;
        ssl_verify_depth 2;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-SSL-Client-S-DN $ssl_client_s_dn;
            proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
        }}
    }}"""


def start_nginx(nginx: str, directory: Path, body: str, pin: int | None, port: int) -> Process:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "nginx.conf").write_text(NGINX_MAIN.format(dir=directory, body=body))
    argv = [
        nginx,
        "-p",
        str(directory),
        "-c",
        str(directory / "nginx.conf"),
        "-e",
        str(directory / "error.log"),
        "-g",
        "daemon off;",
    ]
    return Process(argv, directory / "stderr.log", pin, port)


def proxy_config(pki: Path, front: str, protocol: str, upstream_port: int) -> Path:
    lines = [
        "listeners:",
        f"  - name: {front}",
        "    listen: 127.0.0.1:0",
        "    tls:",
        "      certificates:",
        f"        - {{certificate: {pki}/server.crt, key: {pki}/server.key}}",
        '      min_version: "1.3"',
        # L4 passes the decrypted bytes on: the upstream speaks what the client offered.
        *(["      alpn: [h2]"] if front == "l4" and protocol != "h1" else []),
        "    client_auth:",
        "      mode: require",
        f"      ca: {pki}/client-ca.pem",
        f"    upstream: 127.0.0.1:{upstream_port}",
    ]
    if front in IDENTITY_FRONTS:
        lines += [
            "    forward_identity:",
            "      mode: http",
            "      headers:",
            "        X-SSL-Client-S-DN: subject",
            "        X-SSL-Client-Verify: verify",
        ]
        if front == "h2h1":  # each h2 stream an HTTP/1.1 request
            lines += ["      upstream_protocol: h2-to-http/1.1"]
        elif protocol != "h1":  # h2 offered, the client's h2 forwarded as h2c
            lines += ["      upstream_protocol: auto"]
    else:
        lines += ["    forward_identity: none"]
    lines += ["metrics:", "  enabled: false", "log:", "  format: text", "  level: info"]
    path = pki.parent / f"proxy-{front}-{protocol}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Clients


class HTTPConnection:
    """One keep-alive HTTP/1.1 connection over mutual TLS; one request at a time."""

    def __init__(self, pki: Path, port: int) -> None:
        self.tls = h2_load.mtls_socket(pki, port, "http/1.1")
        self.buffer = b""

    def request(self, request: bytes) -> bytes:
        """Send ``request``; return the body of a 200 response (anything else raises)."""
        self.tls.sendall(request)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = self.tls.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before a response")
            buffer += chunk
        head = buffer[:end]
        if not head.startswith(b"HTTP/1.1 200 "):
            raise ConnectionError(f"unexpected response: {head[:200]!r}")
        at = head.lower().find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError(f"no Content-Length: {head[:400]!r}")
        eol = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : eol if eol >= 0 else len(head)])
        start = end + 4
        while len(buffer) < start + length:
            chunk = self.tls.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed inside a body")
            buffer += chunk
        self.buffer = buffer[start + length :]
        return buffer[start : start + length]

    def close(self) -> None:
        self.tls.close()


class H1Load:
    """``--connections`` x one HTTP/1.1 connection, one request at a time."""

    def __init__(self, pki: Path, port: int, streams: int) -> None:
        self.http = HTTPConnection(pki, port)  # the handshake, before the clock starts
        self.http.request(REQUEST)

    def check(self) -> bytes:
        return self.http.request(CHECK)

    def run(self, end: float) -> int:
        ok = 0
        request = self.http.request
        while time.time() < end:
            request(REQUEST)
            ok += 1
        return ok

    def close(self) -> None:
        self.http.close()


class H2Load:
    """One HTTP/2 connection per client process with ``streams`` GETs in flight."""

    def __init__(self, pki: Path, port: int, streams: int) -> None:
        self.h2 = h2_load.H2Client(pki, port)
        self.h2.get("/")
        self.streams = streams

    def check(self) -> bytes:
        return self.h2.get("/check")

    def run(self, end: float) -> int:
        return self.h2.load(self.streams, end)

    def close(self) -> None:
        self.h2.close()


class GRPCLoad:
    """One gRPC channel per client process with ``streams`` unary calls in flight."""

    def __init__(self, pki: Path, port: int, streams: int) -> None:
        self.channel = h2_load.grpc_channel(pki, port)
        self.streams = streams

    def check(self) -> bytes:
        return h2_load.grpc_check(self.channel)

    def run(self, end: float) -> int:
        return h2_load.grpc_load(self.channel, self.streams, end)

    def close(self) -> None:
        self.channel.close()


LOADS = {"h1": H1Load, "h2": H2Load, "grpc": GRPCLoad}


def check_identity(front: str, body: bytes) -> str:
    """The upstream's /check body: what it was told about the client. Raises if wrong."""
    fields = dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)
    dn, verify, xfcc = fields.get("dn", ""), fields.get("verify", ""), fields.get("xfcc", "")
    if front == "l4":
        ok = not dn and not verify and not xfcc
    elif front in IDENTITY_FRONTS:
        ok = CLIENT_DN in dn and verify == "SUCCESS" and "Hash=" in xfcc
    else:
        ok = CLIENT_DN in dn and verify == "SUCCESS"
    if not ok:
        raise RuntimeError(f"{front}: upstream was told {fields!r}")
    return f"dn={dn!r} verify={verify!r} xfcc={'yes' if xfcc else 'no'}"


def _client(case: Case, pki: str, port: int, start: float, end: float, check: str,
            conn) -> None:  # fmt: skip
    ok = errors = 0
    first_error = seen = ""
    cpu = 0.0
    try:
        load = LOADS[case.protocol](Path(pki), port, case.streams)
        try:
            if check:
                seen = check_identity(check, load.check())
            while time.time() < start:
                time.sleep(0.0005)
            cpu0 = time.process_time()
            ok = load.run(end)
            cpu = time.process_time() - cpu0
        finally:
            load.close()
    except Exception as exc:  # reported by the driver
        errors += 1
        first_error = repr(exc)
    conn.send((ok, errors, first_error, cpu, seen))
    conn.close()


def measure(front: Process, upstream: Process, pki: Path, name: str, case: Case, args) -> dict:
    ctx = mp.get_context("fork")
    start = time.time() + 1.0
    end = start + args.seconds
    clients = []
    for i in range(args.connections):
        parent, child = ctx.Pipe(duplex=False)
        check = name if i == 0 else ""
        proc = ctx.Process(
            target=_client, args=(case, str(pki), front.port, start, end, check, child)
        )
        proc.start()
        child.close()
        clients.append((proc, parent))
    ok = errors = 0
    client_cpu = 0.0
    first_error = seen = ""
    try:
        time.sleep(max(0.0, start - time.time()))
        cpu0, up0, t0 = front.cpu_seconds(), upstream.cpu_seconds(), time.monotonic()
        for _proc, parent in clients:
            if parent.poll(args.seconds + 30):
                w_ok, w_err, w_first, w_cpu, w_seen = parent.recv()
                ok, errors, client_cpu = ok + w_ok, errors + w_err, client_cpu + w_cpu
                first_error, seen = first_error or w_first, seen or w_seen
            else:
                errors += 1
                first_error = first_error or "client did not report"
        cpu1, up1, t1 = front.cpu_seconds(), upstream.cpu_seconds(), time.monotonic()
        for proc, _ in clients:
            proc.join(timeout=5)
    finally:
        for proc, _ in clients:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    if errors:
        raise RuntimeError(f"{name}: {errors} client errors, first: {first_error}")
    return {
        "requests": ok,
        "per_s": ok / args.seconds,
        "cpu_us": (cpu1 - cpu0) / ok * 1e6 if ok else float("nan"),
        "cpu_util": (cpu1 - cpu0) / (t1 - t0),
        "upstream_util": (up1 - up0) / (t1 - t0),
        "client_us": client_cpu / ok * 1e6 if ok else float("nan"),
        "upstream_saw": seen,
    }


# ---------------------------------------------------------------------------------------------
# Driver


def parse_cases(protocols: str, streams: str) -> list[Case]:
    cases = []
    for protocol in protocols.split(","):
        if protocol not in PROTOCOLS:
            raise SystemExit(f"unknown protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
        counts = [1] if protocol == "h1" else [int(n) for n in streams.split(",")]
        cases += [Case(protocol, n) for n in counts]
    return cases


class Upstreams:
    """The upstream each front forwards to, per protocol: nginx answering HTTP/1.1 (and h2c
    with prior knowledge, for the L4 front whose client speaks h2) or a grpcio server."""

    def __init__(self, nginx: str, root: Path, pin: int | None) -> None:
        self.h1_port, self.h2c_port, self.grpc_port = free_port(), free_port(), free_port()
        body = (
            UPSTREAM_SERVER.format(port=self.h1_port)
            + "\n"
            + (h2_load.H2C_UPSTREAM_SERVER.format(port=self.h2c_port))
        )
        self.nginx = start_nginx(nginx, root / "upstream", body, pin, self.h1_port)
        self.grpc: Process | None = None
        self.root, self.pin = root, pin

    def port(self, front: str, protocol: str) -> int:
        if protocol == "grpc":
            if self.grpc is None:
                argv = [sys.executable, str(REPO / "bench" / "h2_load.py"), "grpc-upstream",
                        str(self.grpc_port)]  # fmt: skip
                self.grpc = Process(argv, self.root / "grpc-upstream.log", self.pin,
                                    self.grpc_port)  # fmt: skip
            return self.grpc_port
        # nginx's h2 front speaks HTTP/1.1 to its upstream; mtlsproxy's L4 front passes the
        # client's h2 on; its HTTP front follows the client (upstream_protocol: auto).
        # h2h1 translates to HTTP/1.1 itself.
        return self.h2c_port if protocol == "h2" and front in ("l4", "http") else self.h1_port

    def process(self, protocol: str) -> Process:
        return self.grpc if protocol == "grpc" and self.grpc is not None else self.nginx

    def stop(self) -> None:
        for process in (self.grpc, self.nginx):
            if process is not None:
                process.stop()


NGINX_FRONTS = {
    "h1": FRONT_SERVER,
    "h2": h2_load.H2_FRONT_SERVER,
    "grpc": h2_load.GRPC_FRONT_SERVER,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load per sample")
    parser.add_argument("--runs", type=int, default=3, help="interleaved passes (medians)")
    parser.add_argument(
        "--connections", type=int, default=4, help="client processes, one connection each"
    )
    parser.add_argument("--protocols", default="h1", help="comma-separated: h1 (default), h2, grpc")
    parser.add_argument(
        "--streams", default="1,16", help="h2/grpc: requests in flight per connection"
    )
    parser.add_argument("--fronts", default=",".join(FRONTS), help="comma-separated subset")
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = parser.parse_args()
    cases = parse_cases(args.protocols, args.streams)
    fronts = tuple(front for front in FRONTS if front in args.fronts.split(","))

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not nginx:
        parser.error("nginx not found (apt-get install -y nginx)")
    nginx_version = subprocess.run(
        [nginx, "-v"], capture_output=True, text=True, check=False
    ).stderr.strip()
    pin = shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {CLIENT_CORE})  # the driver and the clients (forked)
    front_pin = FRONT_CORE if pin else None
    client_pin = CLIENT_CORE if pin else None
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}")
    print(
        f"pinning: {'fronts core 0, clients+upstream core 1' if pin else 'none'}; "
        f"{nginx_version}; {ssl.OPENSSL_VERSION}; Python {sys.version.split()[0]}; "
        f"CLK_TCK {os.sysconf('SC_CLK_TCK')}",
        flush=True,
    )

    python = sys.executable
    samples: dict[str, dict[str, list[dict]]] = {
        case.name: {front: [] for front in fronts if serves(front, case.protocol)} for case in cases
    }
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-http-bench-") as tmp:
        root = Path(tmp)
        pki_dir = root / "pki"
        sys.path.insert(0, str(REPO))
        from mtlsproxy import pki

        pki.init(pki_dir)
        upstreams = Upstreams(nginx, root, client_pin)
        try:

            def start(front: str, protocol: str, run: int) -> Process:
                upstream_port = upstreams.port(front, protocol)
                if front == "nginx":
                    port = free_port()
                    body = NGINX_FRONTS[protocol].format(
                        port=port, upstream=upstream_port, pki=pki_dir
                    )
                    return start_nginx(nginx, root / f"front-{run}", body, front_pin, port)
                config = proxy_config(pki_dir, front, protocol, upstream_port)
                argv = [python, "-m", "mtlsproxy", "run", "-c", str(config)]
                return Process(argv, root / f"{front}-{run}.log", front_pin, None)

            for run in range(args.runs):
                turn = run % len(fronts)
                order = fronts[turn:] + fronts[:turn]  # a b c, b c a, c a b, ...
                for case in cases:
                    for front in (f for f in order if serves(f, case.protocol)):
                        server = start(front, case.protocol, run)
                        try:
                            upstream = upstreams.process(case.protocol)
                            result = measure(server, upstream, pki_dir, front, case, args)
                        finally:
                            server.stop()
                        samples[case.name][front].append(result)
                        print(
                            f"run {run + 1} {case.name:8} {front:5} {result['requests']:8d} req "
                            f"{result['per_s']:8.0f} req/s {result['cpu_us']:7.1f} us/req "
                            f"front {100 * result['cpu_util']:3.0f} % "
                            f"upstream {100 * result['upstream_util']:3.0f} % "
                            f"client {result['client_us']:5.1f} us/req; "
                            f"upstream saw {result['upstream_saw']}",
                            flush=True,
                        )
        finally:
            upstreams.stop()

    for case in cases:
        print_table(case, samples[case.name], args)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"command": command, "samples": samples}, indent=2) + "\n"
        )
    return 0


def print_table(case: Case, samples: dict[str, list[dict]], args) -> None:
    def med(front: str, field: str) -> float:
        return field_median(samples, front, field)

    def ratio(front: str, field: str) -> float:
        # per pass (same pass, started back to back) against l4, then the median
        base_front = "l4" if "l4" in samples else next(iter(samples))
        pairs = zip(samples[front], samples[base_front], strict=False)
        return median([s[field] / base[field] for s, base in pairs if base[field]])

    what = {
        "h1": "Keep-alive HTTP/1.1 GET",
        "h2": f"HTTP/2 GET, {case.streams} in flight per connection,",
        "grpc": f"gRPC unary calls, {case.streams} in flight per connection,",
    }[case.protocol]
    print()
    print(
        f"{what} over mutual TLS 1.3 (ECDSA P-256), {args.connections} connections, "
        f"{args.seconds:g} s per sample; medians of {args.runs}; ratios per pass to l4"
    )
    header = (
        f"{'front':40} {'req/s':>8} {'front CPU us/req':>16} {'front core %':>12} "
        f"{'client us/req':>13} {'req/s ratio':>11} {'CPU ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    for front in samples:
        print(
            f"{LABELS[front]:40} {med(front, 'per_s'):8.0f} {med(front, 'cpu_us'):16.1f} "
            f"{100 * med(front, 'cpu_util'):12.0f} {med(front, 'client_us'):13.1f} "
            f"{ratio(front, 'per_s'):11.2f} {ratio(front, 'cpu_us'):9.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
